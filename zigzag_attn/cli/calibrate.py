"""`zigzag-attn calibrate MODEL --out plan.json`: profile a model, solve for a plan (and refine it), save it."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import time
from typing import Any

from ..defaults import CALIBRATION
from ..models import ALIASES
from . import budget
from .common import PROG, CLIError, Model, UsageError, device_name, float_arg, int_arg, say, versions, writable
from .common import device as pick_device
from .common import dtype as pick_dtype
from .show import SHOW_LENGTHS


def add_parser(sub) -> argparse.ArgumentParser:
    cpu, cuda = CALIBRATION["cpu"], CALIBRATION["cuda"]
    cal = sub.add_parser("calibrate", help="profile a model and save a plan (profile -> solve [-> refine])",
                         description="Profile MODEL on passkey prompts, choose its retrieval layers and save the plan.")
    cal.add_argument("model", metavar="MODEL", help=f"alias ({', '.join(ALIASES)}), a model directory or a .gguf")
    cal.add_argument("--out", required=True, metavar="PLAN.json", help="where to write the plan")
    cal.add_argument("--method", choices=("auto", "gates", "attention", "robust"), default="auto",
                     help="gates (trained, DuoAttention-style), attention (ablation, training-free) or robust "
                          "(greedy on several tasks and genres, worst task first); "
                          f"auto: {cpu['method']} on CPU, {cuda['method']} on CUDA (docs/results.md)")
    size = cal.add_mutually_exclusive_group()
    size.add_argument("--retrieval-ratio", type=float_arg(0, 1, "a number in [0, 1]"), metavar="R",
                      help="fraction of the choosable layers kept retrieval (default 0.5)")
    size.add_argument("--retrieval-layers", type=int_arg(0), metavar="K", help="number of retrieval layers")
    size.add_argument("--kv-budget", type=float_arg(0, 1, "a fraction in (0, 1]", open_lo=True), metavar="F",
                      help="largest plan whose KV cache is at most F of full attention at --context-length")
    cal.add_argument("--context-length", type=int_arg(1), metavar="N", help="context length for --kv-budget")
    cal.add_argument("--max-mixed", type=int_arg(0), metavar="M", help="with --kv-budget and per-head gates "
                     "(--method gates --granularity head): a hybrid plan with at most M mixed layers "
                     "(zz.solve_hybrid; 0 gives the layer-exclusive plan)")
    cal.add_argument("--head-scores", metavar="SCORES.json", help="with --max-mixed and --method robust (or gates "
                     "per layer): keep the profile's layer ranking and let these per-head scores decide only where a "
                     "layer splits (zz.split_layer_scores); saved by --method gates --granularity head --scores-out. "
                     "The 1.5B's 25%% hybrid in docs/results.md is made this way")
    cal.add_argument("--latency-budget", type=float_arg(0, 3600, "a number of seconds in (0, 3600]", open_lo=True),
                     metavar="S", help="with --max-mixed: predicted attention seconds per decode step at most S "
                     "(the measured figures shipped for this CUDA GPU, else the bytes-read model of the H200; "
                     "zigzag_attn.cost)")
    cal.add_argument("--cost", metavar="COST.json", help="with --latency-budget: predict latency from this cost "
                     "file (written by benchmarks/layer_cost.py) instead of the one shipped for this GPU")
    cal.add_argument("--sink", type=int_arg(0), help="sink tokens (default 64)")
    cal.add_argument("--window", type=int_arg(1), help="window tokens (default 256)")
    budget.add_arguments(cal)
    cal.add_argument("--data", nargs="+", metavar="DIR_OR_FILE",
                     help="haystack text: .txt files or directories of them (default: the shipped novels)")
    cal.add_argument("--length", type=int_arg(1), help="tokens per calibration prompt "
                     f"(default: {cpu['length']} on CPU, {cuda['length']} on CUDA)")
    cal.add_argument("--samples", type=int_arg(1), help="calibration prompts "
                     f"(default: {cpu['samples']} on CPU, {cuda['samples']} on CUDA)")
    cal.add_argument("--keys", type=int_arg(1), help=f"passkeys per prompt (default {cpu['keys']})")
    cal.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                     help="improve the plan by measured greedy elimination (default: "
                          f"{'on' if cuda['refine'] else 'off'} for CUDA, {'on' if cpu['refine'] else 'off'} for CPU)")
    cal.add_argument("--candidates", type=int_arg(1), metavar="N",
                     help="with --refine: try only the N lowest-scored layers each round (default: all)")
    cal.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    cal.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                     help="auto: bfloat16 on CUDA, float32 on CPU")
    cal.add_argument("--seed", type=int_arg(None), default=0)
    cal.add_argument("--scores-out", metavar="SCORES.json", help="also save the profile scores")
    cal.add_argument("--steps", type=int_arg(1), help="gate training steps (--method gates)")
    cal.add_argument("--granularity", choices=("layer", "head"), help="--method gates: one gate per layer (default; "
                     "ranks layers best) or per KV head (per-head scores for eval's DuoAttention baseline)")
    cal.set_defaults(run=run, parser=cal)
    return cal


def run(args, argv: list[str]) -> int:
    import torch

    from .. import solve
    from ..data import load_text, passkey_samples
    from ..profile import measure, profile, refine
    from ..scores import Scores

    start = time.perf_counter()
    opts = _options(args)
    choices = opts["choices"] or {}
    sink = min(choices.get("sinks", (64 if args.sink is None else args.sink,)))
    window = min(choices.get("windows", (256 if args.window is None else args.window,)))
    solve_kw = dict(opts["constraint"], sink=sink, window=window)
    if args.max_mixed is not None:
        solve = _hybrid(args, _cost(args))
    try:
        text = load_text(args.data) if args.data else None
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"argument --data: {e}") from None

    target = Model(args.model)  # the config only: check what can be checked before the weights load
    info = target.info
    heads_by = _head_scores(args, info)
    try:
        floor = solve(Scores(torch.zeros(info.num_layers, info.num_kv_heads), model=info), **solve_kw)
    except ValueError as e:
        flag = "--" + next(iter(opts["constraint"])).replace("_", "-")
        if "latency_budget" in str(e) or "cost model" in str(e):
            flag = "--cost" if args.cost and "cost model" in str(e) else "--latency-budget"
        raise UsageError(f"argument {flag}: {e}") from None
    if args.latency_budget is not None:  # which figures the latency predictions come from
        by_origin: dict[str, list[str]] = {}
        for what, origin in floor.provenance["cost_model"]["origins"].items():
            by_origin.setdefault(origin, []).append(what)
        say("latency predictions: " + "; ".join(f"{', '.join(w)}: {o}" for o, w in by_origin.items()))
    choosable = info.num_layers - len(info.native_sliding)
    heads = floor.provenance["constraint"].get("retrieval_heads")  # hybrid plans count heads
    k = floor.provenance["constraint"].get("retrieval_layers", (heads or 0) // info.num_kv_heads)
    heads = k * info.num_kv_heads if heads is None else heads
    if heads in (0, choosable * info.num_kv_heads):  # every choosable layer one kind: scores cannot change the plan
        say(f"no profiling needed: the plan keeps {k} of {choosable} choosable layers retrieval, so there is "
            "nothing to choose" + (f"; no scores to write to {args.scores_out}" if args.scores_out else ""))
        plan = type(floor).from_layers(floor.modes, sink=floor.sink, window=floor.window, model=floor.model,
                                       provenance={"solver": "none", "constraint": floor.provenance["constraint"]})
        return _save(args, argv, plan, start, {"method": None, "profile": None})
    target.check_length(opts["length"], "--length")
    if choices:
        target.check_length(args.context_length, "--context-length")

    dtype = pick_dtype(args.dtype, opts["device"])
    model, tok = target.load(dtype, opts["device"])
    samples = None  # method="robust" builds its own multi-task data (zigzag_attn.data.calibration)
    if opts["method"] == "robust":
        say(f"building 3 tasks x {opts['samples']} calibration prompts at {opts['length'] // 2} and "
            f"{opts['length']} tokens ...")
    else:
        say(f"building {opts['samples']} calibration prompts of {opts['length']} tokens with {opts['keys']} "
            "passkeys each ...")
        try:
            samples = passkey_samples(tok, n=opts["samples"], length=opts["length"], keys=opts["keys"], text=text,
                                      seed=args.seed)
        except (TypeError, ValueError) as e:
            raise CLIError(f"cannot build calibration prompts: {e}") from None
    gate_options = {k: v for k, v in (("steps", args.steps), ("granularity", args.granularity)) if v is not None}
    if opts["method"] == "robust":  # one plan: the greedy search stops at its size (scores below it: ablation order)
        gate_options["keep"] = budget.fewest_layers(args, choices, info, k) / choosable
    say(f"profiling with method={opts['method']!r} ...")
    batch = opts["batch"]
    try:
        scores = profile(model, tok, method=opts["method"], data=samples, length=opts["length"],
                         samples=opts["samples"], text=text, sink=sink, window=window, seed=args.seed,
                         progress=True, batch_size=batch, **gate_options)
    except (TypeError, ValueError) as e:
        if samples is not None:  # the other methods' errors are not about their prompts
            raise
        raise CLIError(f"cannot build calibration prompts: {e}") from None
    if args.scores_out:
        scores.save(args.scores_out)
    extra: dict[str, Any] = {"method": opts["method"], "dtype": str(dtype).removeprefix("torch."),
                             "profile": scores.meta}
    if heads_by is not None:  # the layer ranking decides; the head scores only where a layer splits
        from ..scores import split_layer_scores

        scores = split_layer_scores(scores, heads_by)
        extra["head_scores"] = {"file": str(args.head_scores), "method": heads_by.method}
    plan = budget.run(args, opts, scores, model, tok, args.context_length, extra) if choices else \
        solve(scores, **solve_kw)
    if opts["refine"]:
        k = len([i for i in plan.retrieval_layers if i not in info.native_sliding])
        say(f"refining: greedy elimination from {choosable} to {k} retrieval layers ...")
        extra["topk_loss"] = measure(model, samples, plan, batch_size=batch).loss
        top = plan
        wide = solve(scores, retrieval_ratio=1.0, sink=plan.sink, window=plan.window, kv_dtype=plan.kv_dtype)
        plan = refine(wide, model, samples, retrieval_layers=k, scores=scores.layers, candidates=opts["candidates"],
                      batch_size=batch)
        plan = type(plan).from_layers(plan.modes, sink=plan.sink, window=plan.window, model=plan.model,
                                      provenance={**plan.provenance, "constraint": top.provenance["constraint"]},
                                      kv_dtype=top.kv_dtype)
    return _save(args, argv, plan, start, extra, opts)


def _options(args) -> dict[str, Any]:
    """The calibration settings: flags, else the device's defaults; UsageError for combinations that cannot work."""
    if args.context_length is not None and args.kv_budget is None:
        raise UsageError("argument --context-length: only used with --kv-budget")
    if args.kv_budget is not None and args.context_length is None:
        raise UsageError("argument --kv-budget: needs --context-length N (the saving depends on the length)")
    writable(args.out, "--out")
    if args.scores_out:
        writable(args.scores_out, "--scores-out")
    device = pick_device(args.device)
    defaults = CALIBRATION[device]
    given = {"method": None if args.method == "auto" else args.method, "length": args.length,
             "samples": args.samples, "keys": args.keys, "refine": args.refine, "candidates": args.candidates}
    opts = {**defaults, **{k: v for k, v in given.items() if v is not None}, "device": device,
            "choices": budget.settings(args, device), "choice_samples": defaults["samples"]}
    for flag, value in (("--steps", args.steps), ("--granularity", args.granularity)):
        if value is not None and opts["method"] != "gates":
            raise UsageError(f"argument {flag}: only used with --method gates (the method is {opts['method']})")
    if opts["method"] == "robust":  # greedy already: no refine on top
        if opts["length"] < 512:
            raise UsageError(f"argument --length: --method robust needs at least 512 tokens (its prompts are built "
                             f"at half and at the whole length, with 4 answers each); got {opts['length']}")
        if args.refine:
            raise UsageError("argument --refine: not used with --method robust (it is a measured greedy search)")
        opts["refine"] = False
    if args.cost is not None and args.latency_budget is None:
        raise UsageError("argument --cost: only used with --latency-budget")
    if args.latency_budget is not None and args.max_mixed is None:
        raise UsageError("argument --latency-budget: only used with --max-mixed")
    if args.head_scores is not None:
        if args.max_mixed is None:
            raise UsageError("argument --head-scores: only used with --max-mixed")
        if opts["method"] not in ("robust", "gates") or args.granularity == "head":
            raise UsageError(f"argument --head-scores: splits a layer ranking, from --method robust or --method gates "
                             f"(per layer); the method is {opts['method']}"
                             + (" per head, which has head scores already" if args.granularity == "head" else ""))
    if args.max_mixed is not None:
        if args.kv_budget is None:
            raise UsageError("argument --max-mixed: needs --kv-budget F --context-length N")
        if (opts["method"] != "gates" or args.granularity != "head") and args.head_scores is None:
            raise UsageError("argument --max-mixed: needs per-head scores: --method gates --granularity head, or a "
                             "layer ranking (--method robust) with --head-scores SCORES.json")
        if args.refine:
            raise UsageError("argument --refine: not used with --max-mixed (it refines layer-exclusive plans)")
        opts["refine"] = False
    if args.candidates is not None and not opts["refine"]:
        raise UsageError("argument --candidates: only used with --refine")
    if opts["length"] < 64 * opts["keys"]:
        raise UsageError(f"argument --length: {opts['length']} tokens is too short for {opts['keys']} passkeys "
                         f"(need at least {64 * opts['keys']}; lower --keys or raise --length)")
    if args.retrieval_layers is not None:
        opts["constraint"] = {"retrieval_layers": args.retrieval_layers}
    elif args.kv_budget is not None:
        opts["constraint"] = {"kv_budget": args.kv_budget, "context_length": args.context_length}
    else:
        opts["constraint"] = {"retrieval_ratio": 0.5 if args.retrieval_ratio is None else args.retrieval_ratio}
    return opts


