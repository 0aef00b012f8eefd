"""Measured refinement: choose streaming layers one at a time by the model's real answer loss.

Greedy elimination: start from the given retrieval layers and, while more than `retrieval_layers` remain, make
streaming the one whose loss (on calibration samples, with the layers already chosen streaming) is lowest.
`candidates` limits each round to that many layers with the lowest prior scores, trading search for time.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from ..data.passkey import Sample
from ..plan import RETRIEVAL, STREAMING, Plan
from .measure import measure


def refine(plan: Plan, model, samples: list[Sample], *, retrieval_layers: int, scores=None,
           candidates: int | None = None, batch_size: int = 1, progress: bool = True) -> Plan:
    """A layer-exclusive plan with `retrieval_layers` retrieval layers, greedily from `plan`'s retrieval set.

    plan: the starting plan (e.g. all retrieval, or a `solve` result with more retrieval layers than wanted).
    scores: optional `[num_layers]` prior importance used to pick each round's `candidates`.
    Pinned layers can be kept by giving a plan where they are already streaming. Native sliding layers stay.
    """
    if not plan.is_layer_exclusive:
        raise ValueError("refine works on layer-exclusive plans; this plan mixes heads within a layer")
    native = set(plan.model.native_sliding) if plan.model else set()
    kept = [i for i, m in enumerate(plan.modes) if m == RETRIEVAL and i not in native]
    if not 0 <= retrieval_layers <= len(kept):
        raise ValueError(f"retrieval_layers must be in [0, {len(kept)}] (the plan's choosable retrieval layers); "
                         f"got {retrieval_layers}")
    if candidates is not None and candidates < 1:
        raise ValueError(f"candidates must be >= 1; got {candidates}")
    modes = list(plan.modes)
    history = []
    start = time.perf_counter()
    rounds = len(kept) - retrieval_layers
    bar = tqdm(total=rounds, desc="refining", disable=not progress)
    for _ in range(rounds):
        pool = kept if candidates is None or scores is None else sorted(kept, key=lambda i: float(scores[i]))[
            :candidates]
        best = None
        for i in pool:
            trial = Plan.from_layers([STREAMING if j == i else m for j, m in enumerate(modes)], sink=plan.sink,
                                     window=plan.window, model=plan.model)
            loss = measure(model, samples, trial, batch_size=batch_size).loss
            if best is None or loss < best[1]:
                best = (i, loss)
        modes[best[0]] = STREAMING
        kept.remove(best[0])
        history.append({"streaming": best[0], "loss": best[1]})
        bar.update()
        bar.set_postfix(layer=best[0], loss=f"{best[1]:.3f}")
    bar.close()
    provenance = {**plan.provenance, "solver": "greedy-measured", "refine": {
        "retrieval_layers": retrieval_layers, "candidates": candidates, "samples": len(samples),
        "tokens": max((len(s) for s in samples), default=0), "history": history,
        "seconds": round(time.perf_counter() - start, 1)}}
    return Plan.from_layers(modes, sink=plan.sink, window=plan.window, model=plan.model, provenance=provenance)
