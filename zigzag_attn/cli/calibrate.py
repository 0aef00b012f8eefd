"""`zigzag-attn calibrate MODEL --out plan.json`: profile a model, solve for a plan (and refine it), save it."""

from __future__ import annotations

import argparse
import shlex
import time
from typing import Any

from ..defaults import CALIBRATION
from .common import PROG, CLIError, UsageError, device_name, float_arg, int_arg, load_model, say, versions, writable
from .common import device as pick_device
from .common import dtype as pick_dtype
from .show import SHOW_LENGTHS


def add_parser(sub) -> argparse.ArgumentParser:
    cpu, cuda = CALIBRATION["cpu"], CALIBRATION["cuda"]
    cal = sub.add_parser("calibrate", help="profile a model and save a plan (profile -> solve [-> refine])",
                         description="Profile MODEL on passkey prompts, choose its retrieval layers and save the plan.")
    cal.add_argument("model", metavar="MODEL", help="alias (smollm2-135m, gemma3-270m), a model directory or a .gguf")
    cal.add_argument("--out", required=True, metavar="PLAN.json", help="where to write the plan")
    cal.add_argument("--method", choices=("auto", "gates", "attention"), default="auto",
                     help="gates (trained, DuoAttention-style) or attention (ablation, training-free); "
                          f"auto: {cpu['method']} on CPU, {cuda['method']} on CUDA (docs/results.md)")
    size = cal.add_mutually_exclusive_group()
    size.add_argument("--retrieval-ratio", type=float_arg(0, 1, "a number in [0, 1]"), metavar="R",
                      help="fraction of the choosable layers kept retrieval (default 0.5)")
    size.add_argument("--retrieval-layers", type=int_arg(0), metavar="K", help="number of retrieval layers")
    size.add_argument("--kv-budget", type=float_arg(0, 1, "a fraction in (0, 1]", open_lo=True), metavar="F",
                      help="largest plan whose KV cache is at most F of full attention at --context-length")
    cal.add_argument("--context-length", type=int_arg(1), metavar="N", help="context length for --kv-budget")
    cal.add_argument("--sink", type=int_arg(0), default=64, help="sink tokens (default 64)")
    cal.add_argument("--window", type=int_arg(1), default=256, help="window tokens (default 256)")
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
    cal.set_defaults(run=run, parser=cal)
    return cal


def run(args, argv: list[str]) -> int:
    import torch

    from .. import describe, solve
    from ..data import load_text, passkey_samples
    from ..profile import measure, profile, refine
    from ..scores import Scores

    start = time.perf_counter()
    if args.context_length is not None and args.kv_budget is None:
        raise UsageError("argument --context-length: only used with --kv-budget")
    if args.kv_budget is not None and args.context_length is None:
        raise UsageError("argument --kv-budget: needs --context-length N (the saving depends on the length)")
    writable(args.out, "--out")
    if args.scores_out:
        writable(args.scores_out, "--scores-out")
    device = pick_device(args.device)
    defaults = CALIBRATION[device]
    method = defaults["method"] if args.method == "auto" else args.method
    if args.steps is not None and method != "gates":
        raise UsageError(f"argument --steps: only used with --method gates (the method is {method})")
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

    dtype = pick_dtype(args.dtype, device)
    model, tok = load_model(args.model, dtype, device)
    info = describe(model)
    try:  # check the size constraint against the model before minutes of profiling
        solve(Scores(torch.zeros(info.num_layers, info.num_kv_heads), model=info), **solve_kw)
    except ValueError as e:
        flag = "--" + next(iter(constraint)).replace("_", "-")
        raise UsageError(f"argument {flag}: {e}") from None

    say(f"building {samples_n} calibration prompts of {length} tokens with {keys} passkeys each ...")
    try:
        samples = passkey_samples(tok, n=samples_n, length=length, keys=keys, text=text, seed=args.seed)
    except (TypeError, ValueError) as e:
        raise CLIError(f"cannot build calibration prompts: {e}") from None
    gate_options = {"steps": args.steps} if args.steps is not None else {}
    say(f"profiling with method={method!r} ...")
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
            say(f"refining: greedy elimination from {choosable} to {target} retrieval layers ...")
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
        "model_name": args.model, "method": method, "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."), "seconds": round(seconds, 1),
        "calibration": {"length": length, "samples": samples_n, "keys": keys, "seed": args.seed,
                        "data": [str(p) for p in args.data] if args.data else "shipped:calibration",
                        "refine": do_refine, "candidates": candidates},
        "profile": scores.meta, "versions": versions(),
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
