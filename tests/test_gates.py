"""DuoAttention-style gate training (`zigzag_attn.profile.gates`) on tiny random models and hand-made samples."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_model
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM

import zigzag_attn as zz
from zigzag_attn.data.passkey import IGNORE, Sample
from zigzag_attn.profile import gates as gates_module
from zigzag_attn.profile.gates import train_gates, upper_half_kept

SINK, WINDOW = 1, 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add sync cost (and stall badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def llama(layers: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", vocab_size=96, hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, eos_token_id=None, pad_token_id=0, bos_token_id=1)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def samples(lengths=(48, 40, 48), answer: int = 4, seed: int = 1) -> list[Sample]:
    """Random prompts; the last `answer` tokens are labelled, far beyond the window from most of the prompt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(2, 96, (n,), generator=g)
        labels = torch.full((n,), IGNORE)
        labels[-answer:] = ids[-answer:]
        out.append(Sample(ids, labels, ("x",), (0.5,)))
    return out


def checkpointing_on(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def train(model, data, **kw):
    return train_gates(model, data, sink=SINK, window=WINDOW, progress=False, **{"steps": 4, **kw})


def test_gates_keep_the_layer_that_needs_full_attention():
    model = llama(layers=3)
    with torch.no_grad():  # layers 0 and 2 write nothing: streaming and full outputs agree, only lam acts on them
        for i in (0, 2):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
    heads, layers, meta = train(model, samples(), steps=20, lr=0.1, lam=0.01, batch_size=2)
    assert heads.shape == (3, 2) and layers.shape == (3,)
    assert heads.dtype == torch.float32 and heads.device.type == "cpu"
    assert heads[1].min() > 0.9 and heads[[0, 2]].max() < 0.1
    assert torch.equal(layers, heads.mean(1))
    assert ((heads >= 0) & (heads <= 1)).all()
    assert len(meta["loss_curve"]) == len(meta["distill_curve"]) == 20
    assert {"granularity", "tie", "lam", "steps", "lr"} <= meta.keys()
    assert meta["mean_change"] > 0.6  # four gates went from 1 to near 0
    assert list(meta["snapshots"]) == ["5", "10", "15"]  # after a quarter, half and three quarters of the steps
    assert all(torch.tensor(g).shape == (3, 2) for g in meta["snapshots"].values())
    assert torch.tensor(meta["snapshots"]["5"]).min() > heads.min()  # the streaming gates were still falling


def test_upper_half_kept_counts_the_shared_upper_half():
    assert upper_half_kept([0.9, 0.8, 0.1, 0.2], [0.7, 0.9, 0.3, 0.1]) == 1.0
    assert upper_half_kept([0.9, 0.8, 0.1, 0.2], [0.1, 0.9, 0.8, 0.2]) == 0.5
    assert upper_half_kept([[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]) == 1.0  # ties: lower index, both sides


def test_gates_still_reranking_warn(monkeypatch):
    model = llama(layers=3)
    monkeypatch.setattr(gates_module, "MIN_CHANGE", 0.0)
    monkeypatch.setattr(gates_module, "MIN_SETTLED", 1.01)  # nothing is ever settled enough
    with pytest.warns(UserWarning, match="still re-ranking"):
        _, _, meta = train(model, samples(), steps=4, lr=0.1)
    assert 0 <= meta["settled"] <= 1


def test_gates_that_barely_moved_warn():
    model = llama(layers=3)
    with pytest.warns(UserWarning, match="moved only"):
        _, _, meta = train(model, samples(), steps=2, lr=1e-4)
    assert meta["mean_change"] < 0.01
    with warnings.catch_warnings():  # the trained run above moved its gates far: no warning
        warnings.simplefilter("error")
        with torch.no_grad():
            for i in (0, 2):
                model.model.layers[i].self_attn.o_proj.weight.zero_()
        train(model, samples(), steps=20, lr=0.1, lam=0.01, batch_size=2)


def test_deterministic_and_model_unchanged():
    model, data = llama(), samples()
    model.lm_head.weight.requires_grad_(False)
    grads = [p.requires_grad for p in model.parameters()]
    ids = torch.randint(2, 96, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    a = train(model, data, seed=5, batch_size=2)
    b = train(model, data, seed=5, batch_size=2)
    assert torch.equal(a[0], b[0]) and a[2]["loss_curve"] == b[2]["loss_curve"]
    assert model.config._attn_implementation == "sdpa"
    assert not [n for n in AttentionInterface._global_mapping if n.startswith("zigzag-gates")]
    assert [p.requires_grad for p in model.parameters()] == grads
    assert not model.training and all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_restored_after_an_exception(monkeypatch):
    model = llama()

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(gates_module.kernels, "sink_window_sdpa", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train(model, samples(), checkpointing=True)
    assert model.config._attn_implementation == "sdpa"
    assert not [n for n in AttentionInterface._global_mapping if n.startswith("zigzag-gates")]
    assert all(p.requires_grad for p in model.parameters())
    assert not model.training and not checkpointing_on(model)


def test_checkpointing_matches_and_is_turned_off_again():
    data = samples()
    plain = train(llama(), data, checkpointing=False)[0]
    model = llama()
    ckpt = train(model, data, checkpointing=True)[0]
    torch.testing.assert_close(ckpt, plain, atol=1e-5, rtol=0)
    assert not checkpointing_on(model)
    assert not any(m.training for m in model.modules())
    assert not getattr(model, "_require_grads_hooks", None)
    assert not model.get_input_embeddings()._forward_hooks


def test_layer_granularity_ties_heads():
    heads, layers, meta = train(llama(), samples(), granularity="layer", lam=0.5, tie=0.1)
    assert meta["granularity"] == "layer"
    assert torch.equal(heads, heads[:, :1].expand_as(heads)) and torch.equal(layers, heads[:, 0])
    assert (heads < 1).all()


def test_native_sliding_layers_stay_at_one():
    model = tiny_model("gemma3_text")  # layers 0 and 2 use the model's own sliding window
    heads, layers, _ = train(model, samples(lengths=(24, 20)), lam=1.0, batch_size=2)
    assert (heads[[0, 2]] == 1).all() and (heads[[1, 3]] < 1).all()
    assert torch.isfinite(heads).all()


@pytest.mark.parametrize("kw, match", [
    ({"granularity": "kv"}, "granularity must be one of head, layer"),
    ({"lam": -0.1}, "lam must be >= 0"),
    ({"tie": -1.0}, "tie must be >= 0"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"init": 1.5}, r"init must be in \[0, 1\]"),
    ({"warmup": -0.1}, "warmup must be"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        train(llama(layers=1), samples(), **kw)


def test_bad_samples_and_patched_model():
    model = llama(layers=1)
    with pytest.raises(ValueError, match="at least one sample"):
        train(model, [])
    unlabelled = Sample(torch.arange(2, 12), torch.full((10,), IGNORE), ("x",), (0.5,))
    with pytest.raises(ValueError, match="sample 0 has no answer tokens"):
        train(model, [unlabelled])
    plan = zz.Plan.from_layers(["streaming"], sink=SINK, window=WINDOW, model=zz.describe(model))
    with zz.patched(model, plan), pytest.raises(ValueError, match="unpatch it first"):
        train(model, samples())


def test_profile_with_gates():
    model = llama()
    scores = zz.profile(model, data=samples(), method="gates", sink=SINK, window=WINDOW, steps=3, lam=0.2,
                     progress=False)
    assert scores.method == "gates"
    assert scores.heads.shape == (3, 2) and scores.layers.shape == (3,)
    assert len(scores.meta["loss_curve"]) == 3 and scores.meta["samples"] == 3