def _save(args, argv: list[str], plan, start: float, extra: dict[str, Any], opts: dict[str, Any] | None = None) -> int:
    """Record how the plan was made, save it, and print it with its KV savings."""
    seconds = time.perf_counter() - start
    calibration = opts and {"length": opts["length"], "samples": opts["samples"], "keys": opts["keys"],
                            "seed": args.seed, "refine": opts["refine"], "candidates": opts["candidates"],
                            "data": [str(p) for p in args.data] if args.data else "shipped:calibration"}
    provenance = {**plan.provenance, **extra, "command": shlex.join([PROG, *argv]), "model_name": args.model,
                  "device": device_name(pick_device(args.device)), "seconds": round(seconds, 1),
                  "calibration": calibration, "versions": versions()}
    plan = dataclasses.replace(plan, provenance=provenance)
    path = plan.save(args.out)
    print(plan.describe())
    first = opts["length"] if opts else SHOW_LENGTHS[0]
    lengths = sorted({first, *(n for n in SHOW_LENGTHS if n > first)})[:4]
    print("KV cache vs full attention: " + ", ".join(f"{plan.kv_fraction(n):.3f} at {n}" for n in lengths))
    print(f"saved {path}" + (f" (scores: {args.scores_out})" if args.scores_out and opts else "")
          + f" in {seconds:.1f} s")
    return 0


