"""`zigzag-attn`: calibrate a plan for a model, show it, generate with it (and `eval`, when installed).

    zigzag-attn calibrate smollm2-135m --out plan.json --retrieval-ratio 0.5
    zigzag-attn show plan.json --png plan.png
    zigzag-attn generate smollm2-135m --plan plan.json --prompt-file long.txt --chat

Bad arguments exit with status 2 and a one-line message naming the argument; runtime failures (a missing file or
package, a plan that does not fit the model) print `error: ...` and exit with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

# Calibration defaults per device; `calibrate` flags override them. Chosen by measurement (docs/results.md): the
# ablation scores then measured greedy elimination on 4k prompts is the best layer-exclusive method on a GPU; the
# ablation alone at 1k tokens beats random layer sets by far and finishes in minutes on two CPU cores.
DEFAULTS = {
    "cpu": {"length": 1024, "samples": 2, "keys": 4, "refine": False, "candidates": None, "batch": 1},
    "cuda": {"length": 4096, "samples": 4, "keys": 4, "refine": True, "candidates": None, "batch": 8},
}
SHOW_LENGTHS = (1024, 4096, 16384, 65536, 131072)
PROG = "zigzag-attn"


class CLIError(Exception):
    """A runtime failure reported as `error: ...` with exit status 1."""


class UsageError(Exception):
    """A bad argument found after parsing (e.g. against the model): exit status 2, like argparse's own errors."""


# -- parser ---------------------------------------------------------------------------------------------------
def _int(lo: int | None = None, what: str = "an integer"):
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}") from None
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}; got {v}")
        return v
    return conv


def _float(lo: float, hi: float, what: str, open_lo: bool = False):
    def conv(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}") from None
        if math.isnan(v) or v > hi or v < lo or (open_lo and v == lo):
            raise argparse.ArgumentTypeError(f"expected {what}; got {text}")
        return v
    return conv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Layer-exclusive retrieval/streaming attention plans "
                                     "for HuggingFace transformers models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    cal = sub.add_parser("calibrate", help="profile a model and save a plan (profile -> solve [-> refine])",
                         description="Profile MODEL on passkey prompts, choose its retrieval layers and save the plan.")
    cal.add_argument("model", metavar="MODEL", help="alias (smollm2-135m, gemma3-270m), a model directory or a .gguf")
    cal.add_argument("--out", required=True, metavar="PLAN.json", help="where to write the plan")
    cal.add_argument("--method", choices=("auto", "gates", "attention"), default="auto",
                     help="gates (trained, DuoAttention-style) or attention (ablation, training-free); "
                          "auto: attention (it ranked layers better than gates on SmolLM2, docs/results.md)")
    size = cal.add_mutually_exclusive_group()
    size.add_argument("--retrieval-ratio", type=_float(0, 1, "a number in [0, 1]"), metavar="R",
                      help="fraction of the choosable layers kept retrieval (default 0.5)")
    size.add_argument("--retrieval-layers", type=_int(0, "an integer >= 0"), metavar="K",
                      help="number of retrieval layers")
    size.add_argument("--kv-budget", type=_float(0, 1, "a fraction in (0, 1]", open_lo=True), metavar="F",
                      help="largest plan whose KV cache is at most F of full attention at --context-length")
    cal.add_argument("--context-length", type=_int(1, "an integer >= 1"), metavar="N",
                     help="context length for --kv-budget")
    cal.add_argument("--sink", type=_int(0, "an integer >= 0"), default=64, help="sink tokens (default 64)")
    cal.add_argument("--window", type=_int(1, "an integer >= 1"), default=256, help="window tokens (default 256)")
    cal.add_argument("--data", nargs="+", metavar="DIR_OR_FILE",
                     help="haystack text: .txt files or directories of them (default: the shipped novels)")
    cal.add_argument("--length", type=_int(1, "an integer >= 1"), help="tokens per calibration prompt "
                     f"(default: {DEFAULTS['cpu']['length']} on CPU, {DEFAULTS['cuda']['length']} on CUDA)")
    cal.add_argument("--samples", type=_int(1, "an integer >= 1"), help="calibration prompts "
                     f"(default: {DEFAULTS['cpu']['samples']} on CPU, {DEFAULTS['cuda']['samples']} on CUDA)")
    cal.add_argument("--keys", type=_int(1, "an integer >= 1"), help="passkeys per prompt (default 4)")
    cal.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                     help="improve the plan by measured greedy elimination (default: on for CUDA, off for CPU)")
    cal.add_argument("--candidates", type=_int(1, "an integer >= 1"), metavar="N",
                     help="with --refine: try only the N lowest-scored layers each round (default: all)")
    cal.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    cal.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                     help="auto: bfloat16 on CUDA, float32 on CPU")
    cal.add_argument("--seed", type=_int(None), default=0)
    cal.add_argument("--scores-out", metavar="SCORES.json", help="also save the profile scores")
    cal.add_argument("--steps", type=_int(1, "an integer >= 1"), help="gate training steps (--method gates)")

    show = sub.add_parser("show", help="print a plan (and draw it)", description="Print a plan as a table; "
                          "optionally draw a layers x heads heatmap.")
    show.add_argument("plan", metavar="PLAN", help="a plan file or a shipped plan name such as smollm2-135m@0.5")
    show.add_argument("--png", metavar="FILE.png", help="write a layers x KV heads heatmap")

    gen = sub.add_parser("generate", help="generate text with a patched model",
                         description="Generate with MODEL patched by a plan; reports tokens/s and KV-cache memory.")
    gen.add_argument("model", metavar="MODEL")
    gen.add_argument("--plan", required=True, metavar="PLAN", help="plan file or shipped plan name")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt-file", metavar="FILE")
    prompt.add_argument("--prompt", metavar="TEXT")
    gen.add_argument("--max-new-tokens", type=_int(1, "an integer >= 1"), default=64)
    gen.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    gen.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")

    _add_eval(sub)
    return parser


