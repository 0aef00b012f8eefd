"""Property tests: any sink, window, length and chunking gives the reference's logits."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reference import reference_logits, sink_window_allowed
from test_matrix import TOL, max_err, run_chunks

import zigzag_attn as zz
from zigzag_attn.runtime.kernels import blocked_key_spans, sink_window_block_mask, sink_window_mask_mod
from zigzag_attn.runtime.step import sink_window_mask

MODEL = tiny_model("llama", seed=3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sink=st.integers(0, 6), window=st.integers(1, 12), n=st.integers(1, 50),
       chunks=st.lists(st.integers(1, 20), min_size=1, max_size=60), mixed=st.booleans(), pad=st.integers(0, 9))
@torch.no_grad()
def test_any_chunking_matches_reference(sink, window, n, chunks, mixed, pad):
    if mixed:
        plan = zz.Plan.from_heads([[False, True], [True, True], [False, False], [True, False]], sink=sink,
                                  window=window)
    else:
        plan = zz.Plan.from_layers(["streaming", "retrieval", "streaming", "streaming"], sink=sink, window=window)
    g = torch.Generator().manual_seed(n * 31 + pad)
    x = torch.randint(2, 96, (2, n + pad), generator=g)
    mask = torch.ones_like(x)
    mask[1, :pad] = 0  # row 1 is left-padded, row 0 is not
    sizes = chunks + [n + pad]
    with zz.patched(MODEL, plan):
        out, cache = run_chunks(MODEL, x, sizes, mask=mask)
    ref = reference_logits(MODEL, plan, x, mask)
    assert max_err(out, ref, mask) <= TOL
    held = min(sink + window - 1, n + pad)  # row 0's real tokens: exactly what a later query may see
    assert all(t == held for i, t in enumerate(cache.stored_tokens()) if plan.modes[i] != "retrieval")


def cache_like_positions(sink: int, window: int, lq: int, old: int, pad: int):
    """Positions of `lq` queries after `old` tokens, `(2, lq)`, and of the keys they see, `(2, kept + lq)`: row 1
    is left-padded by `pad` (-1), and the cached keys have the gap between sink and window that a cache leaves."""
    total = old + lq
    pos = torch.arange(total)
    rows = torch.stack([pos, (pos - pad).clamp(min=-1)])
    keep = torch.ones(total, dtype=torch.bool)
    keep[sink: max(sink, old - window)] = False
    return rows[:, -lq:], rows[:, keep]


def per_block(m: torch.Tensor, block: int, lq: int, lk: int) -> torch.Tensor:
    """Block indicators `(batch, q_blocks, kv_blocks)` as elements `(batch, lq, lk)`."""
    return m.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :lq, :lk]


# (sink, window, queries, old tokens, padding, block); blocks of 2 put the window's edge at block corners, which
# large blocks rarely do (a "full" block one pair too wide)
FLEX_SIZES = st.one_of(
    st.tuples(st.integers(0, 200), st.integers(1, 400), st.integers(1, 700), st.integers(0, 300),
              st.integers(0, 300), st.sampled_from([16, 64, 128])),
    st.tuples(st.integers(0, 8), st.integers(2, 30), st.integers(1, 90), st.integers(0, 60), st.integers(0, 60),
              st.just(2)))


@settings(max_examples=60, deadline=None)
@given(sizes=FLEX_SIZES)
@example(sizes=(0, 5, 8, 0, 0, 2))  # query block {4, 5}, key block {0, 1}: only (5, 0) is past the window
def test_flex_mask_is_the_reference_mask(sizes):
    """What FlexAttention computes with, element by element on CPU: skipped blocks, full blocks and the mask_mod
    inside partial blocks give exactly the reference's sink + window mask; the mask_mod alone does too."""
    sink, window, lq, old, pad, block = sizes
    query_pos, key_pos = cache_like_positions(sink, window, lq, old, pad)
    lk = key_pos.shape[1]
    want = sink_window_allowed(query_pos, sink, window, key_pos)[:, 0]
    every = torch.arange(2)[:, None, None], 0, torch.arange(lq)[None, :, None], torch.arange(lk)[None, None]
    elementwise = sink_window_mask_mod(query_pos, key_pos, sink=sink, window=window)(*every)
    assert torch.equal(elementwise, want), "the mask_mod differs from the reference mask"
    pytest.importorskip("torch.nn.attention.flex_attention")
    bm = sink_window_block_mask(query_pos, key_pos, sink=sink, window=window, block=block)
    assert torch.equal(bm.mask_mod(*every), want), "the block mask carries another mask_mod"
    nq, nk = -(-lq // block), -(-lk // block)
    listed = torch.zeros(2, nq, nk, dtype=torch.bool)
    full = torch.zeros(2, nq, nk, dtype=torch.bool)
    for b in range(2):
        for i in range(nq):
            listed[b, i, bm.kv_indices[b, 0, i, : bm.kv_num_blocks[b, 0, i]].long()] = True
            full[b, i, bm.full_kv_indices[b, 0, i, : bm.full_kv_num_blocks[b, 0, i]].long()] = True
    assert not (listed & full).any()
    listed, full = per_block(listed, block, lq, lk), per_block(full, block, lq, lk)
    assert not (want & ~(listed | full)).any(), "an allowed pair sits in a skipped block"
    assert not (full & ~want).any(), "a 'full' block holds a forbidden pair"
    assert torch.equal(full | (listed & elementwise), want)


@settings(max_examples=40, deadline=None)
@given(sink=st.integers(0, 40), window=st.integers(1, 60), lq=st.integers(1, 300), old=st.integers(0, 100),
       block=st.integers(1, 64))
def test_blocked_sdpa_mask_is_the_reference_mask(sink, window, lq, old, block):
    """`sink_window_blocked`'s key spans and masks, element by element: each query sees each allowed key exactly
    once (a key listed twice would weigh double in the softmax) and no other."""
    query_pos, key_pos = (p[:1] for p in cache_like_positions(sink, window, lq, old, 0))
    seen = torch.zeros(1, lq, key_pos.shape[1], dtype=torch.long)
    for a, b, spans in blocked_key_spans(query_pos, key_pos.shape[1], sink=sink, window=window, block=block):
        for s, e in spans:
            seen[:, a:b, s:e] += sink_window_mask(query_pos[:, a:b], key_pos[:, s:e], sink, window)[:, 0]
    assert torch.equal(seen, sink_window_allowed(query_pos, sink, window, key_pos)[:, 0].long())
