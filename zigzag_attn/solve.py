"""Solvers: turn `Scores` into a `Plan`.

`solve` makes a layer-exclusive plan (ZigzagAttention): whole layers are retrieval or streaming.
`solve_heads` makes a mixed plan (DuoAttention): individual KV heads are retrieval or streaming.

Layers where the model already uses its own sliding window (`scores.model.native_sliding`) are not choosable:
they are always "retrieval" in the plan and are never counted toward a number of retrieval layers or heads.
Every KV head of a choosable layer costs the same KV cache, so `plan.kv_fraction` depends only on how many
layers (heads) are retrieval, and the best plan for a size is simply the top-scoring layers (heads).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from numbers import Integral, Real
from typing import Any

from zigzag_attn.plan import RETRIEVAL, STREAMING, Plan, check_kv_dtype
from zigzag_attn.scores import Scores


def solve(scores: Scores, *, retrieval_layers: int | None = None, retrieval_ratio: float | None = None,
          kv_budget: float | None = None, context_length: int | None = None, sink: int = 64, window: int = 256,
          pin_retrieval: Iterable[int] = (), pin_streaming: Iterable[int] = (), kv_dtype: str = "model") -> Plan:
    """Layer-exclusive plan maximising the sum of `scores.layers` (shape `[num_layers]`) over retrieval layers.

    Give exactly one size constraint; `n` below is the number of choosable (non-native-sliding) layers:
      * `retrieval_layers=k`: exactly `k` retrieval layers among the choosable ones, 0 <= k <= n.
      * `retrieval_ratio=r`, 0 <= r <= 1: `k = floor(r * n + 0.5)` (halves round up, unlike Python's `round`).
      * `kv_budget=f` with `context_length=N`: the largest `k` whose plan has `plan.kv_fraction(N) <= f`
        (native sliding layers are counted in that fraction through `scores.model`).
    Layers in `pin_retrieval` are always retrieval and those in `pin_streaming` always streaming; pinned
    choosable layers count toward `k`. Pinning a native sliding layer as retrieval is a no-op; as streaming it
    is an error. The result is exactly optimal; ties in score go to the lower layer index.
    kv_dtype: how retrieval KV is stored ("model" or "fp8": about half the bytes, so a budget buys more layers).
    """
    if not isinstance(scores, Scores):
        raise TypeError(f"scores must be a Scores; got {type(scores).__name__}")
    check_kv_dtype(kv_dtype)
    given = [name for name, v in (("retrieval_layers", retrieval_layers), ("retrieval_ratio", retrieval_ratio),
                                  ("kv_budget", kv_budget)) if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of retrieval_layers, retrieval_ratio or kv_budget; got "
                         + (", ".join(given) if given else "none"))
    if context_length is not None and kv_budget is None:
        raise ValueError("context_length is only used with kv_budget")

    num_layers = scores.num_layers
    native = _native_layers(scores)
    choosable = [i for i in range(num_layers) if i not in native]
    n = len(choosable)
    pin_r, pin_s = _pins(pin_retrieval, "pin_retrieval", num_layers), _pins(pin_streaming, "pin_streaming", num_layers)
    if pin_r & pin_s:
        raise ValueError(f"layers {sorted(pin_r & pin_s)} are pinned both retrieval and streaming")
    if pin_s & native:
        bad = sorted(pin_s & native)
        raise ValueError(f"layers {bad} already use the model's own sliding window and must stay retrieval; "
                         "they cannot be pinned streaming")
    pin_r -= native
    lo, hi = len(pin_r), n - len(pin_s)  # feasible numbers of retrieval layers given the pins
    layer_scores = [float(x) for x in scores.layers.tolist()]
    free = sorted((i for i in choosable if i not in pin_r and i not in pin_s), key=lambda i: (-layer_scores[i], i))

    def build(k: int, constraint: dict[str, Any] | None = None) -> Plan:
        chosen = pin_r | set(free[:k - len(pin_r)]) | native
        modes = [RETRIEVAL if i in chosen else STREAMING for i in range(num_layers)]
        provenance = {"method": scores.method, "solver": "topk", "constraint": constraint or {},
                      "layer_scores": layer_scores}
        return Plan.from_layers(modes, sink=sink, window=window, model=scores.model, provenance=provenance,
                                kv_dtype=kv_dtype)

    pins_json = {"pin_retrieval": sorted(pin_r), "pin_streaming": sorted(pin_s)}
    if kv_budget is not None:
        f, N = _budget_args(kv_budget, context_length)
        what = f"only the pinned retrieval layers {sorted(pin_r)}" if pin_r else "every choosable layer streaming"
        k = _largest_within(build, lo, hi, f, N, what=what)
        constraint = {"kv_budget": f, "context_length": N, "retrieval_layers": k,
                      "kv_fraction": build(k).kv_fraction(N), **pins_json}
        return build(k, constraint)
    if retrieval_ratio is not None:
        r = retrieval_ratio
        if isinstance(r, bool) or not isinstance(r, Real) or not 0 <= r <= 1:
            raise ValueError(f"retrieval_ratio must be a number in [0, 1]; got {r!r}")
        k = math.floor(float(r) * n + 0.5)
        constraint = {"retrieval_ratio": float(r)}
        what = f"retrieval_ratio={r} of {n} choosable layers gives {k} retrieval layers"
    else:
        k = retrieval_layers
        if isinstance(k, bool) or not isinstance(k, Integral) or not 0 <= k <= n:
            raise ValueError(f"retrieval_layers must be an integer in [0, {n}] (the choosable layers: {num_layers} "
                             f"minus {len(native)} native sliding); got {k!r}")
        k = int(k)
        constraint = {}
        what = f"retrieval_layers={k}"
    if k < lo:
        raise ValueError(f"{what}, but {lo} layers are pinned retrieval: {sorted(pin_r)}")
    if k > hi:
        raise ValueError(f"{what}, but only {hi} choosable layers are not pinned streaming")
    return build(k, {**constraint, "retrieval_layers": k, **pins_json})


def solve_heads(scores: Scores, *, kv_budget: float, context_length: int, sink: int = 64, window: int = 256,
                kv_dtype: str = "model") -> Plan:
    """Mixed (DuoAttention-style) plan from `scores.heads` (shape `[num_layers, num_kv_heads]`).

    Keeps as retrieval the largest number `m` of KV heads of choosable layers such that
    `plan.kv_fraction(context_length) <= kv_budget`, taking the top-`m` heads by score over the whole model
    (a global quantile; ties go to the lower layer, then the lower head). Every head of a native sliding layer
    is retrieval and is not counted in `m`. kv_dtype as in `solve`.
    """
    if not isinstance(scores, Scores):
        raise TypeError(f"scores must be a Scores; got {type(scores).__name__}")
    check_kv_dtype(kv_dtype)
    f, N = _budget_args(kv_budget, context_length)
    native = _native_layers(scores)
    head_scores = [[float(x) for x in row] for row in scores.heads.tolist()]
    ranked = sorted(((layer, h) for layer in range(scores.num_layers) if layer not in native
                     for h in range(scores.num_kv_heads)), key=lambda lh: (-head_scores[lh[0]][lh[1]], lh))

    def build(m: int, constraint: dict[str, Any] | None = None) -> Plan:
        mask = [[layer in native] * scores.num_kv_heads for layer in range(scores.num_layers)]
        for layer, h in ranked[:m]:
            mask[layer][h] = True
        provenance = {"method": scores.method, "solver": "topk-heads", "constraint": constraint or {},
                      "head_scores": head_scores}
        return Plan.from_heads(mask, sink=sink, window=window, model=scores.model, provenance=provenance,
                               kv_dtype=kv_dtype)

    m = _largest_within(build, 0, len(ranked), f, N, what="every choosable head streaming")
    constraint = {"kv_budget": f, "context_length": N, "retrieval_heads": m, "kv_fraction": build(m).kv_fraction(N)}
    return build(m, constraint)


def _native_layers(scores: Scores) -> set[int]:
    native = scores.model.native_sliding if scores.model else {}
    return {i for i in native if 0 <= i < scores.num_layers}


def _pins(pins: Iterable[int], name: str, num_layers: int) -> set[int]:
    if isinstance(pins, (str, bytes)) or not isinstance(pins, Iterable):
        raise TypeError(f"{name} must be a collection of layer indices; got {pins!r}")
    out = set()
    for p in pins:
        if isinstance(p, bool) or not isinstance(p, Integral) or not 0 <= p < num_layers:
            raise ValueError(f"{name}: layer {p!r} is out of range; the model has layers 0..{num_layers - 1}")
        out.add(int(p))
    return out


def _budget_args(kv_budget: Any, context_length: Any) -> tuple[float, int]:
    if isinstance(kv_budget, bool) or not isinstance(kv_budget, Real) or math.isnan(kv_budget):
        raise ValueError(f"kv_budget must be a number (a fraction of the full KV cache); got {kv_budget!r}")
    if context_length is None:
        raise ValueError("kv_budget needs context_length: the KV fraction a plan saves depends on the context length")
    if isinstance(context_length, bool) or not isinstance(context_length, Integral) or context_length < 1:
        raise ValueError(f"context_length must be an integer >= 1; got {context_length!r}")
    return float(kv_budget), int(context_length)


def _largest_within(build: Callable[[int], Plan], lo: int, hi: int, f: float, N: int, *, what: str) -> int:
    """Largest k in [lo, hi] with build(k).kv_fraction(N) <= f; the fraction is non-decreasing in k."""
    smallest = build(lo).kv_fraction(N)
    if smallest > f:
        raise ValueError(f"kv_budget={f} is infeasible at context_length={N}: even with {what} the KV fraction is "
                         f"{smallest:.6g}")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if build(mid).kv_fraction(N) <= f:
            lo = mid
        else:
            hi = mid - 1
    return lo
