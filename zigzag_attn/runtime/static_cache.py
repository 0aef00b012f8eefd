"""Static, compile-friendly KV cache for patched models: fixed ring buffers for streaming layers.

`ZigzagStaticCache` is a transformers `StaticCache` whose streaming layers hold a ring of
min(sink + window, max_cache_len) slots plus one scratch slot (padding writes land there), and whose mixed layers
split into a static part and a ring. Shapes never change, so `torch.compile` and CUDA graphs apply.
Every ring keeps the same token positions, so the cache computes them once per forward (`begin`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import StaticCache
from transformers.cache_utils import CacheLayerMixin, StaticLayer
from transformers.utils import is_torchdynamo_compiling

from ..plan import MIXED, RETRIEVAL, STREAMING, Plan
from .cache import HeadGroup, SplitKV, StepRouting, TwoPartLayer, head_groups, head_split, kv_nbytes
from .quant import StaticFP8Layer
from .step import Step


@dataclass
class RingWrite:
    """Where this step's new keys go: `slot` `(batch, q_len)`; `before` = write, then attend over the ring."""

    slot: torch.Tensor
    before: bool

    def to(self, device: torch.device) -> RingWrite:
        return RingWrite(self.slot.to(device), self.before)


def _static(*tensors: torch.Tensor) -> None:
    if not is_torchdynamo_compiling():  # fixed addresses let CUDA graphs replay across steps
        for t in tensors:
            torch._dynamo.mark_static_address(t)


class RingLayer(CacheLayerMixin):
    """Streaming layer of `capacity` slots `(batch, kv_heads, capacity, head_dim)`, written in place."""

    is_compileable = True
    is_sliding = False  # the model sizes the masks of its full layers from this layer too

    def __init__(self, capacity: int, max_cache_len: int, **kwargs):
        super().__init__()
        self.capacity, self.max_cache_len = capacity, max_cache_len
        self.cumulative_length = torch.tensor(0, dtype=torch.long)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self.keys = key_states.new_zeros(b, h, self.capacity, d)
        self.values = value_states.new_zeros(b, h, self.capacity, value_states.shape[-1])
        self.cumulative_length = self.cumulative_length.to(self.device)
        _static(self.keys, self.values, self.cumulative_length)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, step: Step | None = None, *args, **kwargs):
        """Write `(batch, heads, q_len, head_dim)` states; return the keys and values the new queries may see."""
        if step is None or not isinstance(step.keep, RingWrite):
            raise RuntimeError("a streaming cache layer was updated outside a patched forward call; "
                               "call the patched model itself rather than a submodule")
        step = step.on(key_states.device)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length.add_(key_states.shape[-2])
        if step.keep.before:  # one token per row: its slot held a key it may no longer see
            self._write(key_states, value_states, step.keep.slot)
            return self.keys, self.values
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        self._write(key_states, value_states, step.keep.slot)
        return keys, values

    def _write(self, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor) -> None:
        idx = slot[:, None, :, None]
        self.keys.scatter_(2, idx.expand_as(k), k)
        self.values.scatter_(2, idx.expand_as(v), v)

    def get_seq_length(self):
        return self.cumulative_length if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_cache_len, 0  # as a static layer: the model's full-layer masks have this size

    def get_max_length(self) -> int:
        return self.max_cache_len

    @property
    def stored_tokens(self) -> int:
        return 0 if not self.is_initialized else self.capacity

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("streaming layers drop old tokens and cannot be rolled back")


class StaticMixedLayer(TwoPartLayer, CacheLayerMixin):
    """DuoAttention layer, static: a `StaticLayer` for the retrieval KV heads, a `RingLayer` for the others."""

    is_compileable = True
    is_sliding = False

    def __init__(self, retrieval_heads: list[int], streaming_heads: list[int], capacity: int, max_cache_len: int,
                 fp8: bool = False):
        super().__init__()
        self.retrieval_heads, self.streaming_heads = retrieval_heads, streaming_heads
        self.full = (StaticFP8Layer if fp8 else StaticLayer)(max_cache_len)
        self.stream = RingLayer(capacity, max_cache_len)
        self.max_cache_len = max_cache_len
        self._groups: tuple[HeadGroup, HeadGroup] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._groups = r, s = head_groups(self.retrieval_heads, self.streaming_heads, key_states.device)
        self.full.lazy_initialization(r(key_states), r(value_states))
        self.stream.lazy_initialization(s(key_states), s(value_states))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, step: Step | None = None, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        r, s = self._groups
        kr, vr = self.full.update(r(key_states), r(value_states))
        ks, vs = self.stream.update(s(key_states), s(value_states), step)
        return SplitKV(kr, ks), SplitKV(vr, vs)

    def get_seq_length(self):
        return self.full.get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_cache_len, 0

    def get_max_length(self) -> int:
        return self.max_cache_len


