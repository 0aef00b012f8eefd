"""The static cache (ring buffers for streaming layers) through every family x plan, and under torch.compile."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import SINK, WINDOW, plans_for, tiny_model
from reference import reference_logits
from test_matrix import DECODE_BACKENDS, ids, left_padded, max_err

import zigzag_attn as zz
from zigzag_attn.runtime.cache import head_groups
from zigzag_attn.runtime.static_cache import RingLayer, StaticMixedLayer, ZigzagStaticCache

TOL = 1e-4
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run_static(model, x, sizes, max_cache_len, mask=None):
    cache, out, start = zz.make_cache(model, max_cache_len=max_cache_len), [], 0
    for size in sizes:
        end = start + size
        kw = {"attention_mask": mask[:, :end]} if mask is not None else {}
        out.append(model(input_ids=x[:, start:end], cache=cache, use_cache=True, **kw).logits)
        start = end
    return torch.cat(out, dim=1), cache


def assert_rings(cache: ZigzagStaticCache, plan, real: list[int]):
    """Rings of min(sink + window, max_cache_len) + 1 slots; row b's ring holds exactly the sinks and the last
    `window` of its `real[b]` real tokens (the oldest of them is what the next token overwrites)."""
    for i, layer in enumerate(cache.layers):
        ring = layer.stream if isinstance(layer, StaticMixedLayer) else layer
        if isinstance(ring, RingLayer):
            slots = min(plan.sink + plan.window, ring.max_cache_len) + 1
            assert ring.keys.shape[0] == len(real) and ring.keys.shape[2] == slots, i
    for b, n in enumerate(real):
        want = [p for p in range(n) if p < plan.sink or p >= n - plan.window]
        assert sorted(p for p in cache.ring_pos[b].tolist() if p >= 0) == want, b


@torch.no_grad()
@pytest.mark.parametrize("sizes,backend", [([6] + [1] * 64, b) for b in DECODE_BACKENDS] +
                         [([30, 17, 1, 22], "auto"), ([70], "auto")],
                         ids=[f"decode-{b}" for b in DECODE_BACKENDS] + ["chunks", "one-pass"])
def test_static_matches_reference(case, sizes, backend):
    _, model, plan = case
    x = ids(70, seed=3)
    ref = reference_logits(model, plan, x)
    zz.patch(model, plan, decode_backend=backend)
    out, cache = run_static(model, x, sizes, max_cache_len=80)
    assert max_err(out, ref) <= TOL
    assert_rings(cache, plan, [70])
    assert int(cache.get_seq_length()) == 70


@torch.no_grad()
@pytest.mark.parametrize("backend", DECODE_BACKENDS)
def test_static_left_padded_generate(case, backend):
    _, model, plan = case
    rows = [ids(12, seed=5)[0], ids(21, seed=6)[0]]
    n = max(len(r) for r in rows)
    batch, mask = left_padded(rows)
    zz.patch(model, plan, decode_backend=backend)
    kw = dict(max_new_tokens=25, min_new_tokens=25, do_sample=False)
    static = model.generate(batch, attention_mask=mask, cache_implementation="static", **kw)
    dynamic = model.generate(batch, attention_mask=mask, **kw)
    assert torch.equal(static, dynamic)
    full = torch.cat([mask, torch.ones(2, 25, dtype=torch.long)], dim=1)
    out, cache = run_static(model, static, [n - 3, 5] + [1] * 22, max_cache_len=n + 30, mask=full[:, :-1])
    assert_rings(cache, plan, full[:, :-1].sum(1).tolist())
    zz.unpatch(model)
    ref = reference_logits(model, plan, static[:, :-1], full[:, :-1])
    assert max_err(out, ref, full[:, :-1]) <= TOL


@torch.no_grad()
@pytest.mark.parametrize("family_model", ["llama", "qwen3"], indirect=True)
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("decode", DECODE_BACKENDS)
def test_compiled_decode_one_graph(case, dynamic, decode):
    """A decode step compiles to one graph (no breaks) that serves every step (no recompiles) and stays exact.

    (Not Gemma 3: transformers' own static sliding layers count tokens in Python ints and recompile every step.)"""
    _, model, plan = case
    x = ids(60, seed=8)
    ref = reference_logits(model, plan, x)
    zz.patch(model, plan, decode_backend=decode)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    step = torch.compile(model, backend=backend, fullgraph=True, dynamic=dynamic)
    cache = zz.make_cache(model, max_cache_len=64)
    out = [model(input_ids=x[:, :20], cache=cache).logits]
    out += [step(input_ids=x[:, t:t + 1], cache=cache).logits for t in range(20, 60)]
    torch._dynamo.reset()
    assert len(graphs) == 1
    assert max_err(torch.cat(out, dim=1), ref) <= TOL


@torch.no_grad()
def test_generate_compiled_skip_guards_same_tokens():
    """The README's speed setting: after warm-up, `generate`'s compiled decode under
    set_stance(skip_guard_eval_unsafe=True) gives the tokens it gives without it, and those equal eager decoding."""
    from transformers.generation.configuration_utils import CompileConfig

    model = tiny_model("llama")
    zz.patch(model, plans_for(model)["exclusive"])
    config = CompileConfig(backend="eager")
    config._compile_all_devices = True  # generate compiles only on accelerators otherwise
    x = ids(40, seed=5)
    kw = {"max_new_tokens": 24, "do_sample": False, "cache_implementation": "static", "compile_config": config,
          "pad_token_id": 0}
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    warm = model.generate(x, **kw)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it did compile
    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
        got = model.generate(x, **kw)
    model.generation_config.disable_compile = True
    eager = model.generate(x, **kw)
    torch._dynamo.reset()
    assert torch.equal(got, warm) and torch.equal(got, eager)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["exclusive", "mixed", "streaming"])
