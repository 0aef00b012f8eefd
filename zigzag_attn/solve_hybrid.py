"""`solve_hybrid`: plans between zigzag (whole layers) and DuoAttention (heads), with at most `max_mixed` mixed layers
and an optional budget on predicted decode latency (`zigzag_attn.cost`).

Each choosable layer keeps `k` of its `H` KV heads retrieval, its best `k` by `scores.heads` (ties to the lower
head): `k = H` is a retrieval layer, `k = 0` a streaming one, anything between a mixed one. As in `solve` and
`solve_heads`, the plan uses as much of the KV budget as it can: among the plans within every budget it has the most
retrieval heads, then the highest retained score (the sum of its retrieval heads' scores), then the lowest predicted
latency, then the most retrieval heads on the lowest layers.

Exact by dynamic programming over the layers. The state after some layers is (retrieval heads used, mixed layers
used); what the remaining layers can add depends on that state only, as the KV fraction depends only on the number
of retrieval heads (every head of a choosable layer costs the same cache) and per-layer costs do not depend on the
layer index. Without a latency budget a state keeps its best partial plan. With one, a state keeps every partial plan
not dominated in (score, latency): one with a lower score but lower latency may be the only one to finish within the
budget. Latencies are summed as whole nanoseconds per layer, so the sums are exact whatever the order.
Work: layers x (retrieval heads allowed + 1) x (min(max_mixed, layers) + 1) x (H + 1) steps, times the partial plans
a state keeps under a latency budget; 80 layers of 8 KV heads with max_mixed=80 take about 7 s on one CPU core.
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral, Real
from typing import Any

from .cost import CostModel
from .plan import RETRIEVAL, STREAMING, Plan, check_kv_dtype, check_sink_window
from .scores import Scores
from .solve import _budget_args, _largest_within, _native_layers, solve


def solve_hybrid(scores: Scores, *, kv_budget: float, context_length: int, max_mixed: int,
                 latency_budget: float | None = None, cost: CostModel | None = None, batch: int = 1, sink: int = 64,
                 window: int = 256, kv_dtype: str = "model") -> Plan:
    """Plan maximising the retained head score within `kv_budget` at `context_length`, with at most `max_mixed`
    mixed layers and, if given, a predicted decode latency of its attention layers <= `latency_budget` seconds
    (per step, at `batch` sequences, from `cost`; default `CostModel()`, the bytes-read model for the H200).

    `max_mixed=0` gives exactly `solve(scores, kv_budget=..., context_length=...)`'s layers (ranked by
    `scores.layers`), within the latency budget if one is given. `scores.heads` is `[num_layers, num_kv_heads]`.
    kv_dtype: how retrieval KV is stored, as in `solve` (the latency model counts 16-bit KV, so not with
    `latency_budget`).
    """
    if not isinstance(scores, Scores):
        raise TypeError(f"scores must be a Scores; got {type(scores).__name__}")
    f, N = _budget_args(kv_budget, context_length)
    check_sink_window(sink, window)
    check_kv_dtype(kv_dtype)
    if kv_dtype != "model" and latency_budget is not None:
        raise ValueError("latency_budget predicts 16-bit KV reads; it cannot judge a plan with kv_dtype="
                         f"{kv_dtype!r}")
    if isinstance(max_mixed, bool) or not isinstance(max_mixed, Integral) or max_mixed < 0:
        raise ValueError(f"max_mixed must be an integer >= 0 (the most mixed layers the plan may have); "
                         f"got {max_mixed!r}")
    if isinstance(batch, bool) or not isinstance(batch, Integral) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1; got {batch!r}")
    if latency_budget is not None and (isinstance(latency_budget, bool) or not isinstance(latency_budget, Real)
                                       or not 0 < latency_budget < math.inf):
        raise ValueError(f"latency_budget must be a number of seconds > 0; got {latency_budget!r}")
    if cost is not None and not isinstance(cost, CostModel):
        raise TypeError(f"cost must be a CostModel; got {type(cost).__name__}")
    if latency_budget is not None and scores.model is None:
        raise ValueError("latency_budget needs scores.model (the head_dim and native sliding layers) to predict "
                         "latency; these scores have none")
    cost = cost or CostModel()
    H, native = scores.num_kv_heads, _native_layers(scores)
    choosable = [i for i in range(scores.num_layers) if i not in native]
    head_scores = [[float(x) for x in row] for row in scores.heads.tolist()]
    times = _layer_times(scores, cost, N, int(batch), sink, window)

    def heads_plan(t: int) -> Plan:  # any plan with t retrieval heads: the KV fraction depends on t only
        mask = [[i in native] * H for i in range(scores.num_layers)]
        for j in range(t):
            mask[choosable[j // H]][j % H] = True
        return Plan.from_heads(mask, sink=sink, window=window, model=scores.model, kv_dtype=kv_dtype)

    most = _largest_within(heads_plan, 0, len(choosable) * H, f, N, what="every choosable head streaming")
    ranked = [sorted(range(H), key=lambda h, i=i: (-head_scores[i][h], h)) for i in choosable]
    values = [[sum(head_scores[i][h] for h in order[:k]) for k in range(H + 1)]
              for i, order in zip(choosable, ranked, strict=True)]
    kinds = [0, H] if max_mixed == 0 else range(H + 1)
    choices, latency = _dp(values, H, times, kinds, most, int(max_mixed), latency_budget)

    notes = {"max_mixed": int(max_mixed), "latency_budget": latency_budget, "batch": int(batch)}
    if max_mixed == 0:  # the same layers as solve: it ranks whole layers by scores.layers
        base = solve(scores, retrieval_layers=sum(k == H for k in choices), sink=sink, window=window,
                     kv_dtype=kv_dtype)
        mask = base.head_mask(H)
    else:
        mask = [[i in native] * H for i in range(scores.num_layers)]
        for i, order, k in zip(choosable, ranked, choices, strict=True):
            for h in order[:k]:
                mask[i][h] = True
    plan = Plan.from_heads(mask, sink=sink, window=window, model=scores.model, kv_dtype=kv_dtype)
    constraint = {"kv_budget": f, "context_length": N, **notes, "retrieval_heads": sum(choices),
                  "mixed_layers": len(plan.mixed_layers), "kv_fraction": plan.kv_fraction(N)}
    provenance = {"method": scores.method, "solver": "hybrid-dp", "constraint": constraint,
                  "predicted_latency_s": _seconds(latency) if times else None,
                  "cost_model": {**cost.describe(), "head_dim": scores.model.head_dim if scores.model else None,
                                 "origins": times.get("origins")},
                  "head_scores": head_scores}
    if max_mixed == 0:
        return Plan.from_layers([RETRIEVAL if all(r) else STREAMING for r in mask], sink=sink, window=window,
                                model=scores.model, provenance={**provenance, "layer_scores": base.provenance[
                                    "layer_scores"]}, kv_dtype=kv_dtype)
    return Plan.from_heads(mask, sink=sink, window=window, model=scores.model, provenance=provenance,
                           kv_dtype=kv_dtype)


def _layer_times(scores: Scores, cost: CostModel, N: int, batch: int, sink: int, window: int) -> dict[str, Any]:
    """Whole nanoseconds: "k" -> per choosable layer with k retrieval heads, "native" -> all native layers together;
    "origins": where each prediction came from (`CostModel.origin`). Empty without `scores.model` (no head_dim:
    latency is not predicted)."""
    if scores.model is None:
        return {}
    H, d = scores.num_kv_heads, scores.model.head_dim
    kw = dict(batch=batch, sink=sink, window=window, head_dim=d)
    asked = dict.fromkeys([(k, N) for k in range(H + 1)] + [(H, min(N, w)) for w in _native_windows(scores).values()])
    ns, origins = {}, {}
    for k, n in asked:
        seconds = cost.decode(k, H, context_length=n, **kw)
        if not math.isfinite(seconds):
            raise ValueError(f"the cost model predicts {seconds} s for a layer with {k} of {H} retrieval heads at {n} "
                             "tokens, so no latency can be predicted: its figures or bandwidth are out of range")
        ns[k, n] = _ns(seconds)
        origins[f"{k} of {H} retrieval heads at {n} tokens"] = cost.origin(k, H, context_length=n, **kw)
    return {"k": [ns[k, N] for k in range(H + 1)], "origins": origins,
            "native": sum(ns[H, min(N, w)] for w in _native_windows(scores).values())}


def _ns(seconds: float) -> int:
    """Whole nanoseconds of a finite number of seconds, however large (an int: sums cannot overflow)."""
    ns = seconds * 1e9
    return round(ns) if math.isfinite(ns) else round(Fraction(seconds) * 10**9)


def _seconds(ns: int) -> float:
    """Nanoseconds as seconds; inf past the largest float."""
    try:
        return ns / 10**9
    except OverflowError:
        return math.inf


def _native_windows(scores: Scores) -> dict[int, int]:
    return {i: w for i, w in scores.model.native_sliding.items() if 0 <= i < scores.num_layers}


def _dp(values: list[list[float]], H: int, times: dict[str, Any], kinds, most: int, max_mixed: int,
        latency_budget: float | None) -> tuple[list[int], int]:
    """Best per-layer head counts (see the module docstring) and their latency in ns (0 without `times`).

    values[l][k]: score of choosable layer l keeping k heads. States map (heads, mixed) to partial plans
    (score, -latency, choices); a plan is better when that tuple is larger (choices: more heads on lower layers).
    """
    per_k = times.get("k", [0] * (H + 1))
    budget = None if latency_budget is None else _ns(latency_budget) - times.get("native", 0)
    cheapest = min(per_k[k] for k in kinds)
    states: dict[tuple[int, int], list[tuple[float, int, tuple[int, ...]]]] = {(0, 0): [(0.0, 0, ())]}
    for layer, vals in enumerate(values):
        rest = cheapest * (len(values) - layer - 1)
        nxt: dict[tuple[int, int], list[tuple[float, int, tuple[int, ...]]]] = {}
        for (t, j), front in states.items():
            for k in kinds:
                mixed = j + (0 < k < H)
                if t + k > most or mixed > max_mixed:
                    continue
                for score, neg_lat, picks in front:
                    lat = -neg_lat + per_k[k]
                    if budget is not None and lat + rest > budget:
                        continue
                    _keep(nxt.setdefault((t + k, mixed), []), (score + vals[k], -lat, (*picks, k)), budget is not None)
        states = nxt
    if not states:
        smallest = _fastest(len(values), H, per_k, kinds, most, max_mixed) + times.get("native", 0)
        raise ValueError(f"latency_budget={latency_budget} s is infeasible: the smallest predicted decode latency "
                         f"within the other budgets is {_seconds(smallest):.6g} s")
    t = max(t for t, _ in states)
    best = max(e for (tt, _), front in states.items() if tt == t for e in front)
    return list(best[2]), -best[1] + times.get("native", 0)


def _keep(front: list[tuple[float, int, tuple[int, ...]]], entry: tuple[float, int, tuple[int, ...]],
          pareto: bool) -> None:
    """Add `entry` to a state's partial plans: the single best one, or (pareto) those not dominated in
    (score, -latency); among equal scores and latencies only the best (by the tuple order) stays."""
    if not pareto:
        if not front:
            front.append(entry)
        elif entry > front[0]:
            front[0] = entry
        return
    if any(e[0] >= entry[0] and e[1] >= entry[1] and e >= entry for e in front):
        return
    front[:] = [e for e in front if not (entry[0] >= e[0] and entry[1] >= e[1])] + [entry]


def _fastest(n: int, H: int, per_k: list[int], kinds, most: int, max_mixed: int) -> int:
    """Smallest latency (ns) of n choosable layers with at most `most` retrieval heads and `max_mixed` mixed layers."""
    best = {(0, 0): 0}
    for _ in range(n):
        nxt: dict[tuple[int, int], int] = {}
        for (t, j), lat in best.items():
            for k in kinds:
                key = (t + k, j + (0 < k < H))
                if key[0] <= most and key[1] <= max_mixed:
                    nxt[key] = min(nxt.get(key, lat + per_k[k]), lat + per_k[k])
        best = nxt
    return min(best.values())
