"""Measured refinement: choose streaming layers one at a time by the model's real answer loss.

Greedy elimination: start from the given retrieval layers and, while more than `retrieval_layers` remain, make
streaming the one whose loss (on calibration samples, with the layers already chosen streaming) is lowest.
`candidates` limits each round to that many layers with the lowest prior scores, trading search for time.
`replicas` (copies of the model, e.g. on other GPUs: `profile.replicas.make_replicas`) share each round's
candidates, one thread per copy; the choice and every loss are those of the serial search.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm.auto import tqdm

from ..data.passkey import Sample
from ..plan import RETRIEVAL, STREAMING, Plan
from .measure import measure
from .suffix import Suffix, usable


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
    models = [model, *(replicas or [])]
    if len({id(m) for m in models}) != len(models):
        raise ValueError("replicas must be distinct copies of the model (copy.deepcopy), not the model itself")
    modes = list(plan.modes)
    history = []
    start = time.perf_counter()
    rounds = len(kept) - retrieval_layers
    bar = tqdm(total=rounds, desc="refining", disable=not progress)
    run = _Runner(models, samples, batch_size)
    reuse, checked = not replicas, False  # one model: each trial runs from its layer on (suffix.py), checked once
    try:
        for _ in range(rounds):
            pool = kept if candidates is None or scores is None else sorted(kept, key=lambda i: float(scores[i]))[
                :candidates]
            trials = [Plan.from_layers([STREAMING if j == i else m for j, m in enumerate(modes)], sink=plan.sink,
                                       window=plan.window, model=plan.model) for i in pool]
            if reuse and usable(model, samples, len(pool)):
                suffix = Suffix(model, samples, batch_size, check=not checked)
                suffix.base(Plan.from_layers(modes, sink=plan.sink, window=plan.window, model=plan.model), pool)
                losses = [suffix.trial(t, i).loss for t, i in zip(trials, pool, strict=True)]
                suffix.release()
                checked, reuse = True, suffix.exact  # after a disagreement (it warned): whole forwards
            else:
                losses = run(trials)
            best = min(range(len(pool)), key=losses.__getitem__)  # the first of equal losses, as a serial loop
            layer, loss = pool[best], losses[best]
            modes[layer] = STREAMING
            kept.remove(layer)
            history.append({"streaming": layer, "loss": loss})
            bar.update()
            bar.set_postfix(layer=layer, loss=f"{loss:.3f}")
    finally:
        bar.close()
        run.close()
    provenance = {**plan.provenance, "solver": "greedy-measured", "refine": {
        "retrieval_layers": retrieval_layers, "candidates": candidates, "samples": len(samples),
        "tokens": max((len(s) for s in samples), default=0), "history": history,
        "seconds": round(time.perf_counter() - start, 1)}}
    return Plan.from_layers(modes, sink=plan.sink, window=plan.window, model=plan.model, provenance=provenance)


class _Runner:
    """Losses of trial plans, split round-robin over the model copies (trial k on copy k % n)."""

    def __init__(self, models: list, samples: list[Sample], batch_size: int):
        self.models, self.samples, self.batch_size = models, samples, batch_size
        self.pool = ThreadPoolExecutor(len(models)) if len(models) > 1 else None
        self.first = threading.Lock()  # a copy's first evaluation compiles kernels: torch.compile is not thread-safe
        self.warm = [False] * len(models)

    def __call__(self, trials: list[Plan]) -> list[float]:
        if self.pool is None:
            return self._work(0, trials)
        n, losses = len(self.models), [0.0] * len(trials)
        for w, part in enumerate(self.pool.map(lambda w: self._work(w, trials[w::n]), range(n))):
            losses[w::n] = part
        return losses

    def _work(self, w: int, trials: list[Plan]) -> list[float]:
        model, out = self.models[w], []
        device = next(model.parameters()).device
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            for trial in trials:
                with self.first if self.pool is not None and not self.warm[w] else contextlib.nullcontext():
                    out.append(measure(model, self.samples, trial, batch_size=self.batch_size).loss)
                self.warm[w] = True
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
