"""Decode attention that reads FP8 retrieval KV directly (Triton): no 16-bit copy of the cache is made.

`fp8_decode(q, k, v, bias, scale)`: one query per row, `q` `(batch, q_heads, 1, head_dim)` in bfloat16 or float16,
`k`, `v` `QuantKV`s `(batch, kv_heads, keys, head_dim)` float8 with `(batch, kv_heads, keys, 1)` bfloat16 scales,
`bias` None or an additive float32 `(batch or 1, keys)` row (-inf: not seen). Returns `(batch, 1, q_heads, head_dim)`.

Split-key (flash-decoding) scheme: program (row, KV head, split) loads the query heads that share the KV head as
the rows of one tile, streams its split's keys in blocks of `BLOCK_N` (float8 values converted to 16-bit in
registers, exactly, and the per-token scale applied to the scores and to the probabilities), and keeps an online
softmax; a few torch ops merge the splits by their maxima. Registered as a `torch.library.triton_op`, so
`torch.compile` and CUDA graphs take it whole.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

BLOCK_N = 64
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def problem(dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the kernel cannot serve a model of this dtype and head size (one sentence), or None."""
    if not triton_installed():
        return "the triton package is not installed"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"it takes bfloat16 or float16 queries, not {dtype}"
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"it takes head_dim in {SUPPORTED_HEAD_DIMS}, not {head_dim}"
    return None


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def split_kernel(Q, K, KS, V, VS, BIAS, OUT, M, L, sm_scale, N, chunk, splits,
                     q_sb, q_sh, k_sb, k_sh, k_sn, ks_sb, ks_sh, ks_sn, v_sb, v_sh, v_sn, vs_sb, vs_sh, vs_sn,
                     bias_sb, bias_sn,
                     G: tl.constexpr, KV: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr,
                     BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr):
        row_head = tl.program_id(0)
        split = tl.program_id(1)
        b = (row_head // KV).to(tl.int64)  # a batch row's offset passes 2**31 bytes at large batches
        g = (row_head % KV).to(tl.int64)
        rows = tl.arange(0, BLOCK_G)
        dims = tl.arange(0, D)
        offs = tl.arange(0, BLOCK)
        q = tl.load(Q + b * q_sb + (g * G + rows)[:, None] * q_sh + dims[None, :], mask=(rows < G)[:, None], other=0.0)
        start = split * chunk
        end = tl.minimum(start + chunk, N)
        m = tl.full([BLOCK_G], float("-inf"), tl.float32)
        den = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        for off in range(0, chunk, BLOCK):  # bounds every program shares (the last split's tail is masked)
            n = start + off + offs
            valid = n < end
            k = tl.load(K + b * k_sb + g * k_sh + n[:, None] * k_sn + dims[None, :], mask=valid[:, None], other=0.0)
            ks = tl.load(KS + b * ks_sb + g * ks_sh + n * ks_sn, mask=valid, other=0.0).to(tl.float32)
            s = tl.dot(q, tl.trans(k.to(q.dtype))) * (ks * sm_scale).to(tl.float32)[None, :]
            if HAS_BIAS:
                s += tl.load(BIAS + b * bias_sb + n * bias_sn, mask=valid, other=0.0)[None, :]
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m - m_safe)
            den = den * alpha + tl.sum(p, 1)
            v = tl.load(V + b * v_sb + g * v_sh + n[:, None] * v_sn + dims[None, :], mask=valid[:, None], other=0.0)
            vs = tl.load(VS + b * vs_sb + g * vs_sh + n * vs_sn, mask=valid, other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot((p * vs[None, :]).to(q.dtype), v.to(q.dtype))
            m = m_new
        heads = b * (KV * G) + g * G + rows  # flat (row, q head) index
        live = rows < G
        tl.store(OUT + (heads * splits + split)[:, None] * D + dims[None, :], acc, mask=live[:, None])
        tl.store(M + heads * splits + split, m, mask=live)
        tl.store(L + heads * splits + split, den, mask=live)

    return split_kernel


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _splits(batch_heads: int, n: int, device: torch.device) -> tuple[int, int]:
    """(splits, keys per split): enough programs to fill the GPU twice over, whole blocks per split."""
    sms = _multiprocessors(device.index or 0) if device.type == "cuda" else 8
    blocks = max(1, (n + BLOCK_N - 1) // BLOCK_N)
    splits = max(1, min(blocks, (2 * sms + batch_heads - 1) // batch_heads))
    per = (blocks + splits - 1) // splits
    return (blocks + per - 1) // per, per * BLOCK_N


def register() -> None:
    """Define `torch.ops.zigzag_attn.fp8_decode` once (`patch` calls this when it picks the kernel): the call site
    then names a plain torch op, which `torch.compile` takes into its graph without a break."""
    if not hasattr(torch.ops.zigzag_attn, "fp8_decode"):
        _define()


def _define():
    from torch.library import triton_op, wrap_triton

    @triton_op("zigzag_attn::fp8_decode", mutates_args={})
    def fp8_decode_op(q: torch.Tensor, k: torch.Tensor, ks: torch.Tensor, v: torch.Tensor, vs: torch.Tensor,
                      bias: torch.Tensor, has_bias: bool, scale: float) -> torch.Tensor:
        b, h, _, d = q.shape
        kv, n = k.shape[1], k.shape[2]
        group = h // kv
        splits, chunk = _splits(b * kv, n, q.device)
        o = torch.empty(b, h, splits, d, device=q.device, dtype=torch.float32)
        m = torch.empty(b, h, splits, device=q.device, dtype=torch.float32)
        den = torch.empty(b, h, splits, device=q.device, dtype=torch.float32)
        wrap_triton(_kernel())[(b * kv, splits)](
            q, k, ks, v, vs, bias, o, m, den, scale, n, chunk, splits,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), ks.stride(0), ks.stride(1), ks.stride(2),
            v.stride(0), v.stride(1), v.stride(2), vs.stride(0), vs.stride(1), vs.stride(2),
            bias.stride(0), bias.stride(1),
            G=group, KV=kv, BLOCK_G=max(16, triton_next_power_of_2(group)), D=d, BLOCK=BLOCK_N, HAS_BIAS=has_bias)
        top = m.amax(-1, keepdim=True)
        w = torch.exp(m - torch.where(top == float("-inf"), 0.0, top))  # 0 for splits that saw nothing
        total = (den * w).sum(-1, keepdim=True)
        out = (o * w[..., None]).sum(2) / torch.where(total == 0, 1.0, total)  # a row that sees nothing: 0, not NaN
        return out.to(q.dtype).reshape(b, h, 1, d).transpose(1, 2)


def triton_next_power_of_2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def fp8_decode(q: torch.Tensor, k, v, bias: torch.Tensor | None, *, scale: float | None) -> torch.Tensor:
    """See the module docstring; `k`, `v` are `QuantKV`s. The caller checks `problem(q.dtype, head_dim)` and calls
    `register()` first."""
    d = q.shape[-1]
    scale = d ** -0.5 if scale is None else float(scale)
    has_bias = bias is not None
    bias = q.new_zeros(1, 1, dtype=torch.float32) if bias is None else bias.expand(q.shape[0], k.data.shape[2])
    return torch.ops.zigzag_attn.fp8_decode(q.contiguous(), k.data, k.scale, v.data, v.scale, bias, has_bias, scale)


def mask_bias(mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The last query's row of a boolean or additive 4-D mask `(batch or 1, 1, q, >= n)` as an additive float32
    `(batch or 1, n)` bias (-inf where not seen); None for None."""
    if mask is None:
        return None
    row = mask[:, 0, -1, :n]
    if row.dtype == torch.bool:
        return torch.zeros(row.shape, dtype=torch.float32, device=row.device).masked_fill(~row, float("-inf"))
    return row.float()
