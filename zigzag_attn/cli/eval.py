"""`zigzag-attn eval ...`: NIAH, passkey, RULER-style tasks, perplexity, and a multi-task comparison.

    zigzag-attn eval niah MODEL --plan plan.json --lengths 2048,4096 --png heatmap.png

Bad arguments and models that do not load end in one argparse `error:` line (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.texts import load_text
from ..eval.policies import FULL, PLAN, STREAMING_FAMILY, Policy, all_streaming, head_scores_problem, policies
from ..eval.policies import duo as duo_policy
from ..eval.run import evaluate
from ..eval.tasks import TASKS
from ..eval.verdict import MEAN, WORST
from ..plan import KV_DTYPES, Plan
from ..scores import Scores
from .common import CLIError, Model, UsageError, can_plot, float_arg, int_arg, with_kv_dtype, writable

RULER_TASKS = ("multikey", "multivalue", "multiquery", "vartrack", "commonwords")
DTYPES = ("float32", "bfloat16", "float16")
_positive, _non_negative, _ratio = int_arg(1), int_arg(0), float_arg(0, 1, "a number in [0, 1]")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `eval` with its sub-commands niah, passkey, ruler, ppl, compare on `subparsers`."""
    p = subparsers.add_parser("eval", help="evaluate plans: NIAH, passkey, RULER-style tasks, perplexity",
                              description="Evaluate attention plans against full attention, all-streaming "
                                          "(StreamingLLM), random layer sets and DuoAttention-style head plans.")
    sub = p.add_subparsers(dest="eval_command", metavar="{niah,passkey,ruler,ppl,compare}")
    p.set_defaults(run=run, parser=p)

    niah = _task_parser(sub, "niah", "needle in a haystack: accuracy by needle depth and context length")
    passkey = _task_parser(sub, "passkey", "passkey retrieval (one 5-digit pass key) by depth and context length")
    for sp in (niah, passkey):
        sp.add_argument("--depths", type=_positive, default=10, help="needle depths evenly spaced over 0..100%% "
                                                                    "(default 10)")
        sp.add_argument("--png", help="write the depth x length accuracy heatmap here")
        sp.add_argument("--budget-png", help="write the accuracy vs KV budget plot here")

    ruler = _task_parser(sub, "ruler", "RULER-style tasks: multi-key / multi-value NIAH, variable tracking, "
                                       "common words")
    ruler.add_argument("--task", choices=RULER_TASKS, default="multikey", help="which task (default multikey)")
    ruler.add_argument("--png", help="write the accuracy vs KV budget plot here")

    compare = _task_parser(sub, "compare", "every policy family on several tasks; DuoAttention baseline with --scores")
    compare.add_argument("--tasks", type=_tasks, default=["niah", *RULER_TASKS],
                         help=f"comma-separated tasks out of {','.join(TASKS)} (default niah,{','.join(RULER_TASKS)})")
    compare.add_argument("--depths", type=_positive, default=5, help="needle depths for niah/passkey (default 5)")
    compare.add_argument("--png", help="write the accuracy vs KV budget plot (mean over tasks and lengths) here")
    compare.add_argument("--heatmap-png", help="write the niah/passkey heatmap here")
    compare.add_argument("--no-duo", action="store_true", help="leave out the DuoAttention-style head plans")
    compare.add_argument("--accept", type=_accept, default=(MEAN, WORST), metavar="MEAN,WORST",
                         help="the acceptance rule printed after the tables: a plan is accepted when its accuracy, "
                              "as a share of full attention's, averages at least MEAN over the tasks and is at least "
                              f"WORST on each (default {MEAN},{WORST})")

    ppl = sub.add_parser("ppl", help="perplexity over long documents, fed in chunks with a bounded cache",
                         description="Perplexity of full attention and each plan over long documents.")
    _model_args(ppl)
    ppl.add_argument("--plan", action="append", default=[], metavar="PLAN", help="plan file or shipped name "
                                                                                  "(repeatable)")
    ppl.add_argument("--streaming", action="store_true", help="also every layer streaming (StreamingLLM)")
    ppl.add_argument("--sink", type=_non_negative, help="sink tokens for --streaming (default: the first plan's)")
    ppl.add_argument("--window", type=_positive, help="window for --streaming (default: the first plan's)")
    ppl.add_argument("--text", nargs="+", metavar="FILE", help="text files or directories of .txt files, one "
                                                               "document each (default: the evaluation novels)")
    ppl.add_argument("--chunk", type=_positive, default=512, help="tokens per forward (default 512)")
    ppl.add_argument("--max-tokens", type=int_arg(2, "an integer >= 2 (a document predicts all but its first token)"),
                     default=8192, help="tokens per document (default 8192)")
    ppl.add_argument("--json", help="write the results here")
    ppl.set_defaults(parser=ppl)
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Execute a parsed `eval` command; returns the exit status."""
    if getattr(args, "eval_command", None) is None:
        args.parser.print_help()
        return 2
    scores = None
    try:
        kv_dtype = getattr(args, "kv_dtype", None)
        plans = {n: with_kv_dtype(p, kv_dtype, args.device) for n, p in _plans(args.plan).items()}
        for out in ("json", "png", "budget_png", "heatmap_png"):
            flag = "--" + out.replace("_", "-")
            if getattr(args, out, None):
                writable(getattr(args, out), flag)  # before the work: its results must not be lost
                if out != "json":
                    can_plot(flag)
        if args.eval_command == "ppl":
            from ..eval.ppl import documents

            texts = _text(documents, args.text)
        else:
            scores = Scores.load(args.scores) if args.scores else None
            text = _text(load_text, args.text) if args.text else None
            duo = args.duo or (args.eval_command == "compare" and not args.no_duo)
            problem = head_scores_problem(scores) if duo and plans else None
            if problem and args.duo:
                raise ValueError(f"--duo: {problem}; give --scores with per-head scores")
            if problem:
                print(f"note: the DuoAttention baseline is left out: {problem}; give --scores with per-head scores "
                      "(or --no-duo)", file=sys.stderr)
                duo = False
            if args.random and args.ratio is None and not plans:
                raise ValueError("--random needs --ratio (the share of layers kept retrieval) or a --plan to copy "
                                 "it from")
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    target = _model(args)  # the config only: plans and lengths are checked before the weights load
    for name, plan in plans.items():
        try:
            plan.check_model(target.info)
        except ValueError as e:
            raise UsageError(f"argument --plan: {name}: {e}") from None
    if scores is not None:
        try:
            scores.check_model(target.info)
        except ValueError as e:
            raise UsageError(f"argument --scores: {args.scores}: {e}") from None
    if args.eval_command == "ppl":
        target.check_length(args.max_tokens, "--max-tokens")
    else:
        _check_lengths(args.lengths, target, text)
    model, tokenizer = _load(args, target)
    if args.eval_command == "ppl":
        return _ppl(args, model, tokenizer, plans, texts)
    tasks = {"niah": ["niah"], "passkey": ["passkey"], "ruler": [getattr(args, "task", None)]}.get(
        args.eval_command) or args.tasks
    try:
        pols = policies(model, plans, n_random=args.random, ratio=args.ratio, context_length=max(args.lengths),
                        seed=args.seed, sink=args.sink, window=args.window)
        for name, plan in plans.items() if duo else ():
            try:
                pols.append(duo_policy(plan, max(args.lengths), scores, name=f"duo@{name}"))
            except ValueError as e:
                print(f"note: no DuoAttention baseline for plan {name!r}, left out: {e}", file=sys.stderr)
        results = evaluate(model, tokenizer, pols, task=tasks, lengths=args.lengths, depths=args.depths
                           if hasattr(args, "depths") else 1, samples_per_cell=args.samples,
                           batch_size=args.batch_size, seed=args.seed, text=text, progress=not args.quiet)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    print(results.table())
    if args.eval_command == "compare":
        from ..eval.verdict import verdict_text

        print("\n" + verdict_text(results, mean=args.accept[0], worst=args.accept[1]))
    written = []
    if args.json:
        written.append(results.save(args.json))
    from ..eval import plots

    heat = args.png if args.eval_command in ("niah", "passkey") else getattr(args, "heatmap_png", None)
    budget = args.png if args.eval_command in ("ruler", "compare") else getattr(args, "budget_png", None)
    if heat:
        written.append(plots.heatmap(results, heat))
    if budget:
        written.append(plots.budget_plot(results, budget))
    for path in written:
        print(f"wrote {path}")
    return 0


# -- helpers ---------------------------------------------------------------------------------------------------------
def _task_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    sp = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
    _model_args(sp)
    sp.add_argument("--plan", action="append", default=[], metavar="PLAN",
                    help="plan file or shipped plan name (repeatable); full and all-streaming always run")
    sp.add_argument("--lengths", type=_lengths, default=[2048, 4096, 8000],
                    help="comma-separated prompt lengths in tokens (default 2048,4096,8000)")
    sp.add_argument("--samples", type=_positive, default=2, help="prompts per cell (default 2)")
    sp.add_argument("--random", type=_non_negative, default=0, metavar="N",
                    help="also N random layer-exclusive plans")
    sp.add_argument("--ratio", type=_ratio, help="share of layers the random plans keep retrieval "
                                                 "(default: the first plan's)")
    sp.add_argument("--duo", action="store_true", help="also a DuoAttention-style head plan at each plan's KV budget "
                                                        "(needs --scores)")
    sp.add_argument("--scores", help="per-head scores for the DuoAttention plans (a scores file, e.g. from "
                                     "calibrate --method gates --granularity head --scores-out)")
    sp.add_argument("--sink", type=_non_negative, help="sink tokens of the streaming/random plans "
                                                       "(default: the first plan's, else 64)")
    sp.add_argument("--window", type=_positive, help="window of the streaming/random plans "
                                                     "(default: the first plan's, else 256)")
    sp.add_argument("--text", nargs="+", metavar="FILE", help="haystack text files, directories, or a shipped genre "
                    "never used in calibration: technical (GNU manuals), legal (licence texts) or evaluation (the "
                    "held-out novels, the default)")
    sp.add_argument("--kv-dtype", choices=KV_DTYPES, help="store every plan's retrieval KV as this (default: each "
                    "plan's own; fp8: float8 with per-token scales)")
    sp.add_argument("--batch-size", type=_positive, default=1, help="prompts per forward (default 1)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the prompts and random plans (default 0)")
    sp.add_argument("--json", help="write all result rows here")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp.set_defaults(parser=sp)
    return sp


def _model_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model", metavar="MODEL", help="local model directory, .gguf file, or alias (smollm2-135m)")
    sp.add_argument("--device", help="torch device, e.g. cuda or cpu (default: where the model loads, cpu)")
    sp.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype (default float32)")


def _model(args) -> Model:
    try:
        return Model(args.model)
    except CLIError as e:
        raise UsageError(f"cannot load model {args.model!r}: {e}") from None


def _load(args, target: Model):
    import torch

    try:
        return target.load(getattr(torch, args.dtype), args.device)
    except CLIError as e:
        raise UsageError(f"cannot load model {args.model!r}: {e}") from None


def _check_lengths(lengths: list[int], target: Model, text: str | None) -> None:
    """UsageError, naming the limit, for a length past the model's context or more than the haystack can fill."""
    target.check_length(max(lengths), "--lengths")
    hay = load_text(split="evaluation") if text is None else text
    most = 4 * len(hay.encode("utf-8"))  # a token covers at least one byte; the text repeats at most 4 times
    if max(lengths) > most:
        raise UsageError(f"argument --lengths: {max(lengths)} tokens is more than the haystack text can fill (at "
                         f"most {most} tokens: {len(hay)} characters, repeated at most four times over)")


