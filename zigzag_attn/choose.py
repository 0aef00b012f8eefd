"""Spend a KV budget where it pays: retrieval layers (or KV heads), streaming window, sink and KV dtype together.

At a fixed number of KV bytes these trade against each other: a wider window costs every streaming layer more, so
fewer layers stay retrieval; FP8 retrieval KV halves a retrieval layer's bytes, so about twice as many fit.
`candidates` solves the budget once per (sink, window, kv_dtype); `choose` measures the candidates on validation
prompts at the target length and keeps the one whose worst task loses least (robust calibration's objective).

    plans = zz.candidates(scores, kv_budget=0.25, context_length=32768, windows=(256, 1024, 4096))
    best, rows = zz.choose(model, plans, validation_groups(tok, length=32768))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from .data.calibration import calibration_groups
from .data.passkey import Sample
from .plan import KV_DTYPES, Plan, check_sink_window
from .profile.measure import measure_groups
from .scores import Scores
from .solve import solve, solve_heads

WINDOWS = (256, 1024, 4096)
SINKS = (64,)
VALIDATION_SPLITS = ("evaluation",)  # held-out novels: neither the profile's data nor the evaluation matrix's genres


def candidates(scores: Scores, *, kv_budget: float, context_length: int, windows: Sequence[int] = WINDOWS,
               sinks: Sequence[int] = SINKS, kv_dtypes: Sequence[str] = ("model",), heads: bool = False) -> list[Plan]:
    """One plan per (sink, window, kv_dtype) that fits: the most retrieval layers (`solve`; `heads=True`: KV heads,
    `solve_heads`) whose KV is at most `kv_budget` of full attention's 16-bit KV at `context_length`.

    Settings the budget cannot pay for (every choosable layer streaming is already over it) are left out; a
    ValueError names the budget when none fits. Duplicates (a window past the context) are dropped.
    """
    for s in sinks:
        for w in windows:
            check_sink_window(s, w)
    bad = [d for d in kv_dtypes if d not in KV_DTYPES]
    if bad or not kv_dtypes or not windows or not sinks:
        raise ValueError(f"candidates need at least one sink, window and kv_dtype (kv_dtypes among {KV_DTYPES}); "
                         f"got sinks={list(sinks)}, windows={list(windows)}, kv_dtypes={list(kv_dtypes)}")
    out: list[Plan] = []
    errors = []
    for kv_dtype in kv_dtypes:
        for sink in sinks:
            for window in windows:
                kw = dict(kv_budget=kv_budget, context_length=context_length, sink=sink, window=window,
                          kv_dtype=kv_dtype)
                try:
                    plan = solve_heads(scores, **kw) if heads else solve(scores, **kw)
                except ValueError as e:
                    errors.append(str(e))
                    continue
                if not any(_same(plan, p, context_length) for p in out):
                    out.append(plan)
    if not out:
        raise ValueError(f"no candidate fits kv_budget={kv_budget} at context_length={context_length}: {errors[0]}")
    return out


def _same(a: Plan, b: Plan, n: int) -> bool:
    """Plans that behave alike on contexts up to n: same layout and dtype, and sink + window both past n."""
    wide = a.sink + a.window >= n and b.sink + b.window >= n
    return (a.modes, a.heads, a.kv_dtype) == (b.modes, b.heads, b.kv_dtype) and (
        wide or (a.sink, a.window) == (b.sink, b.window))


def validation_groups(tokenizer, *, length: int, samples: int = 4, seed: int = 101,
                      splits: Sequence[str] = VALIDATION_SPLITS) -> dict[str, list[Sample]]:
    """`{task: samples}` at `length` tokens on held-out text, in calibration's wordings (`data.calibration`)."""
    return calibration_groups(tokenizer, lengths=(length,), samples=samples, splits=splits, seed=seed)


def choose(model, plans: Sequence[Plan], groups: Mapping[str, list[Sample]], *, batch_size: int = 1,
           log: Callable[[str], None] | None = None) -> tuple[Plan, list[dict]]:
    """The plan of `plans` whose worst group's answer loss rises least over full attention on `groups`, and one row
    per plan (`kv_fraction` is not re-checked: the candidates share a budget). Ties go to the earlier plan."""
    if not plans:
        raise ValueError("choose needs at least one candidate plan")
    if not groups or any(not s for s in groups.values()):
        raise ValueError("choose needs at least one non-empty group of validation samples")
    n = max(len(s) for v in groups.values() for s in v)
    full = {g: m.loss for g, m in measure_groups(model, groups, None, batch_size).items()}
    rows = []
    for i, plan in enumerate(plans):
        t = time.perf_counter()
        loss = {g: m.loss for g, m in measure_groups(model, groups, plan, batch_size).items()}
        rise = {g: loss[g] - full[g] for g in groups}
        rows.append({"candidate": i, "sink": plan.sink, "window": plan.window, "kv_dtype": plan.kv_dtype,
                     "retrieval_layers": len(plan.retrieval_layers), "mixed_layers": len(plan.mixed_layers),
                     "kv_fraction": plan.kv_fraction(n), "loss": loss, "rise": rise,
                     "worst_rise": max(rise.values()), "seconds": round(time.perf_counter() - t, 1)})
        if log:
            log(f"candidate {i}: sink {plan.sink}, window {plan.window}, {plan.kv_dtype} KV, "
                f"{len(plan.retrieval_layers)} retrieval layers: worst rise {rows[-1]['worst_rise']:.4f}")
    best = min(range(len(plans)), key=lambda i: (rows[i]["worst_rise"], i))
    return plans[best], rows