_eval_module: Any = None


def _add_eval(sub) -> None:
    """`eval` comes from `zigzag_attn.eval.cli` when that module is there."""
    global _eval_module
    try:
        _eval_module = importlib.import_module("zigzag_attn.eval.cli")
    except ModuleNotFoundError as e:
        if e.name and (e.name == "zigzag_attn.eval" or e.name.startswith("zigzag_attn.eval.")):
            _eval_module = None
            return
        _eval_module = _broken_eval(e)
    except ImportError as e:
        _eval_module = _broken_eval(e)
    _eval_module.add_parser(sub)


def _broken_eval(exc: Exception):
    class Broken:
        @staticmethod
        def add_parser(sub):
            p = sub.add_parser("eval", help="(unavailable)", add_help=True)
            p.add_argument("rest", nargs=argparse.REMAINDER)

        @staticmethod
        def run(args):
            raise CLIError(f"the eval command cannot be loaded: {exc}")
    return Broken


# -- helpers -------------------------------------------------------------------------------------------------
def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("argument --device: CUDA was asked for but torch sees no CUDA device")
    return choice


def _dtype(choice: str, device: str):
    import torch

    if choice == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, choice)


def _load(model: str, dtype, device: str):
    from .models import load

    _say(f"loading {model} ({str(dtype).removeprefix('torch.')}, {device}) ...")
    try:
        return load(model, dtype=dtype, device=device)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise CLIError(str(e)) from None
    except OSError as e:  # transformers: not a model directory
        raise CLIError(f"cannot load {model!r}: {e}") from None


def _load_plan(name: str):
    from .plan import Plan

    try:
        return Plan.load(name)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None