def _ppl(args, model, tokenizer, plans: dict[str, Plan], texts: list[str]) -> int:
    from .. import jsonfile
    from ..eval.ppl import ppl
    from ..model_info import describe

    first = next(iter(plans.values()), None)
    pols = [Policy("full", FULL, None)] + [Policy(n, PLAN, p) for n, p in plans.items()]
    try:
        if args.streaming:
            sink = args.sink if args.sink is not None else first.sink if first else 64
            window = args.window if args.window is not None else first.window if first else 256
            pols.insert(1, all_streaming(describe(model), sink=sink, window=window))
        for p in pols:
            if p.plan is not None:
                p.plan.check_model(describe(model))
        rows = []
        for p in pols:
            r = ppl(model, tokenizer, p.plan, texts, chunk=args.chunk, max_tokens=args.max_tokens, progress=True)
            kv = 1.0 if p.plan is None else p.plan.kv_fraction(args.max_tokens)
            rows.append({"policy": p.name, "family": p.family, "ppl": r.ppl, "nll": r.nll, "tokens": r.tokens,
                         "documents": r.documents, "kv_fraction": kv, "max_cache_tokens": max(r.cache_tokens)})
    except ValueError as e:
        raise UsageError(str(e)) from None
    width = max(len(r["policy"]) for r in rows)
    print(f"perplexity over {rows[0]['documents']} documents, {rows[0]['tokens']} predicted tokens "
          f"(chunks of {args.chunk}, at most {args.max_tokens} tokens each)")
    print(f"{'policy'.ljust(width)}  {'family':<9}  {'ppl':>9}  {'nll':>7}  KV@{args.max_tokens}  "
          "cache tokens (max layer)")
    for r in rows:
        print(f"{r['policy'].ljust(width)}  {r['family']:<9}  {r['ppl']:>9.3f}  {r['nll']:>7.4f}  "
              f"{r['kv_fraction']:>{len(str(args.max_tokens)) + 3}.3f}  {r['max_cache_tokens']}")
    if args.json:
        print(f"wrote {jsonfile.write(args.json, {'format': 'zigzag-attn/ppl', 'version': 1, 'rows': rows})}")
    return 0


