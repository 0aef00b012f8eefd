"""Hybrid plans at zigzag's KV (the frontier of docs/results.md), and finding policies whose plans are identical.

`hybrid-m{m}@{r}`: `solve_hybrid` on the robust layer ranking shared among each layer's KV heads by the
DuoAttention head gates (`zz.split_layer_scores`), at zigzag@r's KV fraction at the longest eval length, with at
most m mixed layers. A whole layer keeps exactly its robust score, so m = 0 is zigzag@r; a mixed layer appears where
giving up a whole retrieval layer for the carrying heads of two layers keeps more of the ranking's score. The
"-s8" variants share by gates ** 8 (`sharpness`): only a clearly weaker head (gate 0.6 beside 1.0) is cheap to
stream, not one of two near-equal heads (0.987 beside 1.0), whose swaps at sharpness 1 are near-ties. Every
hybrid has exactly zigzag@r's retrieval heads, so its KV bytes equal zigzag@r's at every length.

With H KV heads per layer and a head budget that is a multiple of H (every zigzag plan), one mixed layer cannot
hold a multiple of H heads with the others, so hybrid-m1 always equals zigzag (checked, not assumed: `twins`).
"""

from __future__ import annotations

import zigzag_attn as zz

MIXED = (1, 2, 4)
RATIOS = (0.5, 0.25)
VARIANTS = (("", 1.0, MIXED), ("-s8", 8.0, (2, 4)))  # (name suffix, sharpness of the head shares, m values)
NAMES = [f"hybrid-m{m}{suffix}" for suffix, _, ms in VARIANTS for m in ms]
TASKS = ("multikey", "multivalue", "niah", "passkey", "vartrack")  # every task whose full score is above the floor


def kv_heads(plan: zz.Plan) -> int:
    """KV heads per layer: from the head mask, else the recorded model (1 for a bare layer plan)."""
    return len(plan.heads[0]) if plan.heads else plan.model.num_kv_heads if plan.model else 1


def retrieval_heads(plan: zz.Plan) -> int:
    return sum(map(sum, plan.head_mask(kv_heads(plan))))


def hybrids(robust: zz.Scores, gates: zz.Scores, zigzag: dict[float, zz.Plan], context_length: int,
            variants=VARIANTS) -> dict[str, zz.Plan]:
    """{"hybrid-m{m}{suffix}@{r}": plan} for every r of `zigzag` (r -> the zigzag@r plan, made by `solve(robust)`)
    and (suffix, sharpness, m values) of `variants`. Raises RuntimeError if m = 0 does not give zigzag@r's layers
    (the plan was not solved from `robust`), or a hybrid breaks its constraints (zigzag@r's retrieval heads, at most
    m mixed layers)."""
    out = {}
    for suffix, sharpness, mixed in variants:
        split = zz.split_layer_scores(robust, gates, sharpness=sharpness)
        for r, zig in zigzag.items():
            f = zig.kv_fraction(context_length)
            kw = dict(kv_budget=f, context_length=context_length, sink=zig.sink, window=zig.window)
            base = zz.solve_hybrid(split, max_mixed=0, **kw)
            if base.modes != zig.modes:
                raise RuntimeError(f"hybrid m=0 at {r} is {base.describe()}, not zigzag@{r} {zig.describe()}: was "
                                   f"the zigzag plan solved from these robust scores?")
            for m in mixed:
                name, plan = f"hybrid-m{m}{suffix}@{r}", zz.solve_hybrid(split, max_mixed=m, **kw)
                if retrieval_heads(plan) != retrieval_heads(zig) or len(plan.mixed_layers) > m:
                    raise RuntimeError(f"{name} has {retrieval_heads(plan)} retrieval heads (zigzag@{r}: "
                                       f"{retrieval_heads(zig)}) and {len(plan.mixed_layers)} mixed layers")
                out[name] = zz.Plan(plan.modes, plan.sink, plan.window, plan.heads, plan.model,
                                    {**plan.provenance, "equal_kv_to": f"zigzag@{r}", "sharpness": sharpness})
    return out


def key(plan: zz.Plan | None):
    """What decides a plan's attention: sink, window and the head mask (None for full attention, unpatched)."""
    if plan is None:
        return None
    return plan.sink, plan.window, tuple(map(tuple, plan.head_mask(kv_heads(plan))))


def twins(plans: dict[str, zz.Plan | None]) -> dict[str, list[str]]:
    """{name: the other names in `plans` with an identical plan, in `plans` order}, for names that have any."""
    groups: dict = {}
    for name, plan in plans.items():
        groups.setdefault(key(plan), []).append(name)
    return {n: [o for o in g if o != n] for g in groups.values() if len(g) > 1 for n in g}
