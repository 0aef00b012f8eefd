"""FP8 retrieval KV (`plan.kv_dtype == "fp8"`): float8 e4m3 values with one bfloat16 scale per token and KV head.

A token's key (or value) row `x` of `head_dim` numbers is stored as `round_e4m3(x / s)` with
`s = bf16(max|x| / 448)`, and read back as `e4m3 * s`. The attention of a patched layer always sees the read-back
values, for every token, the new ones included, so a prompt gives the same result whether it is prefilled at once,
in chunks or token by token.

- `quantize` / `dequantize`: the format;
- `QuantKV`: what an FP8 cache layer returns to the attention function (values and scales, not a 16-bit copy);
- `FP8Layer`, `StaticFP8Layer`: transformers cache layers (dynamic, static) that store that format.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer, StaticLayer
from transformers.utils import is_torchdynamo_compiling

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite e4m3fn value
SCALE = torch.bfloat16
MIN_SCALE = 1e-30  # an all-zero row keeps a positive scale (its values stay 0)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` `(..., head_dim)` -> (values `(..., head_dim)` float8 e4m3, scales `(..., 1)` bfloat16)."""
    amax = x.detach().abs().amax(-1, keepdim=True).float()
    scale = (amax / FP8_MAX).clamp_min(MIN_SCALE).to(SCALE)
    values = (x.float() / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return values, scale


def dequantize(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The stored rows read back in `dtype`: `values * scale`, computed in float32."""
    return (values.float() * scale.float()).to(dtype)


def round_trip(x: torch.Tensor) -> torch.Tensor:
    """`x` as the FP8 cache would hand it back: quantised, then read back in `x`'s dtype."""
    return dequantize(*quantize(x), x.dtype)


@dataclass
class QuantKV:
    """Keys (or values) of an FP8 layer: `data` `(batch, kv_heads, tokens, head_dim)` float8, `scale`
    `(batch, kv_heads, tokens, 1)` bfloat16, read back as `dtype` (the model's)."""

    data: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.data, self.scale, self.dtype)


def fp8_problem(device: torch.device | str) -> str | None:
    """Why float8 KV cannot be stored on `device`, in one sentence; None when it can."""
    try:
        x = torch.ones(2, 2, device=device)
        back = x.to(FP8).float()
    except (RuntimeError, TypeError) as e:  # no float8 kernels for this device in this torch build
        return f"this torch build cannot store float8 on {device} ({str(e).splitlines()[0][:120]})"
    if not torch.equal(back, x):
        return f"float8 round trips are wrong on {device} in this torch build"
    return None


class FP8Parts:
    """The four tensors of an FP8 layer, kept in step by every cache operation that moves tokens or rows.

    `keys` / `values` hold the float8 values, `key_scale` / `value_scale` the scales; a transformers layer method
    that touches only `keys` and `values` would leave the scales behind, so each such method is overridden here
    (tests/test_fp8.py checks that none is missed).
    """

    keys: torch.Tensor
    values: torch.Tensor
    key_scale: torch.Tensor
    value_scale: torch.Tensor
    dtype: torch.dtype
    PARTS = ("keys", "values", "key_scale", "value_scale")

    def _apply(self, fn) -> None:
        for name in self.PARTS:
            setattr(self, name, fn(getattr(self, name)))

    def read(self) -> tuple[QuantKV, QuantKV]:
        return QuantKV(self.keys, self.key_scale, self.dtype), QuantKV(self.values, self.value_scale, self.dtype)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._apply(lambda t: t[indices, ...])

    def offload(self):
        if self.is_initialized:
            self._apply(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self):
        if self.is_initialized and self.keys.device != self.device:
            self._apply(lambda t: t.to(self.device, non_blocking=True))


class FP8Layer(FP8Parts, DynamicLayer):
    """A growing retrieval layer whose keys and values are stored in float8 with per-token scales."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        b, h, _, _ = key_states.shape
        self.keys = key_states.new_empty(b, h, 0, key_states.shape[-1], dtype=FP8)
        self.values = value_states.new_empty(b, h, 0, value_states.shape[-1], dtype=FP8)
        self.key_scale = key_states.new_empty(b, h, 0, 1, dtype=SCALE)
        self.value_scale = value_states.new_empty(b, h, 0, 1, dtype=SCALE)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Store `(batch, heads, q_len, head_dim)` states in float8; return every stored token as `QuantKV`s."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        kq, ks = quantize(key_states)
        vq, vs = quantize(value_states)
        self.keys, self.key_scale = torch.cat([self.keys, kq], -2), torch.cat([self.key_scale, ks], -2)
        self.values, self.value_scale = torch.cat([self.values, vq], -2), torch.cat([self.value_scale, vs], -2)
        return self.read()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove; got {tokens_to_remove}")
        if tokens_to_remove and self.is_initialized:
            self._apply(lambda t: t[..., :tokens_to_remove, :])

    def reset(self) -> None:
        self.key_scale = self.value_scale = None
        super().reset()


class StaticFP8Layer(FP8Parts, StaticLayer):
    """A fixed-size retrieval layer of `max_cache_len` float8 slots (and scales), written in place."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        b, h = key_states.shape[:2]
        n = self.max_cache_len
        self.keys = torch.zeros(b, h, n, key_states.shape[-1], dtype=FP8, device=self.device)
        self.values = torch.zeros(b, h, n, value_states.shape[-1], dtype=FP8, device=self.device)
        self.key_scale = torch.zeros(b, h, n, 1, dtype=SCALE, device=self.device)
        self.value_scale = torch.zeros(b, h, n, 1, dtype=SCALE, device=self.device)
        self.cumulative_length = self.cumulative_length.to(self.device)
        if not is_torchdynamo_compiling():  # fixed addresses: CUDA graphs replay across steps
            for t in (self.keys, self.values, self.key_scale, self.value_scale, self.cumulative_length):
                torch._dynamo.mark_static_address(t)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write `(batch, heads, q_len, head_dim)` states at the next slots; return all slots as `QuantKV`s."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        slots = torch.arange(n, device=self.device) + self.cumulative_length
        self.cumulative_length.add_(n)
        for (q, s), data, scale in ((quantize(key_states), self.keys, self.key_scale),
                                    (quantize(value_states), self.values, self.value_scale)):
            data.view(torch.uint8).index_copy_(2, slots, q.view(torch.uint8))  # no float8 index_copy on CPU
            scale.index_copy_(2, slots, s)
        return self.read()

    def reset(self) -> None:
        if self.is_initialized:
            for t in (self.key_scale, self.value_scale):
                t.zero_()
            self.keys.view(torch.uint8).zero_()
            self.values.view(torch.uint8).zero_()
        self.cumulative_length.zero_()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """In place, as the static buffers' addresses must not change."""
        if self.is_initialized:
            for name in self.PARTS:
                t = getattr(self, name)
                t.copy_(t.index_select(0, beam_idx.to(t.device)))
