"""Plain float32 reference: the unpatched model over the whole sequence (no cache), with each streaming
layer's attention computed by explicit softmax(QK^T)V under a sink + window mask. Independent of the runtime.

A plan with FP8 retrieval KV (`kv_dtype="fp8"`) is referenced with the same quantisation applied to every retrieval
head's keys and values (`fp8_round_trip`, written out here from the format's definition), then the same attention."""

from __future__ import annotations

import contextlib
import itertools

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from zigzag_attn.plan import Plan

_ids = itertools.count()


def _eager(q, k, v, allowed, scaling):
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32  # float64 models: their own precision
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1).to(dt)
    v = v.repeat_interleave(groups, dim=1).to(dt)
    scores = (q.to(dt) @ k.transpose(-1, -2)) * scaling
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # padding queries: avoid NaN, ignored later
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (probs @ v).to(q.dtype).transpose(1, 2).contiguous()


def fp8_round_trip(x: torch.Tensor) -> torch.Tensor:
    """Rows of `x` (last dim) as FP8 KV stores them: e4m3 values times one bfloat16 scale, max|row| / 448."""
    scale = (x.abs().amax(-1, keepdim=True).float() / 448).clamp_min(1e-30).to(torch.bfloat16).float()
    return ((x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


def sink_window_allowed(pos: torch.Tensor, sink: int, window: int, key_pos: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, 1, queries, keys) from logical positions (batch, queries) and (batch, keys) (default: the same);
    -1 = padding."""
    key_pos = pos if key_pos is None else key_pos
    q, k = pos[:, None, :, None], key_pos[:, None, None, :]
    return (k >= 0) & (q >= 0) & (k <= q) & ((k < sink) | (q - k < window))


@contextlib.contextmanager
def reference_attention(model, plan: Plan, attention_mask: torch.Tensor | None, n: int | None):
    """Temporarily make `model` compute the reference for full-sequence forwards of `n` tokens
    (`n` None: of any length, without padding, e.g. `generate(use_cache=False)`)."""
    original = model.config._attn_implementation

    def masks(n: int, batch: int):
        real = attention_mask.bool() if attention_mask is not None else torch.ones(batch, n, dtype=torch.bool)
        pos = (real.long().cumsum(-1) - 1).masked_fill(~real, -1)
        return sink_window_allowed(pos, plan.sink, plan.window), sink_window_allowed(pos, n, n)

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if n is not None and key.shape[2] != n:
            raise RuntimeError(f"the reference was set up for {n} tokens but got {key.shape[2]}")
        batch = key.shape[0]
        streaming, causal = masks(key.shape[2], batch)
        layer = module.layer_idx
        row = plan.head_mask(key.shape[1])[layer]
        if kwargs.get("sliding_window") is not None:  # the model's own sliding layer: its own mask
            given = attention_mask if attention_mask is not None else causal
            if given.dtype != torch.bool:
                given = given == 0
            per_head = [given] * len(row)
        else:
            per_head = [causal if r else streaming for r in row]
            if plan.kv_dtype == "fp8" and any(row):  # the retrieval heads' KV goes through the FP8 format
                heads = torch.tensor(row, device=key.device)[None, :, None, None]
                key = torch.where(heads, fp8_round_trip(key), key)
                value = torch.where(heads, fp8_round_trip(value), value)
        groups = query.shape[1] // key.shape[1]
        allowed = torch.cat([m.expand(batch, 1, -1, -1) for m in per_head for _ in range(groups)], dim=1)
        return _eager(query, key, value, allowed, scaling), None

    name = f"zz-reference-{next(_ids)}"
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(original)
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


@torch.no_grad()
def reference_logits(model, plan: Plan, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Logits `(batch, n, vocab)` of the reference over the whole sequence."""
    with reference_attention(model, plan, attention_mask, input_ids.shape[1]):
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()


@torch.no_grad()
def reference_generate(model, plan: Plan, input_ids: torch.Tensor, **kwargs):
    """`model.generate` (any search, e.g. beam) over the reference, recomputing the whole sequence at each step;
    rows without padding."""
    with reference_attention(model, plan, None, None):
        return model.generate(input_ids, use_cache=False, **kwargs)
