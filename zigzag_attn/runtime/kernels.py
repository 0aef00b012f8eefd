"""Attention kernels, one function each.

Inputs are `(batch, heads, seq, head_dim)`; outputs `(batch, seq, heads, head_dim)`.

- `decode_attention`: one query per row, reading each KV head once: SDPA with grouped heads (CUDA), or
  split-key torch matmuls (CPU).
- `sink_window_sdpa`: masked torch SDPA; any device; short chunks.
- `sink_window_blocked`: the same in query blocks (`blocked_key_spans`), work ~ N * (sink + window); long prefill
  without FlexAttention.
- `sink_window_flex`: FlexAttention with a sparse block mask (`sink_window_block_mask`, whose per-element rule is
  `sink_window_mask_mod`); CUDA prefill, cost ~ N * (sink + window).
- `causal_flash`: the `flash-attn` package when installed (CUDA, fp16/bf16, no padding).
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

from .step import sink_window_mask


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *,
                     scale: float | None, chunk: int = 512, sdpa: bool = False) -> torch.Tensor:
    """Attention of one new token per row, reading each KV head once.

    q: `(batch, q_heads, 1, head_dim)`; k, v: `(batch, kv_heads, keys, head_dim)`; mask: None (every key),
    boolean (True = attend) or additive, broadcastable to `(batch, 1, 1, keys)`.
    Returns `(batch, 1, q_heads, head_dim)`. A row that sees nothing (a padding query) gets no NaN.
    `sdpa=True`: torch SDPA with grouped heads (`enable_gqa`) and an additive mask, one fused kernel on CUDA.
    Otherwise flash-decoding in torch ops: the q heads sharing a KV head are rows of one matmul, and chunks of
    `chunk` keys are separate matmuls merged by their softmax maxima (fast on CPU, where SDPA copies heads).
    """
    b, h, _, d = q.shape
    kv, n = k.shape[1], k.shape[2]
    if mask is not None:
        mask = mask[..., -1:, :n]
    if sdpa:
        low = torch.finfo(q.dtype).min  # additive and finite: a row that sees nothing stays finite
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, low)
        elif mask is not None:
            mask = mask.clamp(min=low).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=_grouped(q, k))
        return out.transpose(1, 2)
    q = q.reshape(b, kv, 1, h // kv, d) * (scale if scale is not None else d ** -0.5)
    if mask is not None:
        mask = mask.reshape(mask.shape[0], 1, 1, 1, n)
        if mask.dtype == torch.bool:  # a padding query sees nothing: let it see all, never NaN (0 x NaN poisons)
            mask = mask | ~mask.any(-1, keepdim=True)
    main = n // chunk * chunk if n >= 2 * chunk else 0
    parts = [_chunks(q, k[:, :, s:e], v[:, :, s:e], None if mask is None else mask[..., s:e], c)
             for s, e, c in ((0, main, main // chunk), (main, n, 1)) if e > s]
    part, top, total = (torch.cat(x, dim=2) for x in zip(*parts, strict=True))
    w = torch.exp(top - top.amax(2, keepdim=True))  # chunk weights; 0 for chunks with nothing to see
    out = (part * w).sum(2) / (total * w).sum(2)
    return out.to(v.dtype).reshape(b, 1, h, d)


def _grouped(q: torch.Tensor, k: torch.Tensor) -> bool:
    """More q heads than KV heads, as a plain bool (an `if`: under dynamic compile a comparison is symbolic)."""
    if q.shape[1] != k.shape[1]:
        return True
    return False


def _chunks(q, k, v, mask, c: int):
    """Unnormalised outputs, maxima and sums of exp-scores over `c` equal key chunks: `(batch, kv, c, group, .)`."""
    b, kv, n, d = k.shape
    acc = torch.promote_types(k.dtype, torch.float32)  # float32 at least (float64 models keep theirs)
    scores = torch.matmul(q.to(k.dtype), k.reshape(b, kv, c, n // c, d).transpose(-1, -2)).to(acc)
    if mask is not None:
        mask = mask.reshape(mask.shape[0], 1, c, 1, n // c)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    top = scores.amax(-1, keepdim=True)
    p = torch.exp(scores - torch.where(top == float("-inf"), 0.0, top))
    return torch.matmul(p.to(v.dtype), v.reshape(b, kv, c, n // c, d)).to(acc), top, p.sum(-1, keepdim=True)


def sink_window_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_pos: torch.Tensor,
                     key_pos: torch.Tensor, *, sink: int, window: int, scale: float | None,
                     masked: bool = True, sdpa_decode: bool = False) -> torch.Tensor:
    """Sink + window attention with torch SDPA.

    q: `(batch, q_heads, q_len, head_dim)`; k, v: `(batch, kv_heads, visible, head_dim)`;
    query_pos `(batch, q_len)`, key_pos `(batch, visible)` logical positions (-1 = padding).
    `masked=False` skips the mask when every visible key is allowed (aligned decode);
    `sdpa_decode`: one query per row goes to `decode_attention` with `sdpa=sdpa_decode`.
    """
    mask = sink_window_mask(query_pos, key_pos, sink, window) if masked else None
    if q.shape[2] == 1:
        return decode_attention(q, k, v, mask, scale=scale, sdpa=sdpa_decode)
    group = q.shape[1] // k.shape[1]
    if q.is_cuda and mask is not None and group > 1:  # with a mask, CUDA SDPA takes GQA only in its O(seq^2) math path
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=_grouped(q, k))
    return out.transpose(1, 2)


def sink_window_blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_pos: torch.Tensor,
                        key_pos: torch.Tensor, *, sink: int, window: int, scale: float | None,
                        block: int) -> torch.Tensor:
    """Sink + window attention over blocks of `block` queries, for rows without padding (identical positions).

    Keys are `[kept cache | the queries' own]`; each block attends the kept cache, the new sink keys, and the new
    keys from `window - 1` before its first query to its last, so it never builds a `q_len x keys` mask.
    Shapes as `sink_window_sdpa`.
    """
    out = []
    for a, b, spans in blocked_key_spans(query_pos, k.shape[2], sink=sink, window=window, block=block):
        kk, vv = (torch.cat([x[:, :, s:e] for s, e in spans], dim=2) for x in (k, v))
        pos = torch.cat([key_pos[:, s:e] for s, e in spans], dim=1)
        out.append(sink_window_sdpa(q[:, :, a:b], kk, vv, query_pos[:, a:b], pos, sink=sink, window=window,
                                    scale=scale))
    return torch.cat(out, dim=1)


def blocked_key_spans(query_pos: torch.Tensor, keys: int, *, sink: int, window: int, block: int):
    """The blocks of `sink_window_blocked`: `(a, b, spans)` for queries `a:b`, which attend the keys
    `[s:e for s, e in spans]` of the `keys` visible ones (masked within). `query_pos` `(batch, q_len)`, rows alike."""
    n = query_pos.shape[1]
    cached = keys - n
    new_sinks = min(max(sink - int(query_pos[0, 0]), 0), n)  # new keys that are sinks (a short or empty cache)
    for a in range(0, n, block):
        b, lo = min(a + block, n), max(0, a - window + 1)
        yield a, b, [(0, cached + min(new_sinks, lo)), (cached + lo, cached + b)]


FLEX_MIN_QUERIES = 128  # one query block; below it inductor picks flex decoding, which needs other shapes


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)  # sizes become dynamic after the first recompile


def sink_window_block_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, *, sink: int, window: int,
                           block: int = 128):
    """A FlexAttention `BlockMask` for the sink + window rule, built from per-block position bounds.

    Work is O(q_blocks * kv_blocks) on small integers, never O(q_len * visible): a block is skipped when
    no query in it can see a key in the other, and marked full (no per-element mask) when all can.
    """
    from torch.nn.attention.flex_attention import BlockMask

    b, lq = query_pos.shape
    lk = key_pos.shape[1]

    def bounds(pos: torch.Tensor, n: int):
        pad = (-n) % block
        p = F.pad(pos, (0, pad), value=-1).view(b, -1, block)
        valid = p >= 0
        big = torch.iinfo(p.dtype).max
        lo = torch.where(valid, p, big).amin(-1)
        hi = torch.where(valid, p, -1).amax(-1)
        return lo, hi, valid.all(-1)

    qlo, qhi, qfull = bounds(query_pos, lq)
    klo, khi, kfull = bounds(key_pos, lk)
    qlo, qhi, qfull = qlo[:, :, None], qhi[:, :, None], qfull[:, :, None]
    klo, khi, kfull = klo[:, None, :], khi[:, None, :], kfull[:, None, :]
    some = (khi >= 0) & (qhi >= 0) & (klo <= qhi) & ((klo < sink) | (qlo - khi < window))
    every = qfull & kfull & (khi <= qlo) & ((khi < sink) | (qhi - klo < window))
    partial = some & ~every

    def indices(m: torch.Tensor):
        counts = m.sum(-1, dtype=torch.int32)
        order = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return counts[:, None], order[:, None]

    kv_num, kv_idx = indices(partial)
    full_num, full_idx = indices(every)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=sink_window_mask_mod(query_pos, key_pos, sink=sink, window=window),
                                    seq_lengths=(lq, lk))


def sink_window_mask_mod(query_pos: torch.Tensor, key_pos: torch.Tensor, *, sink: int, window: int):
    """FlexAttention's per-element rule inside partial blocks: `mask_mod(batch, head, q_idx, kv_idx)` -> bool.

    Indices may be tensors of any broadcastable shapes (FlexAttention passes scalars); positions as
    `sink_window_sdpa`."""

    def mask_mod(bi, h, qi, ki):
        qq, kk = query_pos[bi, qi], key_pos[bi, ki]
        return (kk >= 0) & (kk <= qq) & ((kk < sink) | (qq - kk < window))

    return mask_mod


def sink_window_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, *,
                     scale: float | None) -> torch.Tensor:
    """Sink + window attention with FlexAttention over a `sink_window_block_mask`. Shapes as `sink_window_sdpa`."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # one layout: no recompiles for head slices
    out = _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=_grouped(q, k))
    return out.transpose(1, 2)


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def causal_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None) -> torch.Tensor:
    """Causal attention through `flash_attn.flash_attn_func` (queries aligned to the end of the keys)."""
    from flash_attn import flash_attn_func

    return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=True)
