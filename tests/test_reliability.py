"""No silently wrong result from patch state, stale caches or plan files; clear refusals for
unsupported models. Each test names the defect it covers."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import COMMON, plans_for, tiny_model
from reference import reference_logits
from test_matrix import TOL, ids, max_err
from transformers import AutoConfig, AutoModelForCausalLM

import zigzag_attn as zz
from zigzag_attn.runtime.patch import cache_arg

ROOT = Path(__file__).resolve().parents[1]
L4 = ["streaming", "retrieval", "streaming", "retrieval"]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture
def mixed(llama):
    """(model, mixed plan, reference logits of 30 tokens); the model is unpatched afterwards."""
    plan = plans_for(llama)["mixed"]
    x = ids(30, seed=21)
    yield llama, plan, x, reference_logits(llama, plan, x)
    zz.unpatch(llama)


# -- 1: an unpickled model runs its own plan, in this process and in another ---------------------------------
@torch.no_grad()
def test_unpickled_model_after_its_name_was_unregistered(mixed):
    model, plan, x, ref = mixed
    zz.patch(model, plan)
    blob = pickle.dumps(model)
    zz.unpatch(model)
    loaded = pickle.loads(blob)
    assert zz.plan_of(loaded) == plan
    assert max_err(loaded(x).logits, ref) <= TOL
    zz.unpatch(loaded)
    assert torch.equal(loaded(x).logits, model(x).logits)


CHILD = """
import pickle, sys, torch
sys.path.insert(0, {tests!r})
import zigzag_attn as zz
from conftest import plans_for, tiny_model
from test_matrix import ids
model = tiny_model("llama")
plans = plans_for(model)
if sys.argv[1] == "save":
    zz.patch(model, plans["mixed"])
    open(sys.argv[2], "wb").write(pickle.dumps(model))
else:  # a process that has patched another model with another plan first
    zz.patch(model, plans["exclusive"])
    loaded = pickle.loads(open(sys.argv[2], "rb").read())
    with torch.no_grad():  # without a cache: nothing fails loudly if the wrong plan runs
        torch.save(loaded(ids(30, seed=21), use_cache=False).logits, sys.argv[3])