def _writable(path: str, arg: str) -> None:
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"argument {arg}: directory {str(parent)!r} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"argument {arg}: {path!r} is a directory; give a file name")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- calibrate -----------------------------------------------------------------------------------------------
def calibrate(args, argv: list[str]) -> int:
    import torch

    from . import describe, solve
    from .data import load_text, passkey_samples
    from .profile import measure, profile, refine
    from .scores import Scores

    start = time.perf_counter()
    if args.context_length is not None and args.kv_budget is None:
        raise UsageError("argument --context-length: only used with --kv-budget")
    if args.kv_budget is not None and args.context_length is None:
        raise UsageError("argument --kv-budget: needs --context-length N (the saving depends on the length)")
    _writable(args.out, "--out")
    if args.scores_out:
        _writable(args.scores_out, "--scores-out")
    device = _device(args.device)
    method = "attention" if args.method == "auto" else args.method
    if args.steps is not None and method != "gates":
        raise UsageError(f"argument --steps: only used with --method gates (the method is {method})")
    defaults = DEFAULTS[device]
    length = args.length if args.length is not None else defaults["length"]
    samples_n = args.samples if args.samples is not None else defaults["samples"]
    keys = args.keys if args.keys is not None else defaults["keys"]
    do_refine = args.refine if args.refine is not None else defaults["refine"]
    candidates = args.candidates if args.candidates is not None else defaults["candidates"]
    if args.candidates is not None and not do_refine:
        raise UsageError("argument --candidates: only used with --refine")
    if length < 64 * keys:
        raise UsageError(f"argument --length: {length} tokens is too short for {keys} passkeys "
                         f"(need at least {64 * keys}; lower --keys or raise --length)")
    constraint: dict[str, Any]
    if args.retrieval_layers is not None:
        constraint = {"retrieval_layers": args.retrieval_layers}
    elif args.kv_budget is not None:
        constraint = {"kv_budget": args.kv_budget, "context_length": args.context_length}
    else:
        constraint = {"retrieval_ratio": 0.5 if args.retrieval_ratio is None else args.retrieval_ratio}
    solve_kw = dict(constraint, sink=args.sink, window=args.window)

    try:
        text = load_text(args.data) if args.data else None
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"argument --data: {e}") from None

    dtype = _dtype(args.dtype, device)
    model, tok = _load(args.model, dtype, device)
    info = describe(model)
    try:  # check the size constraint against the model before minutes of profiling
        solve(Scores(torch.zeros(info.num_layers, info.num_kv_heads), model=info), **solve_kw)
    except ValueError as e:
        flag = "--" + next(iter(constraint)).replace("_", "-")
        raise UsageError(f"argument {flag}: {e}") from None

    _say(f"building {samples_n} calibration prompts of {length} tokens with {keys} passkeys each ...")
    try:
        samples = passkey_samples(tok, n=samples_n, length=length, keys=keys, text=text, seed=args.seed)
    except (TypeError, ValueError) as e:
        raise CLIError(f"cannot build calibration prompts: {e}") from None
    gate_options = {"steps": args.steps} if args.steps is not None else {}
    _say(f"profiling with method={method!r} ...")
    batch = defaults["batch"]
    scores = profile(model, tok, method=method, data=samples, sink=args.sink, window=args.window, seed=args.seed,
                     progress=True, batch_size=batch, **gate_options)
    if args.scores_out:
        scores.save(args.scores_out)
    plan = solve(scores, **solve_kw)
    target = plan.provenance["constraint"]["retrieval_layers"]
    extra: dict[str, Any] = {}
    if do_refine:
        choosable = info.num_layers - len(info.native_sliding)
        if target < choosable:
            _say(f"refining: greedy elimination from {choosable} to {target} retrieval layers ...")
            extra["topk_loss"] = measure(model, samples, plan, batch_size=batch).loss
            top = plan
            wide = solve(scores, retrieval_ratio=1.0, sink=args.sink, window=args.window)
            plan = refine(wide, model, samples, retrieval_layers=target, scores=scores.layers, candidates=candidates,
                          batch_size=batch)
            plan = type(plan).from_layers(plan.modes, sink=plan.sink, window=plan.window, model=plan.model,
                                          provenance={**plan.provenance, "constraint": top.provenance["constraint"]})
    seconds = time.perf_counter() - start
    provenance = {
        **plan.provenance, **extra,
        "command": shlex.join([PROG, *argv]),
        "model_name": args.model, "method": method, "device": _device_name(device),
        "dtype": str(dtype).removeprefix("torch."), "seconds": round(seconds, 1),
        "calibration": {"length": length, "samples": samples_n, "keys": keys, "seed": args.seed,
                        "data": [str(p) for p in args.data] if args.data else "shipped:calibration",
                        "refine": do_refine, "candidates": candidates},
        "profile": scores.meta, "versions": _versions(),
    }
    plan = type(plan).from_layers(plan.modes, sink=plan.sink, window=plan.window, model=plan.model,
                                  provenance=provenance)
    path = plan.save(args.out)
    print(plan.describe())
    lengths = sorted({length, *(n for n in SHOW_LENGTHS if n > length)})[:4]
    print("KV cache vs full attention: " + ", ".join(f"{plan.kv_fraction(n):.3f} at {n}" for n in lengths))
    print(f"saved {path}" + (f" (scores: {args.scores_out})" if args.scores_out else "")
          + f" in {seconds:.1f} s")
    return 0


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from . import __version__

    return {"zigzag_attn": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


# -- show ----------------------------------------------------------------------------------------------------
def show(args) -> int:
    plan = _load_plan(args.plan)
    if args.png:
        _writable(args.png, "--png")
    prov = plan.provenance
    heads = plan.model.num_kv_heads if plan.model else (len(plan.heads[0]) if plan.heads else 1)
    mask = plan.head_mask(heads)
    layer_scores = _list(prov.get("layer_scores"), plan.num_layers)
    head_scores = _grid(prov.get("head_scores"), plan.num_layers, heads)
    native = plan.model.native_sliding if plan.model else {}
    name = (plan.model.name or plan.model.model_type) if plan.model else None
    print(f"{args.plan}: {plan.describe()}" + (f"\nmodel: {name}" if name else ""))
    if prov.get("command"):
        how = ", ".join(str(x) for x in (prov.get("method"), prov.get("device")) if x)
        secs = f"{prov['seconds']} s" if isinstance(prov.get("seconds"), (int, float)) else ""
        print(f"made by: {prov['command']}" + (f"  [{', '.join(x for x in (how, secs) if x)}]" if how or secs else ""))
    score_col = layer_scores is not None or head_scores is not None
    print(f"{'layer':>5}  {'mode':<9}  {'retrieval heads':>15}" + (f"  {'score':>9}" if score_col else ""))
    for i, mode in enumerate(plan.modes):
        row = f"{i:>5}  {mode:<9}  {f'{sum(mask[i])}/{len(mask[i])}':>15}"
        if i in native:
            row += f"  {'-':>9}" * score_col + f"  (the model's own sliding window, {native[i]} tokens)"
        elif layer_scores is not None:
            row += f"  {layer_scores[i]:>9.4g}"
        elif head_scores is not None:
            row += "  " + " ".join(f"{v:.3g}" for v in head_scores[i])
        print(row)
    print("KV cache vs full attention: " + ", ".join(f"{plan.kv_fraction(n):.3f} at {n}" for n in SHOW_LENGTHS))
    if args.png:
        _heatmap(plan, mask, layer_scores, head_scores, args.png, title=f"{name or args.plan}")
        print(f"wrote {args.png}")
    return 0


def _list(v, n: int) -> list[float] | None:
    if isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) for x in v):
        return [float(x) for x in v]
    return None