@pytest.mark.parametrize("window", [100_000, 2**31 - 1])  # the largest window a plan allows (plan.MAX_TOKENS)
def test_ring_no_longer_than_the_cache(kind, window):
    """A window longer than max_cache_len: rings of max_cache_len + 1 slots (not sink + window + 1, which would
    take gigabytes or fail to allocate), so no more bytes than a plain static cache of max_cache_len + 1; exact;
    a clear error past max_cache_len."""
    model = tiny_model("llama")
    plans = {**plans_for(model), "streaming": zz.Plan.from_layers(["streaming"] * 4, sink=SINK, window=WINDOW)}
    plan = dataclasses.replace(plans[kind], window=window)  # "streaming": no static layer bounds the length
    x = ids(20, seed=11)
    ref = reference_logits(model, plan, x)
    with zz.patched(model, plan):
        out, cache = run_static(model, x, [13, 1, 6], max_cache_len=24)
        with pytest.raises(ValueError, match="holds 24 tokens per row"):  # not a token silently dropped
            model(ids(5), cache=cache)
    assert max_err(out, ref) <= TOL
    assert_rings(cache, plan, [20])
    c = model.config
    plain = 2 * c.num_hidden_layers * c.num_key_value_heads * 25 * (c.hidden_size // c.num_attention_heads) * 4
    assert cache.nbytes() <= plain


def test_static_cache_errors(family_model):
    _, model = family_model
    plan = plans_for(model)["exclusive"]
    with pytest.raises(ValueError, match="not patched"):
        zz.make_cache(model, max_cache_len=8)
    with zz.patched(model, plan):
        with pytest.raises(ValueError, match="max_cache_len must be a positive int"):
            zz.make_cache(model, max_cache_len=0)
        cache = zz.make_cache(model, max_cache_len=16)
        model(ids(5), cache=cache)
        with pytest.raises(ValueError, match="batch of 1 rows but the input has 2"):
            model(ids(1, batch=2), cache=cache)


def test_head_groups_are_slices_or_fixed_indices(family_model):
    """A mixed layer's contiguous head group is a view; a split one an index with a fixed address (a CUDA graph
    would otherwise copy it in every step). The matrix's mixed plan has both kinds."""
    r, s = head_groups([1, 2], [0, 3], torch.device("cpu"))
    x = torch.randn(2, 4, 3, 5)
    assert r.index is None and r(x).data_ptr() == x[:, 1].data_ptr() and torch.equal(r(x), x[:, 1:3])
    assert s.index is not None and torch.equal(s(x), x[:, [0, 3]])
    assert getattr(s.index, "_dynamo_static_input_type", None) == "unguarded"
    _, model = family_model
    plan = plans_for(model)["mixed"]
    with zz.patched(model, plan):
        cache = zz.make_cache(model, max_cache_len=16)
        model(ids(5), cache=cache)
    groups = [g for layer in cache.layers if isinstance(layer, StaticMixedLayer) for g in layer._groups]
    assert any(g.index is None for g in groups) and any(g.index is not None for g in groups)


@pytest.mark.parametrize("backend", DECODE_BACKENDS)
@pytest.mark.parametrize("keys", [7, 300, 1024, 1100, 2048])
def test_decode_attention_matches_sdpa(keys, backend):
    """Split over key chunks or SDPA, grouped heads, boolean / additive / no mask; a fully masked chunk is
    harmless; a row that sees nothing (a padding query) stays finite."""
    from zigzag_attn.runtime.kernels import decode_attention

    g = torch.Generator().manual_seed(keys)
    q, k, v = (torch.randn(3, h, n, 16, generator=g).to(DEVICE) for h, n in ((8, 1), (2, keys), (2, keys)))
    mask = (torch.rand(3, 1, 1, keys, generator=g) > 0.3).to(DEVICE)
    mask[1, ..., : keys // 2] = False
    mask[..., -1] = True
    mask[2] = False
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1),
                                                           attn_mask=mask, scale=0.3).transpose(1, 2)
    additive = torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    sdpa = backend == "sdpa"
    for m in (mask, additive):
        out = decode_attention(q, k, v, m, scale=0.3, sdpa=sdpa)
        assert out[2].isfinite().all()
        assert (out[:2] - ref[:2]).abs().max() < 1e-5
    one_row = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(
        4, 1), attn_mask=mask[:1], scale=0.3).transpose(1, 2)  # one mask row for the whole batch
    assert (decode_attention(q, k, v, mask[:1], scale=0.3, sdpa=sdpa) - one_row).abs().max() < 1e-5
    everything = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(4, 1),
                                                                  v.repeat_interleave(4, 1)).transpose(1, 2)
    assert (decode_attention(q, k, v, None, scale=None, sdpa=sdpa) - everything).abs().max() < 1e-5
