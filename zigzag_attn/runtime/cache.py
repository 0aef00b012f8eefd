"""KV cache for patched models: full layers grow, streaming layers keep only sink + recent window.

`ZigzagCache` is a transformers `DynamicCache` whose streaming (and mixed) layers are replaced by
bounded layers. Every streaming layer keeps the same token positions, so the cache decides once
per forward call (`begin`) which visible keys survive, and each layer applies that choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.utils import is_torchdynamo_compiling

from ..plan import MIXED, RETRIEVAL, STREAMING, Plan
from .quant import FP8Layer
from .step import Keep, Step, keep_rule


@dataclass
class SplitKV:
    """Keys (or values) of a mixed layer, split by KV head group.

    retrieval: `(batch, n_retrieval_heads, all_tokens, head_dim)`;
    streaming: `(batch, n_streaming_heads, visible, head_dim)`.
    """

    retrieval: torch.Tensor
    streaming: torch.Tensor


def head_split(row) -> tuple[list[int], list[int]]:
    """A mixed layer's KV heads from its plan row (True = retrieval): (retrieval heads, streaming heads)."""
    return [h for h, r in enumerate(row) if r], [h for h, r in enumerate(row) if not r]


class HeadGroup:
    """One group of a mixed layer's heads (KV or query): a slice when they are contiguous, else an index tensor.

    Call it on `(batch, heads, seq, head_dim)` to get `(batch, len(group), seq, head_dim)`. The index
    tensor has a fixed address, so a CUDA graph reads it in place instead of copying it in every step.
    """

    def __init__(self, heads: list[int], device: torch.device):
        self.span = (heads[0], heads[-1] + 1) if heads == list(range(heads[0], heads[-1] + 1)) else None
        self.index = None if self.span else torch.tensor(heads, device=device)
        if self.index is not None and not is_torchdynamo_compiling():
            torch._dynamo.mark_static_address(self.index)

    @property
    def device(self) -> torch.device | None:
        return None if self.index is None else self.index.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.span is not None:
            return x[:, self.span[0]: self.span[1]]
        return x.index_select(1, self.index)


def head_groups(retrieval: list[int], streaming: list[int], device) -> tuple[HeadGroup, HeadGroup]:
    """A mixed layer's retrieval and streaming KV head groups."""
    return HeadGroup(retrieval, device), HeadGroup(streaming, device)


def kv_nbytes(layers) -> int:
    """Bytes of keys and values held by cache layers (the two parts of mixed layers, and FP8 scales, counted)."""
    total = 0
    for layer in layers:
        for sub in (layer.full, layer.stream) if isinstance(layer, TwoPartLayer) else (layer,):
            if sub.is_initialized:
                parts = [getattr(sub, n, None) for n in ("keys", "values", "key_scale", "value_scale")]
                total += sum(t.numel() * t.element_size() for t in parts if t is not None)
    return total


class SinkWindowLayer(DynamicLayer):
    """Bounded layer: stores at most sink + window - 1 tokens between calls (sink + window during one)."""

    is_sliding = False  # masks for the model's full layers are sized from this layer too
    is_croppable = False

    def __init__(self, **kwargs):
        super().__init__()
        self.seen = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, step: Step | None = None, *args, **kwargs):
        """Append `(batch, heads, q_len, head_dim)` states; return the visible ones; keep what future queries need."""
        if step is None or step.keep is None:
            raise RuntimeError("a streaming cache layer was updated outside a patched forward call; "
                               "call the patched model itself rather than a submodule")
        step = step.on(key_states.device)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        self.keys, self.values = step.keep.apply(keys), step.keep.apply(values)
        self.seen += key_states.shape[-2]
        return keys, values

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    @property
    def stored_tokens(self) -> int:
        return 0 if not self.is_initialized else self.keys.shape[-2]

    def reset(self) -> None:
        super().reset()
        self.seen = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("streaming layers drop old tokens and cannot be rolled back "
                                  "(assisted/speculative decoding is not supported with a zigzag plan)")


class TwoPartLayer:
    """What a mixed layer delegates to its two parts: `full` (retrieval heads) and `stream` (streaming heads)."""

    @property
    def stored_tokens(self) -> int:
        return self.stream.stored_tokens

    def reset(self) -> None:
        self.full.reset()
        self.stream.reset()

    def crop(self, tokens_to_remove: int) -> None:
        self.stream.crop(tokens_to_remove)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.full.reorder_cache(beam_idx)
        self.stream.reorder_cache(beam_idx)


class MixedLayer(TwoPartLayer, DynamicLayer):
    """DuoAttention layer: a full cache for the retrieval KV heads, a bounded one for the streaming heads."""

    is_sliding = False
    is_croppable = False

    def __init__(self, retrieval_heads: list[int], streaming_heads: list[int], fp8: bool = False, **kwargs):
        super().__init__()
        self.retrieval_heads, self.streaming_heads = retrieval_heads, streaming_heads
        self.full, self.stream = FP8Layer() if fp8 else DynamicLayer(), SinkWindowLayer()
        self._groups: tuple[HeadGroup, HeadGroup] | None = None  # on the device of the states

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, step: Step | None = None, *args, **kwargs):
        r, s = self._head_groups(key_states.device)
        kr, vr = self.full.update(r(key_states), r(value_states))
        ks, vs = self.stream.update(s(key_states), s(value_states), step)
        self.is_initialized = True
        return SplitKV(kr, ks), SplitKV(vr, vs)

    def _head_groups(self, device: torch.device) -> tuple[HeadGroup, HeadGroup]:
        if self._groups is None or any(g.device not in (None, device) for g in self._groups):
            self._groups = head_groups(self.retrieval_heads, self.streaming_heads, device)
        return self._groups

    def get_seq_length(self) -> int:
        return self.stream.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.stream.seen + query_length, 0

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.full.batch_repeat_interleave(repeats)
        self.stream.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.full.batch_select_indices(indices)
        self.stream.batch_select_indices(indices)


