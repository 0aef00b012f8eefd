"""Bad input gets an error that names the problem."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

import zigzag_attn as zz
from zigzag_attn.runtime.patch import check_transformers_version

L4 = ["streaming", "retrieval", "streaming", "retrieval"]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.mark.parametrize("sink, window, match", [(-1, 8, "sink must be"), (4, 0, "window must be"),
                                                 (4, -3, "window must be"), (1.5, 8, "sink must be"),
                                                 (4, True, "window must be")])
def test_bad_sink_or_window(sink, window, match):
    with pytest.raises(ValueError, match=match):
        zz.Plan.from_layers(L4, sink=sink, window=window)


def test_unknown_mode():
    with pytest.raises(ValueError, match="layer 2: unknown mode 'full'"):
        zz.Plan.from_layers(["streaming", "retrieval", "full", "retrieval"], sink=4, window=8)


def test_ragged_head_mask():
    with pytest.raises(ValueError, match="same number"):
        zz.Plan.from_heads([[True, False], [True]], sink=4, window=8)


def test_layer_count_mismatch(llama):
    plan = zz.Plan.from_layers(L4 + ["retrieval"], sink=4, window=8)
    with pytest.raises(ValueError, match="plan has 5 layers but the model .* has 4"):
        zz.patch(llama, plan)


def test_head_count_mismatch(llama):
    plan = zz.Plan.from_heads([[True, False, True]] * 4, sink=4, window=8)
    with pytest.raises(ValueError, match="plan has 3 KV heads per layer but the model .* has 2"):
        zz.patch(llama, plan)


def test_plan_for_another_model(llama):
    info = zz.describe(tiny_model("qwen2"))
    plan = zz.Plan.from_layers(L4, sink=4, window=8, model=info)
    with pytest.raises(ValueError, match="made for a 'qwen2' model but this model is 'llama'"):
        zz.patch(llama, plan)


def test_native_sliding_layer_cannot_stream():
    gemma = tiny_model("gemma3_text")
    plan = zz.Plan.from_layers(["streaming", "streaming", "retrieval", "retrieval"], sink=4, window=8)
    with pytest.raises(ValueError, match=r"layers \[0\] already use the model's own sliding window \(6 tokens\)"):
        zz.patch(gemma, plan)


def test_mistral_sliding_config_is_all_native():
    mistral = tiny_model("mistral")
    mistral.config.sliding_window = 16
    info = zz.describe(mistral)
    assert sorted(info.native_sliding) == [0, 1, 2, 3]


@pytest.mark.parametrize("content, match", [("{not json", "is not valid JSON"),
                                            ('{"hello": 1}', "is not a zigzag-attn plan"),
                                            ('{"format": "zigzag-attn/plan", "version": 99}', "format version 99"),
                                            ('{"format": "zigzag-attn/plan", "version": 1, "sink": 4}',
                                             "damaged plan: missing or malformed field 'modes'"),
                                            ('{"format": "zigzag-attn/plan", "version": 1, "sink": -2, "window": 8,'
                                             ' "modes": ["streaming"]}', "sink must be")])
def test_bad_plan_files(tmp_path, content, match):
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        zz.Plan.load(path)
    assert str(path) in str(err.value)


def test_binary_plan_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(b"\x80\x04\x95pickle")
    with pytest.raises(ValueError, match="not valid JSON"):
        zz.Plan.load(path)


def test_missing_plan_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no plan file .*nope.json"):
        zz.Plan.load(tmp_path / "nope.json")


def test_plan_round_trip(tmp_path, llama):
    plan = zz.Plan.from_heads([[True, False], [False, False], [True, True], [False, True]], sink=4, window=8,
                              model=zz.describe(llama), provenance={"method": "test", "budget": 0.5})
    assert zz.Plan.load(plan.save(tmp_path / "p.json")) == plan
    assert json.loads((tmp_path / "p.json").read_text())["version"] == 1
    assert plan.mixed_layers == [0, 3] and plan.streaming_layers == [1] and not plan.is_layer_exclusive


def test_kv_fraction():
    plan = zz.Plan.from_layers(L4, sink=4, window=12, model=zz.ModelInfo("llama", 4, 2, 16))
    assert plan.kv_fraction(1000) == pytest.approx((2 * 1000 + 2 * 16) / 4000)
    assert plan.kv_fraction(10) == 1.0
    with pytest.raises(ValueError, match="context_length must be >= 1"):
        plan.kv_fraction(0)
    # a context shorter than a layer's own window (200) holds the context there, not the window, while the streaming
    # layer beside it holds sink + window (40) of the 100 tokens: (100 + 40) / (100 + 100)
    native = zz.ModelInfo("gemma3_text", 2, 1, 16, native_sliding={0: 200})
    assert zz.Plan.from_layers(["retrieval", "streaming"], sink=4, window=36, model=native).kv_fraction(100) == 0.7


def test_unsupported_transformers_version():
    with pytest.raises(RuntimeError, match="supports transformers >= 5.17 .* has 4.46"):
        check_transformers_version("4.46.0")
    with pytest.raises(RuntimeError, match="has 6.0"):
        check_transformers_version("6.0.0")


def test_bad_backend_and_plan_type(llama):
    plan = zz.Plan.from_layers(L4, sink=4, window=8)
    with pytest.raises(ValueError, match="streaming_backend must be one of"):
        zz.patch(llama, plan, streaming_backend="triton")
    with pytest.raises(TypeError, match="needs a zigzag_attn.Plan"):
        zz.patch(llama, {"modes": L4})


@torch.no_grad()
def test_four_d_mask_and_foreign_cache(llama):
    from transformers import DynamicCache

    plan = zz.Plan.from_layers(L4, sink=4, window=8)
    x = torch.randint(2, 96, (1, 10))
    with zz.patched(llama, plan):
        with pytest.raises(ValueError, match="2-D attention_mask"):
            llama(x, attention_mask=torch.ones(1, 1, 10, 10, dtype=torch.bool))
        full = DynamicCache()
        full.update(torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16), 0)
        with pytest.raises(ValueError, match="keeps its own cache; got a DynamicCache with tokens"):
            llama(x, cache=full, use_cache=True)
        with pytest.raises(ValueError, match="keeps its own cache; got a tuple"):
            llama(x, cache=((torch.zeros(1, 2, 3, 16),) * 2,), use_cache=True)
        with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 7\) .* expected \(1, 10\)"):
            llama(x, attention_mask=torch.ones(1, 7, dtype=torch.long))
        cache = zz.make_cache(llama)
        llama(x, cache=cache, use_cache=True)
        assert cache.get_seq_length() == 10
    with pytest.raises(ValueError, match="not patched"):
        zz.make_cache(llama)


@torch.no_grad()
def test_repatch_replaces_plan(llama):
    a = zz.Plan.from_layers(L4, sink=4, window=8)
    b = zz.Plan.from_layers(["retrieval"] * 4, sink=4, window=8)
    x = torch.randint(2, 96, (1, 20))
    before = llama(x).logits
    zz.patch(llama, a)
    zz.patch(llama, b)
    assert zz.plan_of(llama) is b
    torch.testing.assert_close(llama(x).logits, before, rtol=0, atol=1e-6)
    zz.unpatch(llama)
    assert torch.equal(llama(x).logits, before)


@torch.no_grad()
def test_flash_attn_only_when_asked_for(monkeypatch, llama):
    """With flash-attn importable, retrieval layers call it when asked for, and the results stay exact; "auto" never
    picks it, even for bfloat16 on CUDA (it has not been run on a GPU against the SDPA path)."""
    calls = []

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        calls.append(q.shape)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        lq, lk = q.shape[2], k.shape[2]
        mask = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale,
                                             enable_gqa=q.shape[1] != k.shape[1])
        return out.transpose(1, 2)

    fake = types.ModuleType("flash_attn")
    fake.flash_attn_func = flash_attn_func
    fake.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    plan = zz.Plan.from_layers(L4, sink=4, window=8)
    x = torch.randint(2, 96, (1, 24))
    with zz.patched(llama, plan):
        native = llama(x).logits
    with zz.patched(llama, plan, retrieval_backend="flash"):
        flash = llama(x).logits
    assert len(calls) == 2  # the two retrieval layers
    torch.testing.assert_close(flash, native, rtol=0, atol=1e-5)
    from zigzag_attn.runtime.attention import Dispatch

    on_gpu = types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, device=torch.device("cuda"))
    assert not Dispatch(plan, None).flash(on_gpu) and not Dispatch(plan, None, retrieval_backend="native").flash(on_gpu)
    assert Dispatch(plan, None, retrieval_backend="flash").flash(on_gpu)
