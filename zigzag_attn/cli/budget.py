"""`calibrate --kv-budget F --context-length N`: which window, sink and KV dtype the budget buys (zz.choose).

With several settings (`--windows`, `--sinks`, `--kv-dtypes`; by default on CUDA windows 256, 1024 and 4096 with
16-bit and FP8 retrieval KV), each is solved for the budget and measured on held-out validation prompts at the
target length; the one whose worst task loses least becomes the plan.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..choose import SINKS, WINDOWS, candidates, choose, validation_groups
from ..plan import KV_DTYPES
from .common import UsageError, say


def add_arguments(cal: argparse.ArgumentParser) -> None:
    cal.add_argument("--windows", type=_ints("--windows"), metavar="W,W,...",
                     help="with --kv-budget: streaming windows to choose from (default on CUDA: "
                          f"{','.join(map(str, WINDOWS))}; on CPU: --window)")
    cal.add_argument("--sinks", type=_ints("--sinks", lo=0), metavar="S,S,...",
                     help=f"with --kv-budget: sink sizes to choose from (default: --sink, {SINKS[0]})")
    cal.add_argument("--kv-dtypes", type=_dtypes, metavar="D,D,...",
                     help="with --kv-budget: retrieval KV dtypes to choose from, 'model' and/or 'fp8' (default on "
                          "CUDA: model,fp8; on CPU: model)")


def settings(args, device: str) -> dict[str, tuple] | None:
    """The settings to choose among (None: one fixed setting, nothing to choose); UsageError for flags that cannot
    work, before any model loads."""
    given = {k: v for k, v in (("--windows", args.windows), ("--sinks", args.sinks), ("--kv-dtypes", args.kv_dtypes))
             if v is not None}
    if given and args.kv_budget is None:
        raise UsageError(f"argument {next(iter(given))}: only used with --kv-budget (choices need a byte budget)")
    if given and args.max_mixed is not None:
        raise UsageError(f"argument {next(iter(given))}: not used with --max-mixed (a hybrid plan keeps one window)")
    if args.window is not None and args.windows is not None:
        raise UsageError("argument --windows: give either --window (one) or --windows (several to choose from)")
    if args.sink is not None and args.sinks is not None:
        raise UsageError("argument --sinks: give either --sink (one) or --sinks (several to choose from)")
    if args.kv_budget is None or args.max_mixed is not None:
        return None
    cuda = device == "cuda"
    out = {"windows": args.windows or ((args.window,) if args.window is not None else WINDOWS if cuda else (256,)),
           "sinks": args.sinks or ((args.sink,) if args.sink is not None else SINKS),
           "kv_dtypes": args.kv_dtypes or (("model", "fp8") if cuda else ("model",))}
    return out if any(len(v) > 1 for v in out.values()) else None


def fewest_layers(args, choices: dict | None, info, k: int) -> int:
    """The fewest retrieval layers any setting keeps (`k` without choices): the robust greedy search must rank the
    layers down to it, since the layers it leaves are ordered by ablation only."""
    if not choices:
        return k
    import torch

    from ..scores import Scores

    zero = Scores(torch.zeros(info.num_layers, info.num_kv_heads), model=info)
    plans = candidates(zero, kv_budget=args.kv_budget, context_length=args.context_length, **choices)
    return min(len([i for i in p.retrieval_layers if i not in info.native_sliding]) for p in plans)


def run(args, opts: dict[str, Any], scores, model, tok, length: int, extra: dict[str, Any]):
    """Solve every setting for the budget, measure them at `length` tokens on validation prompts, return the best
    plan (its choice recorded in `extra["choice"]`)."""
    plans = candidates(scores, kv_budget=args.kv_budget, context_length=args.context_length, **opts["choices"])
    if len(plans) == 1:
        extra["choice"] = {"candidates": 1, "note": "the other settings did not fit the budget or were identical"}
        return plans[0]
    say(f"choosing among {len(plans)} settings (window, sink, KV dtype) on validation prompts of {length} tokens ...")
    groups = validation_groups(tok, length=length, samples=opts["choice_samples"], seed=args.seed + 101)
    best, rows = choose(model, plans, groups, batch_size=1, log=say)
    extra["choice"] = {"length": length, "samples_per_task": opts["choice_samples"], "rows": rows,
                       "chosen": plans.index(best)}
    return best


def _ints(flag: str, lo: int = 1):
    def conv(text: str) -> tuple[int, ...]:
        try:
            out = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected integers >= {lo} separated by commas; got {text!r}") from None
        if not out or min(out) < lo:
            raise argparse.ArgumentTypeError(f"expected integers >= {lo} separated by commas; got {text!r}")
        return tuple(dict.fromkeys(out))
    return conv


def _dtypes(text: str) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in out if x not in KV_DTYPES]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"expected {' and/or '.join(KV_DTYPES)} separated by commas; got {text!r}")
    return out
