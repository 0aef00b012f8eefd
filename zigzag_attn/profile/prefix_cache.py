"""Measure many layer-exclusive plans on one group of samples, reusing hidden states wherever plans share a prefix.

With no KV cache, a layer's input depends only on the modes of the layers before it: the input of layer `x` under
modes `m` is fixed by `m[:x]`. `PrefixCache` holds such inputs, keyed by `(m[:x], x)` (one `[batch, seq, hidden]`
tensor per batch), and measures a plan by running only the layers after the deepest one whose input it holds.

`robust_scores`' greedy elimination gains over `suffix.Suffix`, which reran each round's base plan:
- the next round's base is this round's chosen trial, whose inputs at the next candidates were held, so a base
  is run only as far as a layer nothing held reaches (usually not at all);
- a trial that streams layer `j` below the layer `c` the base changed at starts at `c`, from the inputs its own
  trial of the round before held there;
- full attention's inputs are held at every layer as its loss is measured, and each ablation trial that may become
  a greedy candidate holds its inputs at the lowest-scored layers after it, where the greedy's first rounds stream:
  its trials start there until a layer below them is streamed.
`prune` keeps only what later rounds can use. As in `Suffix`, the first partial measurement is checked against a
whole forward, and a disagreement makes every later one whole (`.exact` turns False).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable, Sequence

import torch

from ..data.passkey import Sample
from ..plan import RETRIEVAL, STREAMING, Plan
from ..runtime import patched
from .measure import Measurement, _batches, batch
from .suffix import Suffix, grabber

Modes = tuple[str, ...]


class PrefixCache(Suffix):
    """See the module docstring. plan_for(modes) -> the Plan to patch with (None: the unpatched model)."""

    def __init__(self, model, samples: list[Sample], plan_for: Callable[[Sequence[str]], Plan | None],
                 batch_size: int = 1, check: bool = True):
        super().__init__(model, samples, batch_size, check)
        self.plan_for = plan_for
        self.store: dict[tuple[Modes, int], list[torch.Tensor]] = {}  # (modes before x, x) -> inputs per batch

    def held(self, modes: Sequence[str], upto: int | None = None) -> int:
        """The deepest layer `x <= upto` whose input under `modes` is held; 0 (the embeddings) when none is."""
        modes = tuple(modes)
        return max((x for p, x in self.store if (upto is None or x <= upto) and p == modes[:x]), default=0)

    @torch.no_grad()
    def fill(self, modes: Sequence[str], layers: Iterable[int]) -> None:
        """Hold the inputs of `layers` under `modes`, running from the deepest held input below the first missing
        one only as far as the last missing one (no logits)."""
        modes = tuple(modes)
        missing = sorted(x for x in set(layers) if x > 0 and (modes[:x], x) not in self.store)
        if missing and self.exact:
            start = self.held(modes, upto=missing[0])
            self._span(modes, start, missing[-1], missing, logits=False)

    @torch.no_grad()
    def measure(self, modes: Sequence[str], hold: Iterable[int] = ()) -> Measurement:
        """The loss and answers of `modes`, run from the deepest held input; the inputs of `hold` are kept."""
        modes = tuple(modes)
        if not self.exact:
            return self._span(modes, 0, None, [], logits=True)
        start = self.held(modes)
        got = self._span(modes, start, None, [x for x in set(hold) if x > start], logits=True)
        if not start:  # a whole forward already
            return got
        plan = self.plan_for(modes)
        with patched(self.model, plan) if plan is not None else contextlib.nullcontext():
            checked = self._checked(got, start)
        if not self.exact:
            self.store = {}
        return checked

    def prune(self, base: Sequence[str], keep: Collection[int] | None = None) -> None:
        """Keep only inputs a later plan can use: later plans stream every layer `base` streams and, below any held
        layer, at most one more (the trial of a round); with `keep`, that one more is among the layers of `keep`."""
        base = tuple(base)

        def useful(prefix: Modes, x: int) -> bool:
            extra = [i for i in range(x) if prefix[i] != base[i]]
            return len(extra) <= 1 and all(base[i] == RETRIEVAL and prefix[i] == STREAMING
                                           and (keep is None or i in keep) for i in extra)

        self.store = {k: v for k, v in self.store.items() if useful(*k)}

    def release(self) -> None:
        super().release()
        self.store = {}

    def _span(self, modes: Modes, start: int, stop: int | None, hold: list[int], logits: bool):
        """Run every batch under `modes` from layer `start` (up to layer `stop`'s input when given), holding the
        inputs of `hold`; the Measurement when `logits`."""
        inputs = iter(self.store[(modes[:start], start)]) if start else None
        grabbed: list[dict[int, torch.Tensor]] = []

        def forward(ids, mask, keep):
            got: dict[int, torch.Tensor] = {}
            layers = self.decoder.layers
            handles = [layers[x].register_forward_pre_hook(grabber(got, x), with_kwargs=True) for x in hold]
            if stop is not None:  # after the grab: the rest of the forward is not needed
                handles.append(layers[stop].register_forward_pre_hook(_stop))
            try:
                out = self._from(start, ids if inputs is None else next(inputs), mask, keep)
            except _Stopped:
                out = None
            finally:
                for h in handles:
                    h.remove()
            grabbed.append(got)
            return out

        plan = self.plan_for(modes)
        with patched(self.model, plan) if plan is not None else contextlib.nullcontext():
            if logits:
                result = self._run(forward)
            else:
                for rows in _batches([len(s) for s in self.samples], self.batch_size):
                    ids, _, mask = batch([self.samples[i] for i in rows], self.device)
                    forward(ids, mask, 1)
                result = None
        for x in hold:
            self.store[(modes[:x], x)] = [g[x] for g in grabbed]
        return result


class _Stopped(Exception):
    """Raised by a pre-hook on the layer after the last one whose input a `fill` needs."""


def _stop(module, args):
    raise _Stopped
