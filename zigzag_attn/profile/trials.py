"""The objective value of layer-mode lists on groups of samples, each plan measured once, as cheaply as memory allows.

A round of the greedy search (`search.py`) measures trial plans that each equal a base plan before their own layer.
`Trials.round` measures them in the cheapest way that fits:
- held (`held=True`: the caller found that every group's held inputs fit): one `PrefixCache` per group, kept across
  rounds; a trial runs only the layers after the deepest held input, holding its inputs at the layers of `hold`
  after its own. With `cut` and an objective that measuring more groups can only raise (`bounded`), best first:
  the trial whose value on its measured groups is lowest (the first given among equals, as `min` picks) measures
  its next group, until that trial has measured them all; no other can then be below it. So each other trial stops
  at its first group that puts it above the chosen trial (or level with it, given later): the least measured for
  the choice of measuring every group. The groups go largest term of the base plan first.
- one group at a time, where a round's inputs fit: a `PrefixCache` per group holds the base's inputs at the trials'
  layers for the round only, and each trial runs from its layer on;
- else whole forwards, split round-robin over the model copies when there are several (`replicas.py`).
The first partial measurement is checked against a whole forward (`prefix_cache.py`); after a disagreement every
later plan is measured whole (`.exact` turns False).
"""

from __future__ import annotations

import contextlib
import heapq
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from ..data.passkey import Sample
from ..plan import Plan
from .measure import Measurement, measure_groups
from .prefix_cache import Modes, PrefixCache, usable