"""


@torch.no_grad()
def test_unpickled_model_in_another_process_runs_its_own_plan(tmp_path, mixed):
    _, _, _, ref = mixed
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for args in (["save", tmp_path / "model.pkl"], ["load", tmp_path / "model.pkl", tmp_path / "logits.pt"]):
        done = subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert max_err(torch.load(tmp_path / "logits.pt"), ref) <= TOL


# -- 3: a deepcopy carries the patch, and can be unpatched ---------------------------------------------------
@torch.no_grad()
def test_deepcopy_of_patched_model(mixed):
    model, plan, x, ref = mixed
    plain = model(x).logits
    zz.patch(model, plan)
    twin = copy.deepcopy(model)
    assert zz.plan_of(twin) == plan
    zz.unpatch(model)
    assert max_err(twin(x).logits, ref) <= TOL  # still runs its plan after the original is unpatched
    zz.unpatch(twin)
    assert zz.plan_of(twin) is None
    assert torch.equal(twin(x).logits, plain)
    assert torch.equal(model(x).logits, plain)


@torch.no_grad()
def test_attention_implementation_changed_after_patch(mixed):
    model, plan, x, _ = mixed
    plain = model(x).logits
    zz.patch(model, plan)
    model.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match="was set to 'sdpa' after zigzag_attn.patch"):
        model(x)
    zz.unpatch(model)
    assert torch.equal(model(x).logits, plain)


# -- 4: a cache remembers its plan and refuses a model that no longer runs it ---------------------------------
@torch.no_grad()
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("kind", ["exclusive", "mixed"])
def test_cache_refused_after_unpatch(llama, kind, static):
    plan = plans_for(llama)[kind]
    x = ids(30, seed=22)
    ref = reference_logits(llama, plan, x)
    zz.patch(llama, plan)
    cache = zz.make_cache(llama, max_cache_len=40) if static else zz.make_cache(llama)
    first = llama(x[:, :20], cache=cache, use_cache=True).logits
    zz.unpatch(llama)
    with pytest.raises(RuntimeError, match="was made for a model patched with .* the model using it is not patched"):
        llama(x[:, 20:21], use_cache=True, **{cache_arg(llama.forward): cache})  # an unpatched model's keyword
    assert int(cache.get_seq_length()) == 20  # untouched: patching again goes on exactly
    with zz.patched(llama, plan):
        rest = [llama(x[:, i:i + 1], cache=cache, use_cache=True).logits for i in range(20, 30)]
    assert max_err(torch.cat([first, *rest], dim=1), ref) <= TOL


@torch.no_grad()
def test_cache_from_patched_block_refused_after_it(llama):
    plan = zz.Plan.from_layers(L4, sink=3, window=8)
    x = ids(21, seed=23)
    with zz.patched(llama, plan):
        cache = zz.cache_of(llama(x[:, :20], use_cache=True))
    with pytest.raises(RuntimeError, match="not patched"):
        llama.generate(x, max_new_tokens=2, **{cache_arg(llama.forward): cache})


# -- 2: plan files whose parts disagree, or with loose types ---------------------------------------------------
def plan_file(tmp_path, **fields) -> Path:
    d = {"format": "zigzag-attn/plan", "version": 1, "sink": 4, "window": 8, "modes": ["retrieval"] * 2,
         "heads": None, "model": None, "provenance": {}, **fields}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("fields, match", [
    ({"heads": [[False, False]] * 2}, r"layer 0: mode 'retrieval' disagrees with its head mask \[False, False\]"),
    ({"modes": ["mixed", "retrieval"], "heads": [[True, True]] * 2}, "layer 0: mode 'mixed' disagrees"),
    ({"modes": ["streaming"] * 2, "heads": [["false", "false"]] * 2}, r"heads\[0\]\[0\] .* must be bool; got str"),
    ({"modes": ["mixed"] * 2, "heads": [[1, 0]] * 2}, r"heads\[0\]\[0\] .* must be bool; got int"),
    ({"modes": "retrieval"}, "modes must be list; got str"),
    ({"heads": "none"}, "heads must be list"),
    ({"provenance": "calibrated"}, "provenance .* must be dict; got str"),
    ({"window": 10**30}, "sink and window must be at most"),
    ({"head": [[True, False]] * 2}, r"unknown fields \['head'\]"),
    ({"model": {"model_type": "llama", "num_layers": "2", "num_kv_heads": 2, "head_dim": 8}},
     "model.num_layers must be int; got str"),
    ({"model": {"model_type": "llama", "num_layers": 2, "num_kv_heads": 2, "head_dim": 8,
                "native_sliding": {"0": "6"}}}, r"model.native_sliding\[0\] must be int"),
    *(({"model": {"model_type": "gemma3_text", "num_layers": 2, "num_kv_heads": 2, "head_dim": 8,
                  "native_sliding": {"0": w}}}, rf"model.native_sliding\[0\] must be >= 1 .* got {w}")
      for w in (0, -6)),
])
def test_inconsistent_or_loosely_typed_plan_file(tmp_path, fields, match):
    path = plan_file(tmp_path, **fields)
    with pytest.raises(ValueError, match=match) as err:
        zz.Plan.load(path)
    assert str(path) in str(err.value)


def test_python_plans_are_strict_too():
    with pytest.raises(TypeError, match=r"head mask \[0\]\[1\] must be True/False .* got str"):
        zz.Plan.from_heads([[True, "false"]] * 4, sink=4, window=8)
    with pytest.raises(ValueError, match="disagrees with its head mask"):
        zz.Plan(("streaming", "retrieval"), 4, 8, ((True, True), (True, True)))
    with pytest.raises(TypeError, match="provenance .* must be dict; got str"):
        zz.Plan.from_layers(L4, sink=4, window=8, provenance="calibrated")
    with pytest.raises(ValueError, match="sink and window must be at most"):
        zz.Plan.from_layers(L4, sink=4, window=10**30)
    assert zz.Plan.from_heads(torch.tensor([[1, 0]] * 4), sink=4, window=8).mixed_layers == [0, 1, 2, 3]


def test_deeply_nested_plan_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nests JSON too deeply") as err:
        zz.Plan.load(path)
    assert str(path) in str(err.value)


# -- 7 and 8: architectures refused at patch, in one sentence -----------------------------------------------
HYBRID = {  # tiny configs: layers 0 and 2 are not attention
    "qwen3_next": dict(head_dim=16, linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=8,
                       linear_value_head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=32, layer_types=["linear_attention", "full_attention"] * 2),
    "jamba": dict(num_experts=2, num_experts_per_tok=1, attn_layer_period=2, attn_layer_offset=1,
                  expert_layer_period=2, expert_layer_offset=1, mamba_d_state=4, mamba_dt_rank=8),
}
OTHER = {"gemma2": dict(head_dim=16, sliding_window=6, query_pre_attn_scalar=16), "stablelm": {}}


def tiny_other(family: str):
    torch.manual_seed(0)
    if family == "mamba":
        config = AutoConfig.for_model("mamba", vocab_size=96, hidden_size=64, num_hidden_layers=2, state_size=4)
    else:
        config = AutoConfig.for_model(family, **{**COMMON, **{**HYBRID, **OTHER}[family]})
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("family", list(HYBRID))
def test_streaming_a_non_attention_layer_is_refused(family):
    model = tiny_other(family)
    plan = zz.Plan.from_layers(["streaming", "retrieval", "retrieval", "streaming"], sink=2, window=4)
    with pytest.raises(ValueError, match=r"layers \[0\] of .* are 'linear_attention' layers, not softmax attention"):
        zz.patch(model, plan)
    assert zz.plan_of(model) is None


@torch.no_grad()
def test_hybrid_streaming_only_attention_layers_matches_reference():
    model = tiny_other("qwen3_next")
    plan = zz.Plan.from_layers(["retrieval", "streaming"] * 2, sink=2, window=4, model=zz.describe(model))
    x = ids(20, seed=24)
    ref = reference_logits(model, plan, x)
    with zz.patched(model, plan):
        first = model(x[:, :12], use_cache=True)
        rest = model(x[:, 12:], cache=zz.cache_of(first), use_cache=True).logits
        assert max_err(model(x).logits, ref) <= TOL
    assert max_err(torch.cat([first.logits, rest], dim=1), ref) <= TOL


@pytest.mark.parametrize("family, match", [
    ("mamba", r"MambaForCausalLM \(mamba\) has no attention heads"),
    ("gemma2", r"soft-caps its attention logits \(attn_logit_softcapping=50.0\)"),
    ("stablelm", "decoder layers of .* do not pass keyword arguments on to their attention"),
])
def test_unsupported_architecture_refused_at_patch(family, match):
    model = tiny_other(family)
    n = model.config.num_hidden_layers
    plan = zz.Plan.from_layers(["retrieval", "streaming"] + ["retrieval"] * (n - 2), sink=2, window=4)
    with pytest.raises(ValueError, match=match):
        zz.patch(model, plan)
    assert zz.plan_of(model) is None and zz.unpatch(model) is model


@torch.no_grad()
def test_retrieval_only_plan_runs_on_partly_supported_model():
    model = tiny_other("stablelm")
    x = ids(12, seed=25)
    plain = model(x).logits
    with zz.patched(model, zz.Plan.from_layers(["retrieval"] * 4, sink=2, window=4)):
        torch.testing.assert_close(model(x).logits, plain, rtol=0, atol=1e-5)


@torch.no_grad()
def test_assisted_decoding_message_without_streaming_layers(llama):
    with zz.patched(llama, zz.Plan.from_layers(["retrieval"] * 4, sink=2, window=4)):
        with pytest.raises(NotImplementedError, match="this plan streams no layer") as err:
            llama.generate(ids(10, seed=26), assistant_model=tiny_model("llama", seed=1), max_new_tokens=4)
    assert "dropped old tokens" not in str(err.value)