def _cost(args):
    """The cost model for --latency-budget (None without one): --cost FILE, else the figures for this GPU."""
    from ..cost import BEYOND, CostModel

    if args.latency_budget is None:
        return None
    if args.cost is None:
        cost = CostModel.for_device()
    else:
        try:
            cost = CostModel.load(args.cost)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"argument --cost: {e}") from None
        cost.source = f"measured: {args.cost} (--cost){BEYOND}"
    say(f"latency model: {cost.source}")
    return cost


def _head_scores(args, info):
    """The --head-scores file, checked against MODEL (shape, type, head_dim, own sliding layers) before its weights
    load (None without the flag)."""
    from ..eval.policies import head_scores_problem
    from ..scores import Scores

    if args.head_scores is None:
        return None
    try:
        scores = Scores.load(args.head_scores)
    except (OSError, ValueError) as e:
        raise UsageError(f"argument --head-scores: {e}") from None
    try:
        scores.check_model(info)
    except ValueError as e:
        raise UsageError(f"argument --head-scores: {args.head_scores}: {e}") from None
    problem = head_scores_problem(scores)
    if problem or bool((scores.heads < 0).any()):
        raise UsageError(f"argument --head-scores: {problem or 'head scores must be >= 0 (shares of a layer)'}")
    return scores


def _hybrid(args, cost):
    """`solve` for --max-mixed: the same keyword arguments, answered by zz.solve_hybrid."""
    from ..solve_hybrid import solve_hybrid

    def solve(scores, **kw):
        return solve_hybrid(scores, max_mixed=args.max_mixed, latency_budget=args.latency_budget, cost=cost, **kw)
    return solve