def _grid(v, n: int, h: int) -> list[list[float]] | None:
    if isinstance(v, list) and len(v) == n and all(_list(r, h) is not None for r in v):
        return [[float(x) for x in r] for r in v]
    return None


def _heatmap(plan, mask, layer_scores, head_scores, path: str, title: str) -> None:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise CLIError("--png needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, SymLogNorm

    layers, heads = len(mask), len(mask[0])
    native = set(plan.model.native_sliding) if plan.model else set()
    grey = "#d9d9d9"
    fig, ax = plt.subplots(figsize=(min(12, 4 + 0.5 * heads), min(14, 2 + 0.3 * layers)))
    if head_scores is not None or layer_scores is not None:
        values = head_scores if head_scores is not None else [[s] * heads for s in layer_scores]
        values = [[math.nan] * heads if i in native else row for i, row in enumerate(values)]
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad=grey)
        # ablation scores (loss rises) are heavy-tailed: linear near 0, logarithmic above 0.01
        norm = SymLogNorm(linthresh=0.01) if plan.provenance.get("method") == "attention" else None
        im = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest", norm=norm)
        fig.colorbar(im, ax=ax, label="retrieval score")
        cells = [(h, i) for i in range(layers) for h in range(heads) if mask[i][h] and i not in native]
        if cells:
            ax.scatter(*zip(*cells, strict=True), marker="s", s=40, facecolors="none", edgecolors="red",
                       linewidths=1.5)
        key = "red squares: retrieval, the rest stream" + ("; grey: the model's own sliding window" if native else "")
    else:
        colours, labels = ["#9ecae1", "#d62728", grey], ["streaming", "retrieval", "own sliding window"]
        kinds = 3 if native else 2
        im = ax.imshow([[2 if i in native else 1 if r else 0 for r in row] for i, row in enumerate(mask)],
                       aspect="auto", interpolation="nearest", cmap=ListedColormap(colours[:kinds]), vmin=-0.5,
                       vmax=kinds - 0.5)
        bar = fig.colorbar(im, ax=ax, ticks=list(range(kinds)))
        bar.ax.set_yticklabels(labels[:kinds])
        key = "no scores recorded in the plan"
    ax.set_xlabel("KV head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(0, layers, max(1, layers // 16)))
    kept = len([i for i in plan.retrieval_layers if i not in native])
    counts = (f"{kept} retrieval / {layers - len(native)} full-attention layers (+{len(native)} sliding)" if native
              else f"{kept} retrieval / {layers} layers")
    ax.set_title(f"{title}\n{counts}, sink={plan.sink} window={plan.window}\n{key}", fontsize=9, loc="left")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# -- generate ------------------------------------------------------------------------------------------------
def generate(args) -> int:
    import torch

    from . import cache_of, describe, patch

    if args.prompt_file is not None:
        try:
            text = Path(args.prompt_file).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise CLIError(f"cannot read --prompt-file: {e}") from None
    else:
        text = args.prompt
    if not text.strip():
        raise UsageError("argument --prompt: the prompt is empty")
    device = _device(args.device)
    plan = _load_plan(args.plan)
    model, tok = _load(args.model, _dtype(args.dtype, device), device)
    try:
        patch(model, plan)
    except (ValueError, TypeError) as e:
        raise CLIError(f"the plan does not fit {args.model}: {e}") from None
    if args.chat:
        if not getattr(tok, "chat_template", None):
            raise CLIError(f"--chat: {args.model}'s tokenizer has no chat template")
        text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
    inputs = tok(text, return_tensors="pt", add_special_tokens=not args.chat).to(device)
    n_prompt = inputs.input_ids.shape[1]
    _say(f"{plan.describe()}\nprompt: {n_prompt} tokens; generating up to {args.max_new_tokens} ...")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    clock = _Clock()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad,
                             return_dict_in_generate=True, streamer=clock)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    new = out.sequences[0, n_prompt:]
    print(tok.decode(new, skip_special_tokens=True))
    cache = cache_of(out)
    tokens = cache.get_seq_length() if cache is not None else n_prompt + len(new)
    info = describe(model)
    itemsize = next(model.parameters()).element_size()
    full = sum(2 * info.num_kv_heads * info.head_dim * min(tokens, info.native_sliding.get(i, tokens)) * itemsize
               for i in range(info.num_layers))
    used = cache.nbytes() if hasattr(cache, "nbytes") else full
    print("---", file=sys.stderr)
    first = (clock.times[1] - start) if len(clock.times) > 1 else seconds
    decode = (f", then {(len(new) - 1) / (seconds - first):.1f} tokens/s decoding"
              if len(new) > 1 and seconds > first else "")
    _say(f"{len(new)} new tokens in {seconds:.2f} s ({len(new) / seconds:.1f} tokens/s overall): "
         f"prefill of {n_prompt} prompt tokens + first token {first:.2f} s{decode}")
    _say(f"KV cache at {tokens} tokens: {used / 2**20:.2f} MiB; full attention would hold {full / 2**20:.2f} MiB "
         f"({used / full:.1%})")
    return 0


class _Clock:
    """A generate() streamer that only notes when each put() comes: the prompt, then every new token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


# -- entry point ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = {"calibrate": lambda: calibrate(args, argv), "show": lambda: show(args), "generate": lambda: generate(args)}
    try:
        if args.command == "eval":
            if _eval_module is None:
                raise CLIError("the eval command is not available in this installation")
            return int(_eval_module.run(args) or 0)
        return sub[args.command]()
    except UsageError as e:
        _subparser(parser, args.command).error(str(e))
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `zigzag-attn show plan.json | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FileNotFoundError, ModuleNotFoundError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
    except (ValueError, RuntimeError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    return 1


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return parser


if __name__ == "__main__":
    sys.exit(main())
