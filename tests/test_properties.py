"""Property tests: any sink, window, length and chunking gives the reference's logits."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_logits
from test_matrix import TOL, max_err, run_chunks

import zigzag_attn as zz
from zigzag_attn.runtime.kernels import sink_window_block_mask
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
    assert all(t <= sink + window for i, t in enumerate(cache.stored_tokens()) if plan.modes[i] != "retrieval")


@settings(max_examples=60, deadline=None)
@given(sink=st.integers(0, 200), window=st.integers(1, 400), lq=st.integers(1, 700), old=st.integers(0, 300),
       pad=st.integers(0, 300), block=st.sampled_from([16, 64, 128]))
def test_block_mask_covers_exactly_the_rule(sink, window, lq, old, pad, block):
    """Skipped blocks hold no allowed pair; 'full' blocks hold only allowed pairs (checked densely)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    total = old + lq
    pos = torch.arange(total)
    row1 = (pos - pad).clamp(min=-1)
    key_pos = torch.stack([pos, row1])[:, -(old + lq):]
    keep = torch.ones(total, dtype=torch.bool)
    keep[sink: max(sink, old - window)] = False  # a cache-like gap between sink and window
    key_pos = key_pos[:, keep[-key_pos.shape[1]:]]
    query_pos = torch.stack([pos, row1])[:, -lq:]
    bm = sink_window_block_mask(query_pos, key_pos, sink=sink, window=window, block=block)
    dense = sink_window_mask(query_pos, key_pos, sink, window)[:, 0]
    dense &= (query_pos >= 0)[:, :, None]
    nq, nk = -(-lq // block), -(-key_pos.shape[1] // block)
    listed = torch.zeros(2, nq, nk, dtype=torch.bool)
    full = torch.zeros(2, nq, nk, dtype=torch.bool)
    for b in range(2):
        for i in range(nq):
            listed[b, i, bm.kv_indices[b, 0, i, : bm.kv_num_blocks[b, 0, i]].long()] = True
            full[b, i, bm.full_kv_indices[b, 0, i, : bm.full_kv_num_blocks[b, 0, i]].long()] = True
    assert not (listed & full).any()
    pad_q, pad_k = nq * block - lq, nk * block - key_pos.shape[1]
    blocks = torch.nn.functional.pad(dense, (0, pad_k, 0, pad_q)).view(2, nq, block, nk, block)
    any_allowed = blocks.any(4).any(2)
    assert not (any_allowed & ~(listed | full)).any(), "an allowed pair sits in a skipped block"
    valid = torch.nn.functional.pad(torch.ones_like(dense), (0, pad_k, 0, pad_q)).view(2, nq, block, nk, block)
    assert (blocks | ~valid).all(4).all(2)[full].all(), "a 'full' block holds a forbidden pair"
