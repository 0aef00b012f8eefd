"""The `AttentionInterface` function of a patched model: one dispatch on `module.layer_idx`.

Retrieval layers (and the model's own sliding-window layers) run the model's original attention, or `flash-attn`
when asked for (retrieval_backend="flash"); streaming layers run sink + window attention; mixed layers run both on
their head groups and concatenate, as DuoAttention does. With FP8 retrieval KV (`plan.kv_dtype == "fp8"`) the cache
hands over `QuantKV`s: decoding reads them with the fused kernel of `fp8_decode` (fp8_backend "triton"), everything
else attends over their read-back values (fp8_backend "dequantize", and every prefill).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..plan import MIXED, RETRIEVAL, Plan
from . import fp8_decode, kernels
from .cache import SplitKV, head_groups, head_split
from .quant import QuantKV, round_trip
from .step import Step

STREAMING_BACKENDS = ("auto", "sdpa", "flex")
RETRIEVAL_BACKENDS = ("auto", "native", "flash")
DECODE_BACKENDS = ("auto", "sdpa", "split")
FP8_BACKENDS = ("auto", "triton", "dequantize")
# compute capability majors on which "auto" picks the fused FP8 kernel: none yet. It has run and been checked on Hopper
# (eager, up to the memory limit), but its call inside a compiled decode step has not been timed since a graph break
# there was fixed, so "auto" reads a 16-bit copy until it has; fp8_backend="triton" asks for it
FP8_KERNEL_ARCHS: tuple[int, ...] = ()


@dataclass(frozen=True)
class Dispatch:
    """Everything the attention function needs, fixed at patch time."""

    plan: Plan
    original: Callable  # the model's own attention function
    streaming_backend: str = "auto"
    retrieval_backend: str = "auto"
    decode_backend: str = "auto"
    fp8_backend: str = "auto"
    # looked up once here: inside a compiled decode step an import check would break the graph
    has_flex: bool = field(default_factory=kernels.flex_available)

    def sdpa_decode(self, q: torch.Tensor) -> bool:
        return self.decode_backend == "sdpa" or (self.decode_backend == "auto" and q.is_cuda)

    def flash(self, q: torch.Tensor) -> bool:
        """Whether retrieval layers call flash-attn: only when asked for. "auto" never picks it, since it has not
        been run on a GPU against the SDPA path."""
        return self.retrieval_backend == "flash"

    def stored_fp8(self, k, kwargs) -> bool:
        """Retrieval keys handed over as plain tensors (no cache) where an FP8 plan would store them: a forward
        without a cache must see what one with a cache sees, so they go through the format here. The model's own
        sliding layers keep its dtype in the cache, so they are left alone."""
        return self.plan.kv_dtype == "fp8" and isinstance(k, torch.Tensor) and kwargs.get("sliding_window") is None

    def fp8_kernel(self, q: torch.Tensor) -> bool:
        """Whether one-token attention over FP8 KV runs the fused kernel (`patch` resolves "auto")."""
        return self.fp8_backend == "triton" and q.is_cuda

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        step: Step | None = kwargs.pop("zigzag_step", None)
        mode = self.plan.modes[module.layer_idx]
        if mode == RETRIEVAL:
            if self.stored_fp8(key, kwargs):
                key, value = round_trip(key), round_trip(value)
            return self.full(module, query, key, value, attention_mask, scaling, dropout, kwargs), None
        if step is None:
            raise RuntimeError("streaming attention needs token positions; call the patched model itself "
                               "(its forward or generate), not an inner module")
        step = step.on(query.device)  # a model split across devices: positions live on the input's device
        if kwargs.get("softcap") is not None:
            raise NotImplementedError("attention logit soft-capping is not supported on streaming layers")
        if mode == MIXED:
            return self.mixed(module, query, key, value, attention_mask, scaling, dropout, step, kwargs), None
        return self.streaming(query, key, value, step, scaling), None

    def full(self, module, q, k, v, mask, scaling, dropout, kwargs) -> torch.Tensor:
        """Causal attention over all keys: `(batch, q_len, heads, head_dim)`."""
        plain = dropout == 0.0 and kwargs.get("softcap") is None and kwargs.get("s_aux") is None
        one_row = mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[1] == 1)
        if isinstance(k, QuantKV):
            if q.shape[2] == 1 and plain and one_row and self.fp8_kernel(q):
                return fp8_decode.fp8_decode(q, k, v, fp8_decode.mask_bias(mask, k.shape[2]), scale=scaling)
            k, v = k.dequantize(), v.dequantize()
        if self.flash(q) and mask is None and dropout == 0.0 and kwargs.get("sliding_window") is None:
            return kernels.causal_flash(q, k, v, scale=scaling)
        if q.shape[2] == 1 and plain and one_row:
            return kernels.decode_attention(q, k, v, mask, scale=scaling, sdpa=self.sdpa_decode(q))
        return self.original(module, q, k, v, mask, scaling=scaling, dropout=dropout, **kwargs)[0]

    def streaming(self, q, k, v, step: Step, scaling) -> torch.Tensor:
        """Sink + window attention: `(batch, q_len, heads, head_dim)`."""
        # FlexAttention pays off (and its prefill kernel applies) from one query block up; shorter
        # chunks and decoding see at most sink + window + q_len keys, which masked SDPA handles well.
        flex = self.streaming_backend == "flex" or (self.streaming_backend == "auto" and q.is_cuda
                                                    and self.has_flex)
        if flex and q.shape[2] >= kernels.FLEX_MIN_QUERIES:
            if "block_mask" not in step.memo:
                step.memo["block_mask"] = kernels.sink_window_block_mask(step.query_pos, step.key_pos,
                                                                         sink=step.sink, window=step.window)
            return kernels.sink_window_flex(q, k, v, step.memo["block_mask"], scale=scaling)
        block = max(step.window, 16)
        if step.aligned and q.shape[2] >= 2 * block:  # long prefill: skip the q_len x keys mask
            return kernels.sink_window_blocked(q, k, v, step.query_pos, step.key_pos, sink=step.sink,
                                               window=step.window, scale=scaling, block=block)
        return kernels.sink_window_sdpa(q, k, v, step.query_pos, step.key_pos, sink=step.sink, window=step.window,
                                        scale=scaling, masked=step.needs_mask, sdpa_decode=self.sdpa_decode(q))

    def mixed(self, module, q, k, v, mask, scaling, dropout, step: Step, kwargs) -> torch.Tensor:
        """Two calls on the two head groups, one concatenation, heads back in model order."""
        row = self.plan.heads[module.layer_idx]
        group = q.shape[1] // len(row)
        r_heads = [h * group + g for h, keep in enumerate(row) if keep for g in range(group)]
        s_heads = [h * group + g for h, keep in enumerate(row) if not keep for g in range(group)]
        if isinstance(k, SplitKV):
            kr, ks, vr, vs = k.retrieval, k.streaming, v.retrieval, v.streaming
        else:  # no cache: every head sees the same keys
            r_kv, s_kv = head_groups(*head_split(row), k.device)
            kr, ks, vr, vs = r_kv(k), s_kv(k), r_kv(v), s_kv(v)
            if self.stored_fp8(kr, kwargs):
                kr, vr = round_trip(kr), round_trip(vr)
        order = r_heads + s_heads
        r_q, s_q = head_groups(r_heads, s_heads, q.device)
        out = torch.cat([self.full(module, r_q(q), kr, vr, mask, scaling, dropout, kwargs),
                         self.streaming(s_q(q), ks, vs, step, scaling)], dim=2)
        if order != sorted(order):
            out = out.index_select(2, torch.tensor(sorted(range(len(order)), key=order.__getitem__), device=q.device))
        return out


def resolve_fp8_backend(backend: str, plan: Plan, device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """"triton" or "dequantize" for a model on `device` in `dtype`; ValueError (one sentence) when "triton" is asked
    for and cannot run. "auto" takes the kernel only on the GPUs listed in `FP8_KERNEL_ARCHS`."""
    if plan.kv_dtype != "fp8" or backend == "dequantize":
        return "dequantize"
    why = fp8_decode.problem(dtype, head_dim) if device.type == "cuda" else "the model is not on a CUDA GPU"
    if backend == "triton" and why:
        raise ValueError(f"fp8_backend='triton' cannot run here: {why}")
    if backend == "auto" and (why or torch.cuda.get_device_capability(device)[0] not in FP8_KERNEL_ARCHS):
        return "dequantize"
    fp8_decode.register()
    return "triton"
