"""Every family x {exclusive, mixed} x every path (beam search too), against the float32 reference
(tests/reference.py)."""

from __future__ import annotations

import pytest
import torch
from reference import reference_generate, reference_logits

import zigzag_attn as zz
from zigzag_attn.runtime.cache import MixedLayer, SinkWindowLayer

TOL = 1e-4
DECODE_BACKENDS = ["split", "sdpa"]  # one-token kernels; CPU default: split, CUDA default: sdpa


def ids(n: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 96, (batch, n), generator=g)


def max_err(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor | None = None) -> float:
    d = (a.float() - b.float()).abs().amax(-1)
    return float(d[real.bool()].max() if real is not None else d.max())


def left_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of unequal length as one left-padded batch: (input_ids, attention_mask), both `(batch, longest)`."""
    n = max(len(r) for r in rows)
    batch, mask = torch.zeros(len(rows), n, dtype=torch.long), torch.zeros(len(rows), n, dtype=torch.long)
    for b, r in enumerate(rows):
        batch[b, n - len(r):], mask[b, n - len(r):] = r, 1
    return batch, mask


def run_chunks(model, x, sizes, mask=None):
    cache, out, start = None, [], 0
    for size in sizes:
        end = min(start + size, x.shape[1])
        kw = {"attention_mask": mask[:, :end]} if mask is not None else {}
        o = model(input_ids=x[:, start:end], cache=cache, use_cache=True, **kw)
        cache, start = zz.cache_of(o), end
        out.append(o.logits)
        if start == x.shape[1]:
            break
    return torch.cat(out, dim=1), cache


def assert_bounded(cache, plan, real: int):
    """Streaming layers hold exactly the keys a later query can see: min(sink + window - 1, real) tokens, where
    `real` counts the real tokens of the longest row (a stale key held, even if masked, fails)."""
    want = min(plan.sink + plan.window - 1, real)
    for i, layer in enumerate(cache.layers):
        if isinstance(layer, (SinkWindowLayer, MixedLayer)):
            assert layer.stored_tokens == want, (i, layer.stored_tokens, want)
        if isinstance(layer, MixedLayer):
            assert layer.full.get_seq_length() == layer.get_seq_length()


@torch.no_grad()
def test_one_pass_prefill(case):
    _, model, plan = case
    x = ids(40)
    ref = reference_logits(model, plan, x)
    full = model(x).logits
    assert max_err(full, ref) > 1e-3, "the plan must change the output, or this test proves nothing"
    zz.patch(model, plan)
    assert max_err(model(x).logits, ref) <= TOL


@torch.no_grad()
def test_chunked_prefill(case):
    _, model, plan = case
    x = ids(45, seed=2)
    ref = reference_logits(model, plan, x)
    zz.patch(model, plan)
    for sizes in ([1] * 45, [7] * 7, [5, 13, 2, 30], [9, 1, 1, 40]):
        out, cache = run_chunks(model, x, sizes)
        assert max_err(out, ref) <= TOL, sizes
        assert cache.get_seq_length() == 45
        assert_bounded(cache, plan, 45)


@torch.no_grad()
@pytest.mark.parametrize("decode", DECODE_BACKENDS)
def test_decode_past_window(case, decode):
    _, model, plan = case
    x = ids(70, seed=3)
    ref = reference_logits(model, plan, x)
    zz.patch(model, plan, decode_backend=decode)
    out, cache = run_chunks(model, x, [6] + [1] * 64)
    assert max_err(out, ref) <= TOL
    assert_bounded(cache, plan, 70)
    stored = cache.stored_tokens()
    for i in plan.streaming_layers:
        assert stored[i] == plan.sink + plan.window - 1
    for i in plan.retrieval_layers:
        assert stored[i] == 70 or i in zz.describe(model).native_sliding


@torch.no_grad()
def test_generate_bounded(case):
    _, model, plan = case
    prompt = ids(8, seed=4)
    zz.patch(model, plan)
    out = model.generate(prompt, max_new_tokens=40, min_new_tokens=40, do_sample=False,
                         return_dict_in_generate=True, output_logits=True)
    cache = zz.cache_of(out)
    assert isinstance(cache, zz.ZigzagCache)
    assert_bounded(cache, plan, 47)
    assert cache.get_seq_length() == 47  # the last token is not fed back
    zz.unpatch(model)
    ref = reference_logits(model, plan, out.sequences)[:, 7:-1]
    got = torch.stack(out.logits, dim=1)
    assert max_err(got, ref) <= TOL
    chosen = ref.gather(-1, out.sequences[:, 8:, None])[..., 0]
    assert (ref.max(-1).values - chosen).max() <= TOL  # every greedy token is the reference's argmax


@torch.no_grad()
@pytest.mark.parametrize("decode", DECODE_BACKENDS)
def test_left_padded_batch(case, decode):
    _, model, plan = case
    rows = [ids(12, seed=5)[0], ids(21, seed=6)[0]]
    batch, mask = left_padded(rows)
    n = batch.shape[1]
    zz.patch(model, plan, decode_backend=decode)
    together = model.generate(batch, attention_mask=mask, max_new_tokens=25, min_new_tokens=25, do_sample=False)
    for b, r in enumerate(rows):
        alone = model.generate(r[None], max_new_tokens=25, min_new_tokens=25, do_sample=False)
        assert torch.equal(together[b, n:], alone[0, len(r):]), f"row {b} differs from itself run alone"
    # teacher-forced logits of the padded batch, in chunks, against the reference
    full = torch.cat([mask, torch.ones(2, 25, dtype=torch.long)], dim=1)
    out, cache = run_chunks(model, together, [n - 3, 5] + [1] * 25, mask=full)
    zz.unpatch(model)
    ref = reference_logits(model, plan, together, full)
    assert max_err(out, ref, full) <= TOL
    assert_bounded(cache, plan, int(full.sum(1).max()))


@torch.no_grad()
def test_unpatch_is_bit_identical(case):
    _, model, plan = case
    x = ids(30, seed=7)
    before = model(x).logits
    gen_before = model.generate(x[:, :5], max_new_tokens=12, min_new_tokens=12, do_sample=False)
    with zz.patched(model, plan):
        assert zz.plan_of(model) is plan
        assert not torch.equal(model(x).logits, before)
    assert zz.plan_of(model) is None
    assert torch.equal(model(x).logits, before)
    assert torch.equal(model.generate(x[:, :5], max_new_tokens=12, min_new_tokens=12, do_sample=False), gen_before)


@torch.no_grad()
def test_beam_search(case):
    """Beam search (which reorders the cache rows every step) with the dynamic and the static cache: the
    reference's beams and scores (transformers' beam search over the reference, without a cache)."""
    _, model, plan = case
    prompt = ids(8, seed=9)
    kw = dict(num_beams=3, max_new_tokens=16, min_new_tokens=16, do_sample=False, output_scores=True,
              return_dict_in_generate=True)
    ref = reference_generate(model, plan, prompt, **kw)
    zz.patch(model, plan)
    for impl in (None, "static"):
        out = model.generate(prompt, cache_implementation=impl, **kw)
        assert torch.equal(out.sequences, ref.sequences), impl
        assert (out.sequences_scores - ref.sequences_scores).abs().max() <= TOL, impl


@torch.no_grad()
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_reorder_cache_moves_rows(case, static):
    """`reorder_cache` moves each row's keys and its token positions: two left-padded rows of unequal length are
    swapped past the window, then decoded on against the reference of the swapped batch."""
    _, model, plan = case
    x, mask = left_padded([ids(12, seed=5)[0], ids(21, seed=6)[0]])
    more, n, swap = ids(5, batch=2, seed=10), x.shape[1], torch.tensor([1, 0])
    full = torch.cat([mask[swap], torch.ones(2, 5, dtype=torch.long)], dim=1)
    zz.patch(model, plan)
    cache = zz.make_cache(model, max_cache_len=n + 5 if static else None)
    model(input_ids=x, attention_mask=mask, cache=cache)
    cache.reorder_cache(swap)
    out = [model(input_ids=more[:, t:t + 1], attention_mask=full[:, :n + t + 1], cache=cache).logits
           for t in range(5)]
    zz.unpatch(model)
    ref = reference_logits(model, plan, torch.cat([x[swap], more], dim=1), full)[:, n:]
    assert max_err(torch.cat(out, dim=1), ref) <= TOL