class StepRouting:
    """Cache mixin: layers of the classes in `step_layers` get this forward's `Step` with their update.

    A step lives for one forward of a model patched with the cache's plan (the model's hooks begin and end
    it), so an update without one comes from a model that no longer runs that plan: refused, cache untouched.
    """

    step_layers: tuple[type, ...] = ()
    step: Step | None
    plan: Plan

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if self.step is None:
            raise RuntimeError(f"this {type(self).__name__} was made for a model patched with {self.plan.describe()}, "
                               "but the model using it is not patched (was it unpatched, or the `with "
                               "zz.patched(...)` block left?). Patch it again with the same plan to go on, "
                               "or start without this cache")
        layer = self.layers[layer_idx]
        if isinstance(layer, self.step_layers):
            return layer.update(key_states, value_states, self.step)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


class ZigzagCache(StepRouting, DynamicCache):
    """A `DynamicCache` for a model patched with `plan`; `patch` creates one for every forward that needs it."""

    step_layers = (SinkWindowLayer, MixedLayer)

    def __init__(self, config, plan: Plan):
        super().__init__(config=config)
        if len(self.layers) != plan.num_layers:  # no layer types known: build them all now
            self.layers = [DynamicLayer() for _ in range(plan.num_layers)]
            self.layer_class_to_replicate = None
        self.plan = plan
        fp8 = plan.kv_dtype == "fp8"
        for i, mode in enumerate(plan.modes):
            if mode == STREAMING:
                self.layers[i] = SinkWindowLayer()
            elif mode == MIXED:
                self.layers[i] = MixedLayer(*head_split(plan.heads[i]), fp8=fp8)
            elif mode == RETRIEVAL and fp8 and not self.layers[i].is_sliding:  # the model's own window: as it is
                self.layers[i] = FP8Layer()
        self.stream_pos: torch.Tensor | None = None  # (batch, kept): logical positions of the kept streaming keys
        self.seen = 0
        self.aligned = True
        self.step: Step | None = None

    def begin(self, query_pos: torch.Tensor, aligned: bool) -> Step:
        """Start a forward call whose new tokens sit at `query_pos` `(batch, q_len)`; decide what survives it."""
        sink, window = self.plan.sink, self.plan.window
        batch, q_len = query_pos.shape
        old = self.stream_pos if self.stream_pos is not None else query_pos.new_empty(batch, 0)
        if old.shape[0] != batch:
            raise ValueError(f"the cache holds a batch of {old.shape[0]} rows but the input has {batch}")
        key_pos = torch.cat([old, query_pos], dim=1)
        self.aligned = self.aligned and aligned
        if self.aligned:  # rows are identical: the kept keys are a head and a tail, known without a sync
            total = self.seen + q_len
            keep = Keep(head=min(sink, total), tail=min(window - 1, total))
            kept = keep.apply(key_pos[:, None, :, None])[:, 0, :, 0]
        else:
            last = key_pos.max(dim=1, keepdim=True).values
            allowed = keep_rule(key_pos, last, sink, window)
            n = int(allowed.sum(dim=1).max())
            order = torch.argsort((~allowed).to(torch.int8), dim=1, stable=True)[:, :n]
            keep = Keep(0, 0, index=order)
            kept = torch.where(allowed.gather(1, order), key_pos.gather(1, order), -1)
        self.stream_pos, self.seen = kept, self.seen + q_len
        self.step = Step(query_pos, key_pos, sink, window, self.aligned, keep)
        return self.step

    def stored_tokens(self) -> list[int]:
        """Tokens each layer holds now (for streaming layers, at most sink + window - 1)."""
        return [layer.stored_tokens if hasattr(layer, "stored_tokens") else layer.get_seq_length()
                for layer in self.layers]

    def nbytes(self) -> int:
        """Bytes of keys and values held by all layers."""
        return kv_nbytes(self.layers)

    def reset(self) -> None:
        super().reset()
        self.stream_pos, self.seen, self.aligned, self.step = None, 0, True, None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.stream_pos is not None:
            self.stream_pos = self.stream_pos.index_select(0, beam_idx.to(self.stream_pos.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.stream_pos is not None:
            self.stream_pos = self.stream_pos.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.stream_pos is not None:
            self.stream_pos = self.stream_pos[indices]

    def crop(self, max_length: int) -> None:
        why = ("streaming layers have dropped old tokens" if self.plan.streaming_layers or self.plan.mixed_layers
               else "this plan streams no layer, so the model runs as it would unpatched: zz.unpatch(model) first")
        raise NotImplementedError(f"a zigzag cache cannot be rolled back, so assisted/speculative decoding is not "
                                  f"supported on a patched model; {why}")
