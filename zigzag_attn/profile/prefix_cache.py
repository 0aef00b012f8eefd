"""Measure many layer-exclusive plans on one group of samples, reusing hidden states wherever plans share a prefix.

With no KV cache, a layer's input depends only on the modes of the layers before it: the input of layer `x` under
modes `m` is fixed by `m[:x]`. `PrefixCache` holds such inputs, keyed by `(m[:x], x)` (one `[batch, seq, hidden]`
tensor per batch), and measures a plan by running only the layers after the deepest one whose input it holds. The
model's own forward runs either way: the decoder's `layers` list (and, for models that index it by position,
`config.layer_types`) is cut to `x..` for the call and `inputs_embeds` carries the held hidden states.

The greedy search (`search.py`) gains so, over running every trial whole:
- a round's base plan holds its inputs at the round's candidates (`fill`: run only as far as the last one, no
  logits), and each trial, which first differs from the base at its own layer, runs from there;
- kept across rounds, the next round's base is this round's chosen trial, whose inputs at the next candidates were
  held (`measure(..., hold)`), so a base is run only as far as a layer nothing held reaches (usually not at all);
  a trial that streams layer `j` below the layer `c` the base changed at starts at `c`, from the inputs its own
  trial of the round before held there;
- full attention's inputs are held at every layer as its loss is measured, and each ablation trial that may become
  a greedy candidate holds its inputs at the lowest-scored layers after it, where the greedy's first rounds stream:
  its trials start there until a layer below them is streamed.
`prune` keeps only what later rounds can use; `usable` says whether the held inputs fit in memory at all.

With `check`, the first partial measurement is also made with a whole forward; if the two disagree (an architecture
whose forward does more between its layers), it says so once, holds nothing from then on and measures every later
plan whole (`.exact` turns False), so no loss can change. Callers with several caches of one model check the first.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Collection, Iterable, Sequence

import torch

from ..data.passkey import Sample
from ..model_info import input_device
from ..plan import RETRIEVAL, STREAMING, Plan
from ..runtime import patched
from .measure import Measurement, _batches, batch, batched

Modes = tuple[str, ...]
TOLERANCE = 1e-3  # relative; the same kernels on the same inputs agree far closer than this


def usable(model, samples: list[Sample] = (), layers: int = 0, share: float = 0.3) -> bool:
    """Whether the decoder is one list of layers on one device, and holding the inputs of `layers` layers for
    `samples` takes at most `share` of the free memory there (else whole forwards: slower, the same losses)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    devices = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    if not all(isinstance(s, Sample) for s in samples):  # e.g. a caller's stand-ins: their own measurement
        return False
    if decoder is None or not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList) or len(devices) > 1:
        return False
    param = next(model.parameters())
    hidden = model.get_input_embeddings().weight.shape[1]
    need = sum(len(s) for s in samples) * hidden * param.element_size() * layers
    return need <= share * _free(param.device)


def _free(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not Linux: no estimate, so no limit
        return float("inf")


class PrefixCache:
    """See the module docstring. samples: one group, batched as `measure` batches them; plan_for(modes) -> the Plan
    to patch with (None: the unpatched model)."""

    def __init__(self, model, samples: list[Sample], plan_for: Callable[[Sequence[str]], Plan | None],
                 batch_size: int = 1, check: bool = True):
        self.model, self.samples, self.plan_for, self.batch_size = model, samples, plan_for, batch_size
        self.decoder = model.get_decoder()
        self.device = input_device(model)
        self.store: dict[tuple[Modes, int], list[torch.Tensor]] = {}  # (modes before x, x) -> inputs per batch
        self.checked = not check  # the first partial measurement is compared with a whole forward
        self.exact = True

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
        if not start or self.checked:  # a whole forward already, or checked before
            return got
        self.checked = True
        with self._patched(modes):
            full = self._run(lambda ids, mask, keep: self._from(0, ids, mask, keep))
        if abs(full.loss - got.loss) > TOLERANCE * max(1.0, abs(full.loss)) or full.correct != got.correct:
            warnings.warn(f"{type(self.model).__name__}: running layers {start}.. alone gave loss {got.loss:.6f} "
                          f"with {sum(got.correct)} of {len(got.correct)} answers right where the whole forward gives "
                          f"{full.loss:.6f} with {sum(full.correct)}; measuring whole forwards from here on (slower, "
                          "same results)", stacklevel=2)
            self.exact, self.store = False, {}
            return full
        return got

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
        """Drop every held input."""
        self.store = {}

    def _patched(self, modes: Modes):
        plan = self.plan_for(modes)
        return patched(self.model, plan) if plan is not None else contextlib.nullcontext()

    def _run(self, forward) -> Measurement:
        return batched(self.samples, self.batch_size, self.device, forward)

    def _span(self, modes: Modes, start: int, stop: int | None, hold: list[int], logits: bool):
        """Run every batch under `modes` from layer `start` (up to layer `stop`'s input when given), holding the
        inputs of `hold`; the Measurement when `logits`."""
        inputs = iter(self.store[(modes[:start], start)]) if start else None
        grabbed: list[dict[int, torch.Tensor]] = []

        def forward(ids, mask, keep):
            got: dict[int, torch.Tensor] = {}
            layers = self.decoder.layers
            handles = [layers[x].register_forward_pre_hook(_grabber(got, x), with_kwargs=True) for x in hold]
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

        with self._patched(modes):
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

    def _from(self, start: int, x: torch.Tensor, mask, keep: int) -> torch.Tensor:
        """Logits `[batch, keep, vocab]` of the last `keep` positions, running layers `start..` on `x`: input ids
        `[batch, seq]` (a whole forward), or layer `start`'s input `[batch, seq, hidden]` (the decoder's list, and
        `layer_types`, cut for the call)."""
        if not x.is_floating_point():
            return self.model(input_ids=x, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
        decoder, config = self.decoder, self.decoder.config
        layers, types = decoder.layers, getattr(config, "layer_types", None)
        decoder.layers = torch.nn.ModuleList(list(layers)[start:])
        if types is not None:
            config.layer_types = list(types)[start:]
        try:
            return self.model(inputs_embeds=x, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
        finally:
            decoder.layers = layers
            if types is not None:
                config.layer_types = types


def _grabber(kept: dict[int, torch.Tensor], layer: int):
    """A forward pre-hook (with kwargs) that keeps a copy of `layer`'s input hidden states in `kept[layer]`."""
    def hook(module, args, kwargs):
        kept[layer] = (args[0] if args else kwargs["hidden_states"]).clone()
    return hook


class _Stopped(Exception):
    """Raised by a pre-hook on the layer after the last one whose input a `fill` needs."""


def _stop(module, args):
    raise _Stopped
