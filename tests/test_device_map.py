"""Patched models whose layers accelerate places or offloads: the same numbers, bounded caches where the layers run.

Only CPU here, so every accelerate path below executes on "cpu": an explicit `device_map` through `dispatch_model`
and through `from_pretrained` with some layers offloaded to disk (their weights are "meta" between calls, loaded
by hooks), and the `cpu_offload` / `disk_offload` helpers. A model split over two devices is simulated by running
its last layers on "meta" under accelerate hooks: that checks where positions and caches go, not numbers (meta
computes shapes only). Real GPUs, one or several: benchmarks/multi_gpu.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import cpu_offload, disk_offload, dispatch_model
from accelerate.hooks import AlignDevicesHook, add_hook_to_module
from conftest import plans_for, tiny_model
from transformers import AutoModelForCausalLM

import zigzag_attn as zz
from zigzag_attn.model_info import execution_device
from zigzag_attn.plan import RETRIEVAL
from zigzag_attn.runtime.cache import MixedLayer, SinkWindowLayer

HOWS = ("dispatch_model", "from_pretrained", "cpu_offload", "disk_offload")
GREEDY = dict(do_sample=False, return_dict_in_generate=True, output_logits=True)


def ids(n: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, 96, (batch, n), generator=torch.Generator().manual_seed(seed))


def device_map(model) -> dict[str, str]:
    """Even layers in memory, odd layers offloaded to disk."""
    top = {f"model.{n}": "cpu" for n, _ in model.model.named_children() if n != "layers"}
    layers = {f"model.layers.{i}": "cpu" if i % 2 == 0 else "disk" for i in range(len(model.model.layers))}
    return {**top, **layers, "lm_head": "cpu"}


def place(model, how: str, folder):
    if how == "dispatch_model":
        return dispatch_model(model, device_map=device_map(model), offload_dir=folder / "offload")
    if how == "from_pretrained":
        model.save_pretrained(folder / "saved")
        return AutoModelForCausalLM.from_pretrained(folder / "saved", device_map=device_map(model), dtype=torch.float32,
                                                    offload_folder=folder / "offload").eval()
    if how == "cpu_offload":
        return cpu_offload(model, execution_device="cpu")
    return disk_offload(model, folder / "offload", execution_device="cpu")


def cache_tensors(layer) -> list[torch.Tensor]:
    parts = (layer.full, layer.stream) if isinstance(layer, MixedLayer) else (layer,)
    return [t for p in parts for t in (p.keys, p.values)]


def check_cache(cache, model, plan):
    """Streaming layers bounded; every layer's keys and values on the device that runs that layer."""
    assert isinstance(cache, zz.ZigzagCache)
    for i, (layer, stored) in enumerate(zip(cache.layers, cache.stored_tokens(), strict=True)):
        if plan.modes[i] != RETRIEVAL:
            assert isinstance(layer, (SinkWindowLayer, MixedLayer)) and stored <= plan.sink + plan.window, (i, stored)
        where = execution_device(model.model.layers[i])
        assert {t.device for t in cache_tensors(layer)} == {where}, (i, where)


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind", ["exclusive", "mixed"])
@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
@torch.no_grad()
def test_patched_dispatched_model_matches_the_plain_one(family, kind, how, tmp_path):
    plain = tiny_model(family)
    model = place(copy.deepcopy(plain), how, tmp_path)
    if how in ("dispatch_model", "from_pretrained"):
        assert model.model.layers[1].self_attn.q_proj.weight.is_meta  # offloaded: loaded by a hook per call
    plan = plans_for(plain)[kind]
    x = ids(40)
    before, gen_before = model(x).logits, model.generate(x[:, :5], max_new_tokens=12, min_new_tokens=12, **GREEDY)
    zz.patch(plain, plan)
    zz.patch(model, plan)
    torch.testing.assert_close(model(x).logits, plain(x).logits, atol=1e-5, rtol=0)  # one-pass prefill
    got = model.generate(x[:, :6], max_new_tokens=30, min_new_tokens=30, **GREEDY)  # 36 tokens > sink + window
    want = plain.generate(x[:, :6], max_new_tokens=30, min_new_tokens=30, **GREEDY)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), atol=1e-5, rtol=0)
    cache = zz.cache_of(got)
    check_cache(cache, model, plan)
    assert [cache.stored_tokens()[i] for i in plan.streaming_layers] == [plan.sink + plan.window - 1] * len(
        plan.streaming_layers)
    zz.unpatch(model)
    assert torch.equal(model(x).logits, before)
    after = model.generate(x[:, :5], max_new_tokens=12, min_new_tokens=12, **GREEDY)
    assert torch.equal(after.sequences, gen_before.sequences)
    assert torch.equal(torch.stack(after.logits), torch.stack(gen_before.logits))


def split_on_meta(model):
    """Run layers 2.. and the head on "meta" under accelerate hooks, as a second GPU would hold them."""
    for module in (*model.model.layers[2:], model.model.norm, model.lm_head):
        module.to("meta")
        add_hook_to_module(module, AlignDevicesHook(execution_device="meta", io_same_device=False,
                                                    skip_keys=model._skip_keys_device_placement))
    return model


@pytest.mark.parametrize(("family", "kind"), [("llama", "exclusive"), ("llama", "mixed"), ("gemma3_text", "mixed")])
@torch.no_grad()
def test_layers_on_another_device_get_positions_and_cache_there(family, kind):
    """Positions are made on the input's device; a streaming layer elsewhere must get them on its own device.

    Before `Step.on`, the sink + window mask (and a padded batch's keep index) of layers 2-3 stayed on "cpu" and
    attention failed with "Tensor on device cpu is not on the expected device meta".
    """
    plain, model = tiny_model(family), split_on_meta(tiny_model(family))
    plan = plans_for(plain)[kind]
    assert {plan.modes[i] for i in (2, 3)} != {RETRIEVAL}, "a streaming or mixed layer must sit on the other device"
    x, mask = ids(20, batch=2), torch.ones(2, 20, dtype=torch.long)
    mask[0, :5] = 0  # a left-padded row: streaming layers gather the kept keys by an index
    caches = []
    for m in (plain, model):
        zz.patch(m, plan)
        out = m(input_ids=x[:, :14], attention_mask=mask[:, :14], use_cache=True)
        for t in range(14, 20):
            out = m(input_ids=x[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=zz.cache_of(out), use_cache=True)
        caches.append(zz.cache_of(out))
        assert m(input_ids=x, attention_mask=mask, use_cache=False).logits.shape == (2, 20, 96)  # no cache: measure
    assert out.logits.device.type == "meta" and out.logits.shape == (2, 1, 96)
    check_cache(caches[1], model, plan)
    assert [execution_device(layer).type for layer in model.model.layers] == ["cpu", "cpu", "meta", "meta"]
    assert caches[1].stored_tokens() == caches[0].stored_tokens()
    for i in (0, 1):  # the layers that stayed on cpu hold exactly what the plain model holds
        for a, b in zip(cache_tensors(caches[0].layers[i]), cache_tensors(caches[1].layers[i]), strict=True):
            assert torch.equal(a, b)
    zz.unpatch(plain)
    zz.unpatch(model)
