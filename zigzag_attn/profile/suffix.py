"""Measure plans that differ from a base plan only from some layer on, by running only those layers.

Layers before `l` compute the same hidden states under every plan that agrees with the base there (they see the
same inputs and keep the same kind of attention), so a trial plan that first differs at `l` needs only layers
`l..` run on the base's layer-`l` inputs. The ablation (base: full attention; trial: layer `l` streaming) and the
greedy elimination (base: the plan so far; trial: one more layer streaming) spend about half their forwards
recomputing such prefixes.

`Suffix(model, samples, batch_size, check=True)`: `.base(plan, layers)` measures `plan` with a normal forward and
keeps the inputs of `layers` (one `[batch, seq, hidden]` tensor per batch and layer); `.trial(plan, l)` measures
`plan` from layer `l` on. The model's own forward runs either way: for a trial, the decoder's `layers` list (and,
for models that index it by position, `config.layer_types`) is cut to `l..` for the call and `inputs_embeds`
carries the kept hidden states.

With `check`, the first trial is also measured with a whole forward; if the two disagree, `Suffix` says so once
and measures every later trial whole (`.exact` turns False), so an architecture whose forward does more between
its layers cannot change a loss. Callers that make several `Suffix` for one model check the first only.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from ..data.passkey import Sample
from ..model_info import input_device
from ..plan import Plan
from ..runtime import patched
from .measure import Measurement, batched

TOLERANCE = 1e-3  # relative; the same kernels on the same inputs agree far closer than this


def usable(model, samples: list[Sample] = (), layers: int = 0, share: float = 0.3) -> bool:
    """Whether the decoder is one list of layers on one device, and keeping the inputs of `layers` layers for
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


class Suffix:
    """See the module docstring. samples: one group, batched as `measure` batches them."""

    def __init__(self, model, samples: list[Sample], batch_size: int = 1, check: bool = True):
        self.model, self.samples = model, samples
        self.decoder = model.get_decoder()
        self.device = input_device(model)
        self.batch_size = batch_size
        self.kept: list[dict[int, torch.Tensor]] = []  # per batch: layer -> its input hidden states
        self.checked = not check  # the first trial is compared with a whole forward (once per model is enough)
        self.exact = True

    @torch.no_grad()
    def base(self, plan: Plan | None, layers) -> Measurement:
        """`plan` measured with full forwards (None: full attention), keeping the inputs of `layers`."""
        self.kept = []
        with patched(self.model, plan) if plan is not None else contextlib.nullcontext():
            return self._run(lambda ids, mask, keep: self._full(ids, mask, keep, set(layers)))

    @torch.no_grad()
    def trial(self, plan: Plan, start: int) -> Measurement:
        """`plan` measured from layer `start` on; it must agree with the last base plan before `start`."""
        if not self.kept or any(start not in k for k in self.kept):
            raise ValueError(f"layer {start}'s inputs were not kept by the last base() call")
        with patched(self.model, plan):
            if not self.exact:
                return self._run(lambda ids, mask, keep: self._full(ids, mask, keep, set()))
            batches = iter(self.kept)
            got = self._run(lambda ids, mask, keep: self._from(start, next(batches)[start], mask, keep))
            return self._checked(got, start)

    def _checked(self, got: Measurement, start: int) -> Measurement:
        """`got` (run from layer `start`, under the patch in force), compared once with a whole forward: on a
        disagreement, says so, turns `.exact` False and gives the whole forward's measurement instead."""
        if self.checked:
            return got
        self.checked = True
        full = self._run(lambda ids, mask, keep: self._full(ids, mask, keep, set()))
        if abs(full.loss - got.loss) > TOLERANCE * max(1.0, abs(full.loss)) or full.correct != got.correct:
            warnings.warn(f"{type(self.model).__name__}: running layers {start}.. alone gave loss {got.loss:.6f} "
                          f"with {sum(got.correct)} of {len(got.correct)} answers right where the whole forward gives "
                          f"{full.loss:.6f} with {sum(full.correct)}; measuring whole forwards from here on (slower, "
                          "same results)", stacklevel=3)
            self.exact = False
            return full
        return got

    def release(self) -> None:
        """Drop the kept hidden states."""
        self.kept = []

    def _run(self, forward) -> Measurement:
        return batched(self.samples, self.batch_size, self.device, forward)

    def _full(self, ids, mask, keep: int, layers: set[int]) -> torch.Tensor:
        kept: dict[int, torch.Tensor] = {}
        handles = [self.decoder.layers[i].register_forward_pre_hook(grabber(kept, i), with_kwargs=True)
                   for i in layers]
        try:
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
        finally:
            for h in handles:
                h.remove()
        if layers:
            self.kept.append(kept)
        return logits

    def _from(self, start: int, x: torch.Tensor, mask, keep: int) -> torch.Tensor:
        """Logits of the last `keep` positions, running layers `start..` on `x`: input ids `[batch, seq]` (a whole
        forward), or layer `start`'s input `[batch, seq, hidden]` (the decoder's list, and `layer_types`, cut for
        the call)."""
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


def grabber(kept: dict[int, torch.Tensor], layer: int):
    """A forward pre-hook (with kwargs) that keeps a copy of `layer`'s input hidden states in `kept[layer]`."""
    def hook(module, args, kwargs):
        kept[layer] = (args[0] if args else kwargs["hidden_states"]).clone()
    return hook