def _plans(paths: list[str]) -> dict[str, Plan]:
    out: dict[str, Plan] = {}
    for path in paths:
        name = Path(path).stem if Path(path).suffix == ".json" else str(path)
        while name in out or name in (FULL, STREAMING_FAMILY):
            name += "'"
        out[name] = Plan.load(path)
    return out


def _text(load, source):
    """`load(source)`: the --text files, refused (not text, no text, missing) naming the flag."""
    try:
        return load(source)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"argument --text: {e}") from None


def _lengths(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(n < 64 for n in out):
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts >= 64 such as 2048,4096,8000; "
                                         f"got {s!r}")
    return sorted(set(out))


def _tasks(s: str) -> list[str]:
    out = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in out if x not in TASKS]
    if not out or bad:
        raise argparse.ArgumentTypeError(f"expected comma-separated tasks out of {', '.join(TASKS)}; got {s!r}")
    return out


def _accept(s: str) -> tuple[float, float]:
    try:
        mean, worst = (float(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MEAN,WORST (two shares of full accuracy, e.g. 0.95,0.9); got "
                                         f"{s!r}") from None
    if not (0 < mean <= 1 and 0 < worst <= 1):
        raise argparse.ArgumentTypeError(f"MEAN and WORST are shares of full attention's accuracy in (0, 1]; got {s}")
    return mean, worst
