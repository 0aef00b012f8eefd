"""Where a compiled decode step's host time goes, and what torch's user settings change.

    python benchmarks/host_time.py --n 32768 --batch 1 --out DIR        # zigzag, compiled, random 8B shape

The host time of a step is how long the compiled call takes to return, the device idle before it (the GPU waits
for it, then runs the CUDA graph). It is split by cProfile over `steps` calls, by where the Python code lives:
dynamo's frame entry (its C++ guard evaluation is counted in that caller), AOT autograd's runtime wrappers,
inductor's compiled-graph wrapper, the CUDA-graph tree's bookkeeping, the CUDA-graph replay call itself,
transformers' Python, zigzag_attn's Python (ours: it should be traced into the graph and not run at all).
cProfile's own overhead inflates the Python parts, so the groups are also given as shares of the profiled total.

Settings measured on the same compiled call (none recompiles; each is checked to give bit-identical logits from
the same cache state): torch.compiler.set_stance("fail_on_recompile"), and set_stance(skip_guard_eval_unsafe=True)
(runs only the guards that tell cache entries apart; `default - skip` estimates the guard time).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import host_times, run_step, sync  # noqa: E402

GROUPS = (  # (substring of the file path, group); the first match wins
    ("zigzag_attn", "ours (zigzag_attn)"),
    ("torchinductor", "inductor generated code"),
    ("eval_with_key", "FX generated code"),
    ("cudagraph_trees", "CUDA-graph tree bookkeeping"),
    ("torch/_dynamo", "dynamo frame entry + guards"),
    ("torch/_functorch", "AOT runtime wrappers"),
    ("torch/_inductor", "inductor graph wrapper"),
    ("transformers", "transformers Python"),
    ("torch/", "torch, other Python"),
)


def group_of(func: tuple) -> str:
    path, _, name = func
    if path == "~":
        return "CUDA-graph replay (C)" if "replay" in name else "C calls, other"
    path = path.replace("\\", "/")
    return next((g for key, g in GROUPS if key in path), "other Python")


def profile_groups(call, steps: int) -> dict:
    """Host ms per step in each group (cProfile's own time: tottime), largest first, and the top functions."""
    prof = cProfile.Profile()
    for _ in range(steps):
        sync()
        prof.enable()
        run_step(call)
        prof.disable()
    sync()
    stats = pstats.Stats(prof).stats
    groups: dict[str, float] = {}
    for func, (_, _, tottime, _, _) in stats.items():
        groups[group_of(func)] = groups.get(group_of(func), 0.0) + tottime * 1e3 / steps
    total = sum(groups.values())
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:12]
    return {"profiled_ms": total,
            "groups": {g: {"ms": round(ms, 4), "share": round(ms / total, 3)}
                       for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [{"fn": f"{Path(f[0]).name}:{f[1]} {f[2]}"[:100], "ms": round(s[2] * 1e3 / steps, 4),
                     "calls": s[1] / steps} for f, s in top]}


def state_tensors(cache) -> list[torch.Tensor]:
    """The cache's bookkeeping tensors (lengths, ring positions): all but keys and values. Restored, they
    repeat the step just run exactly: it writes the same keys to the same slots and reads what it read then."""
    objs = [cache]
    for layer in cache.layers:
        objs += [layer] + [getattr(layer, a) for a in ("full", "stream") if hasattr(layer, a)]
    return [v for o in objs for k, v in vars(o).items()
            if isinstance(v, torch.Tensor) and k not in ("keys", "values")]


def logits_from(call, state: list[torch.Tensor], saved: list[torch.Tensor]) -> torch.Tensor:
    """Restore the bookkeeping tensors, run one step, return its logits `(batch, 1, vocab)`."""
    for t, s in zip(state, saved, strict=True):
        t.copy_(s)
    return run_step(call).logits.clone()  # a CUDA graph's outputs are overwritten by its next replay


def settings() -> dict:
    """name -> a context manager applying one of torch's user settings (None where this torch lacks it)."""
    stance = torch.compiler.set_stance
    out = {"default": contextlib.nullcontext, "fail_on_recompile": lambda: stance("fail_on_recompile")}
    try:
        with stance("default", skip_guard_eval_unsafe=True):
            pass
        out["skip_guard_eval_unsafe"] = lambda: stance("default", skip_guard_eval_unsafe=True)
    except (TypeError, RuntimeError):
        out["skip_guard_eval_unsafe"] = None
    return out


def guard_count() -> dict:
    """Per code object dynamo compiled: its cache entries' leaf guards (a call runs an entry's guards, most recent
    entry first, until one passes; every compiled model call shares one code object). Empty where this torch
    lacks the API."""
    try:
        from torch._dynamo.convert_frame import input_codes
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list

        out = {}
        for ref in input_codes.seen:
            code = ref()
            leaves = []
            for entry in _debug_get_cache_entry_list(code) if code is not None else []:
                stack, n = [entry.guard_manager.root], 0
                while stack:
                    m = stack.pop()
                    n += len(m.get_leaf_guards())
                    stack += m.get_child_managers()
                leaves.append(n)
            if leaves:
                out[f"{Path(code.co_filename).name}:{code.co_name}"] = leaves
        return out
    except Exception as e:  # noqa: BLE001 - a diagnostic: a torch without this API must not stop the run
        return {"unavailable": f"{type(e).__name__}: {e}"[:160]}


ROUNDS = 4


def analyse(call, cache, steps: int = 20) -> dict:
    """Host time of the compiled `call` (one decode step on `cache`, already warm): plain, by group, per setting."""
    counters = torch._dynamo.utils.counters
    graphs = counters["stats"]["unique_graphs"]
    out = {"host": host_times(call, steps), "profile": profile_groups(call, steps), "settings": {},
           "guards": guard_count()}
    state, made = state_tensors(cache), {k: v for k, v in settings().items() if v is not None}
    got: dict[str, list[float]] = {name: [] for name in made}
    for _ in range(ROUNDS):  # the settings interleaved, so that drift in the machine's load hits all alike
        for name, make in made.items():
            with make():
                got[name].append(host_times(call, max(1, steps // ROUNDS))["ms"])
    for name, make in settings().items():
        if make is None:
            out["settings"][name] = {"unavailable": "this torch's set_stance lacks it"}
            continue
        timed = {"ms": statistics.median(got[name]), "rounds": got[name]}
        saved = [t.clone() for t in state]  # the same step twice: the default's logits, then the setting's
        reference = logits_from(call, state, saved)
        with make():
            got_logits = logits_from(call, state, saved)
        # bit-identical, NaN == NaN (random weights can overflow); the largest difference says how far apart
        same = torch.equal(got_logits.isnan(), reference.isnan()) and torch.equal(
            got_logits.nan_to_num(), reference.nan_to_num())
        diff = (got_logits.float() - reference.float()).nan_to_num().abs().max().item()
        out["settings"][name] = {**timed, "same_logits": same, "max_abs_diff": diff,
                                 "finite": bool(reference.isfinite().all())}
    out["recompiles"] = counters["stats"]["unique_graphs"] - graphs
    if out["settings"].get("skip_guard_eval_unsafe", {}).get("ms") is not None:
        out["guard_ms_estimate"] = out["settings"]["default"]["ms"] - out["settings"]["skip_guard_eval_unsafe"]["ms"]
    return out


def main() -> None:
    from bench import Bench
    from timing import DEVICE, mark_filled
    from transformers.generation.configuration_utils import CompileConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--policy", default="zigzag")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backend", default="inductor", choices=("inductor", "cudagraphs", "eager"))
    ap.add_argument("--decode-backend", choices=("auto", "sdpa", "split"), default="auto")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--model")
    ap.add_argument("--zigzag-plan")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default="host-out")
    args = ap.parse_args()
    bench = Bench(args, [args.policy], log_name="host_time.jsonl")
    model = bench.models[args.policy]
    cache = bench.new_cache(args.policy, args.n + 8 * args.steps + 16)
    tok = torch.randint(10, 1000, (args.batch, 1), device=DEVICE)
    model(input_ids=tok, use_cache=True, **{bench.cache_kw: cache})  # allocates the cache, eagerly
    mark_filled(cache, args.n)
    cfg = CompileConfig(backend=args.backend, mode="reduce-overhead" if args.backend == "inductor" else None)
    fn = model.get_compiled_call(cfg)
    call = lambda: fn(input_ids=tok, use_cache=True, **{bench.cache_kw: cache})  # noqa: E731
    t = time.time()
    for _ in range(3):
        run_step(call)
    sync()
    row = {"part": "host", "policy": args.policy, "n": args.n, "batch": args.batch, "backend": args.backend,
           "first_call_s": time.time() - t, **analyse(call, cache, args.steps)}
    bench.emit(row)
    print(json.dumps(row["profile"]["groups"], indent=1))


if __name__ == "__main__":
    main()