class Trials:
    """See the module docstring. groups: `{name: samples}`; plan_for(modes) -> the Plan to patch with (None: the
    unpatched model); held: hold inputs across rounds (the caller checked they fit); replicas: model copies that
    share whole forwards. `objective` ({group: loss} -> value, lower is better; `bounded`: its value on some groups
    is at most its value on all) is set by the caller before `round` or `value` is asked."""

    def __init__(self, model, groups: Mapping[str, list[Sample]], plan_for: Callable[[Sequence[str]], Plan | None],
                 *, batch_size: int = 1, held: bool = False, replicas: Sequence = ()):
        self.model, self.groups, self.plan_for, self.batch_size = model, groups, plan_for, batch_size
        self.objective = None
        self.losses: dict[Modes, dict[str, float]] = {}  # plans measured on every group
        self.partial: dict[Modes, dict[str, float]] = {}  # trials cut short: some groups
        self.caches = {g: PrefixCache(model, s, plan_for, batch_size, check=k == 0)
                       for k, (g, s) in enumerate(groups.items())} if held else {}
        self.checked = held  # the first cache made checks its first partial measurement, once for all
        self.exact = True
        self.reused = held  # whether any trial ran from held inputs
        self.whole = _Whole([model, *replicas], groups, plan_for, batch_size)

    def measure(self, modes: Sequence[str], hold: Iterable[int] = ()) -> dict[str, Measurement]:
        """`modes` on every group (from held inputs, holding those of `hold`, when held), remembered."""
        if self.caches and self.exact:
            got = {g: c.measure(modes, hold) for g, c in self.caches.items()}
            self.exact = all(c.exact for c in self.caches.values())
        else:
            got = self.whole([modes])[0]
        self.losses[tuple(modes)] = {g: m.loss for g, m in got.items()}
        return got

    def value(self, modes: Sequence[str], bound: bool = False) -> float:
        """The objective of `modes` (measured whole if it was not yet); with `bound`, a trial that `round` cut short
        gives the lower bound that ruled it out instead."""
        key = tuple(modes)
        if bound and key not in self.losses and key in self.partial:
            return self.objective(self.partial[key])
        if key not in self.losses:
            self.measure(key)
        return self.objective(self.losses[key])

    def round(self, base: Sequence[str], trials: Mapping[int, Sequence[str]], *, hold: Sequence[int] = (),
              keep: Sequence[int] | None = None, cut: bool = False, bar=None) -> None:
        """Measure `trials` ({layer: modes}, each equal to `base` before its layer) not measured yet, for `value`.
        hold: layers at which each trial holds its inputs (those after its own; held only). keep: only other trials
        of these layers keep what they held (held only). bar (tqdm): advanced once per trial and group."""
        todo = {i: tuple(m) for i, m in trials.items() if tuple(m) not in self.losses}
        if not todo:
            return
        if self.caches and self.exact:
            self._held(tuple(base), trials, todo, hold, keep, cut, bar)
        elif (self.exact and len(self.whole.models) == 1
              and all(usable(self.model, s, len(todo)) for s in self.groups.values())):
            self._per_group(tuple(base), todo, bar)
        else:
            for m, got in zip(todo.values(), self.whole(list(todo.values())), strict=True):
                self.losses[m] = {g: x.loss for g, x in got.items()}
                if bar is not None:
                    bar.update(len(self.groups))

    def release(self) -> None:
        """Drop the held inputs and stop the copies' threads."""
        for cache in self.caches.values():
            cache.release()
        self.caches = {}
        self.whole.close()

    def _held(self, base: Modes, trials, todo: dict[int, Modes], hold, keep, cut: bool, bar) -> None:
        for cache in self.caches.values():
            cache.prune(base, keep)
            cache.fill(base, todo)
        got: dict[int, dict[str, float]] = {i: {} for i in todo}
        known = self.losses.get(base)  # the groups where the base is worst rule trials out first
        order = sorted(self.groups, key=lambda g: -self.objective({g: known[g]}) if known else 0.0)

        def step(i: int) -> float:  # trial i on its next group: its value on the groups so far
            g = next(g for g in order if g not in got[i])
            got[i][g] = self.caches[g].measure(todo[i], [x for x in hold if x > i]).loss
            self.exact = self.exact and self.caches[g].exact  # a fall-back holds from here on
            if bar is not None:
                bar.update()
            return self.objective(got[i])

        if cut and self.objective.bounded:
            # (value so far, place given): measured trials have every group, the others -inf until one
            heap = [(self.value(m) if tuple(m) in self.losses else -math.inf, k, i)
                    for k, (i, m) in enumerate(trials.items())]
            heapq.heapify(heap)
            while heap[0][2] in todo and len(got[heap[0][2]]) < len(self.groups):
                _, k, i = heap[0]
                heapq.heapreplace(heap, (step(i), k, i))
        else:
            for i in todo:
                while len(got[i]) < len(self.groups):
                    step(i)
        for i, r in got.items():
            if len(r) == len(self.groups):
                self.losses[todo[i]] = r
            elif r:
                self.partial[todo[i]] = r

    def _per_group(self, base: Modes, todo: dict[int, Modes], bar) -> None:
        got: dict[int, dict[str, float]] = {i: {} for i in todo}
        for g, samples in self.groups.items():  # one group's hidden states held at a time
            cache = PrefixCache(self.model, samples, self.plan_for, self.batch_size, check=not self.checked)
            cache.exact, self.checked, self.reused = self.exact, True, True
            cache.fill(base, todo)
            for i, m in todo.items():
                got[i][g] = cache.measure(m).loss
                if bar is not None:
                    bar.update()
            self.exact = self.exact and cache.exact  # a fall-back holds from here on
        for i, m in todo.items():
            self.losses[m] = got[i]


class _Whole:
    """Measurements of plans by whole forwards, split round-robin over the model copies (plan k on copy k % n)."""

    def __init__(self, models: list, groups: Mapping[str, list[Sample]], plan_for, batch_size: int):
        self.models, self.groups, self.plan_for, self.batch_size = models, groups, plan_for, batch_size
        self.pool = ThreadPoolExecutor(len(models)) if len(models) > 1 else None
        self.first = threading.Lock()  # a copy's first evaluation compiles kernels: torch.compile is not thread-safe
        self.warm = [False] * len(models)

    def __call__(self, plans: list[Sequence[str]]) -> list[dict[str, Measurement]]:
        if self.pool is None:
            return self._work(0, plans)
        n, out = len(self.models), [{}] * len(plans)
        for w, part in enumerate(self.pool.map(lambda w: self._work(w, plans[w::n]), range(n))):
            out[w::n] = part
        return out

    def _work(self, w: int, plans: list[Sequence[str]]) -> list[dict[str, Measurement]]:
        model, out = self.models[w], []
        device = next(model.parameters()).device
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            for modes in plans:
                with self.first if self.pool is not None and not self.warm[w] else contextlib.nullcontext():
                    out.append(measure_groups(model, self.groups, self.plan_for(modes), self.batch_size))
                self.warm[w] = True
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