class ZigzagStaticCache(StepRouting, StaticCache):
    """A `StaticCache` for a model patched with `plan`: pass it as the cache, or let `generate` make a static one.

    Retrieval layers are transformers' static layers of `max_cache_len` tokens; streaming layers are rings of
    min(sink + window, max_cache_len) + 1 slots whatever the length.
    """

    step_layers = (RingLayer, StaticMixedLayer)

    def __init__(self, config, plan: Plan, max_cache_len: int):
        super().__init__(config=config, max_cache_len=max_cache_len)
        if len(self.layers) != plan.num_layers:
            raise ValueError(f"the model config has {len(self.layers)} layers but the plan has {plan.num_layers}")
        self.plan = plan
        # positions stay below max_cache_len, so a shorter ring holds each at its own slot and never wraps
        self.capacity = min(plan.sink + plan.window, max_cache_len) + 1
        fp8 = plan.kv_dtype == "fp8"
        for i, mode in enumerate(plan.modes):
            if mode == STREAMING:
                self.layers[i] = RingLayer(self.capacity, max_cache_len)
            elif mode == MIXED:
                self.layers[i] = StaticMixedLayer(*head_split(plan.heads[i]), self.capacity, max_cache_len, fp8)
            elif mode == RETRIEVAL and fp8 and not self.layers[i].is_sliding:  # the model's own window: as it is
                self.layers[i] = StaticFP8Layer(max_cache_len)
        self.ring_pos: torch.Tensor | None = None  # (batch, capacity): position held by each slot, -1 = empty
        self.next_pos: torch.Tensor | None = None  # (batch,): position of each row's next real token
        self.step: Step | None = None

    def begin(self, valid: torch.Tensor | None, batch: int, q_len: int, device: torch.device) -> Step:
        """Start a forward call of `q_len` new tokens; `valid` `(batch, q_len)` marks real ones (None: all real)."""
        sink, window, scratch = self.plan.sink, self.plan.window, self.capacity - 1
        if self.ring_pos is None:
            self.ring_pos = torch.full((batch, self.capacity), -1, dtype=torch.long, device=device)
            self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
            _static(self.ring_pos, self.next_pos)
        elif self.ring_pos.shape[0] != batch:
            raise ValueError(f"the cache holds a batch of {self.ring_pos.shape[0]} rows but the input has {batch}")
        if valid is None:
            valid = torch.ones(batch, q_len, dtype=torch.bool, device=device)
        valid = valid.to(device=device, dtype=torch.bool)
        query_pos = torch.where(valid, self.next_pos[:, None] + valid.long().cumsum(1) - 1, -1)
        last = self.next_pos + valid.sum(1) - 1
        if scratch < sink + window and not is_torchdynamo_compiling() and bool((last >= scratch).any()):
            # a ring cut to max_cache_len has no slot for more (a check only for such short rings, only eager)
            raise ValueError(f"this static cache holds {scratch} tokens per row (max_cache_len) and the input "
                             f"would take a row to {int(last.max()) + 1}; make one with a larger max_cache_len")
        survive = valid & ((query_pos < sink) | (query_pos > last[:, None] - window))
        slot = torch.where(query_pos < sink, query_pos, sink + (query_pos - sink) % window)
        slot = torch.where(survive, slot, scratch)
        before = q_len == 1
        old = None if before else self.ring_pos.clone()
        self.ring_pos.scatter_(1, slot, torch.where(survive, query_pos, -1))
        self.ring_pos[:, scratch] = -1
        self.next_pos.copy_(last + 1)
        key_pos = self.ring_pos if before else torch.cat([old, query_pos], dim=1)
        self.step = Step(query_pos, key_pos, sink, window, aligned=False, keep=RingWrite(slot, before))
        return self.step

    def get_seq_length(self, layer_idx: int = 0):
        """Tokens seen, from a non-sliding layer: the model's own sliding layers count in Python ints."""
        full = [i for i, layer in enumerate(self.layers) if not layer.is_sliding]
        return super().get_seq_length(full[0] if full else layer_idx)

    def stored_tokens(self) -> list[int]:
        """Token slots each layer holds: `max_cache_len` for static layers, `capacity` for rings."""
        return [getattr(layer, "stored_tokens", layer.max_cache_len) for layer in self.layers]

    def nbytes(self) -> int:
        """Bytes of keys and values allocated by all layers."""
        return kv_nbytes(self.layers)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i takes row `beam_idx[i]`'s keys and ring positions (in place: fixed addresses)."""
        super().reorder_cache(beam_idx)
        if self.ring_pos is not None:
            idx = beam_idx.to(self.ring_pos.device)
            self.ring_pos.copy_(self.ring_pos.index_select(0, idx))
            self.next_pos.copy_(self.next_pos.index_select(0, idx))

    def reset(self) -> None:
        super().reset()
        if self.ring_pos is not None:
            self.ring_pos.fill_(-1)
            self.next_pos.zero_()
        self.step = None


def new_tokens_valid(attention_mask, q_len: int, past) -> torch.Tensor | None:
    """Which of the `q_len` new tokens are real, `(batch, q_len)`, from any mask a static forward gets; None = all.

    A 2-D padding mask gives it directly. A 4-D mask `(batch, 1, q_len, keys)` (what `generate` builds for static
    caches) gives it on its diagonal: a real token sees itself, padding sees nothing.
    """
    if isinstance(attention_mask, dict):
        attention_mask = attention_mask.get("full_attention", next(iter(attention_mask.values()), None))
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise NotImplementedError(f"a static zigzag cache cannot read padding from a {type(attention_mask).__name__} "
                                  "mask; use the model's sdpa or eager attention")
    if attention_mask.dim() == 2:
        return attention_mask[:, -q_len:].bool()
    if attention_mask.dim() != 4:
        raise ValueError(f"attention_mask must be 2-D or 4-D; got shape {tuple(attention_mask.shape)}")
    b = attention_mask.shape[0]
    idx = (torch.arange(q_len, device=attention_mask.device) + past).view(1, q_len, 1).expand(b, q_len, 1)
    diag = attention_mask[:, 0].expand(b, -1, -1).gather(2, idx)[..., 0]
    return diag if diag.dtype == torch.bool else diag == 0
