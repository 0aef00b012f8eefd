"""Measured refinement: choose streaming layers one at a time by the model's real answer loss.

Greedy elimination (`search.Search` with the `MeanLoss` objective): start from the given retrieval layers and,
while more than `retrieval_layers` remain, make streaming the one whose loss (on calibration samples, with the
layers already chosen streaming) is lowest. `candidates` limits each round to that many layers with the lowest
prior scores, trading search for time. `replicas` (copies of the model, e.g. on other GPUs:
`profile.replicas.make_replicas`) share each round's candidates, one thread per copy; the choice and every loss are
those of the serial search.
"""

from __future__ import annotations

import time

from ..data.passkey import Sample
from ..plan import RETRIEVAL, STREAMING, Plan
from .search import MeanLoss, Search


def refine(plan: Plan, model, samples: list[Sample], *, retrieval_layers: int, scores=None,
           candidates: int | None = None, batch_size: int = 1, progress: bool = True, replicas=None) -> Plan:
    """A layer-exclusive plan with `retrieval_layers` retrieval layers, greedily from `plan`'s retrieval set.

    plan: the starting plan (e.g. all retrieval, or a `solve` result with more retrieval layers than wanted).
    scores: optional `[num_layers]` prior importance used to pick each round's `candidates`.
    replicas: extra copies of `model` (each on one device, not patched) that evaluate candidates in parallel.
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
    replicas = list(replicas or [])
    if len({id(m) for m in [model, *replicas]}) != len(replicas) + 1:
        raise ValueError("replicas must be distinct copies of the model (copy.deepcopy), not the model itself")
    start = time.perf_counter()
    search = Search(model, {"samples": samples}, plan.modes, kept, retrieval_layers, sink=plan.sink,
                    window=plan.window, prior=scores if candidates is not None else None, candidates=candidates,
                    batch_size=batch_size, replicas=replicas)
    found = search.run(MeanLoss(), desc="refining", progress=progress)
    modes = list(plan.modes)
    for layer, _ in found.history:
        modes[layer] = STREAMING
    provenance = {**plan.provenance, "solver": "greedy-measured", "refine": {
        "retrieval_layers": retrieval_layers, "candidates": candidates, "samples": len(samples),
        "tokens": max((len(s) for s in samples), default=0),
        "history": [{"streaming": layer, "loss": loss} for layer, loss in found.history],
        "seconds": round(time.perf_counter() - start, 1)}}
    return Plan.from_layers(modes, sink=plan.sink, window=plan.window, model=plan.model, provenance=provenance)
