"""The plans shipped in zigzag_attn/plans/: each loads by name, fits its model's real shape, keeps the ratio its
name states, and records how it was made."""

from __future__ import annotations

import math

import pytest

import zigzag_attn as zz
from zigzag_attn.plan import RETRIEVAL, SHIPPED_DIR

# (layers, KV heads, head_dim, native sliding layers) of the real models behind the aliases (zigzag_attn.models)
SHAPES = {"smollm2-135m": (30, 3, 64, 0), "gemma3-270m": (18, 1, 256, 15), "qwen2.5-coder-0.5b": (24, 2, 64, 0),
          "qwen2.5-coder-1.5b": (28, 2, 128, 0)}
NAMES = sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))


def test_every_model_alias_ratio_is_shipped():
    want = {f"{m}@{r}" for m in ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
            for r in ("0.5", "0.33", "0.25")} | {"gemma3-270m@0.33"}
    assert want <= set(NAMES), sorted(want - set(NAMES))


@pytest.mark.parametrize("name", [n for n in NAMES if "-m" not in n.split("@")[1]])
def test_shipped_plan_fits_its_model_and_ratio(name):
    alias, ratio = name.split("@")
    plan = zz.Plan.load(name)
    info = plan.model
    assert info is not None and info.name == alias
    layers, kv_heads, head_dim, sliding = SHAPES[alias]
    assert (plan.num_layers, info.num_kv_heads, info.head_dim, len(info.native_sliding)) == (
        layers, kv_heads, head_dim, sliding)
    assert all(plan.modes[i] == RETRIEVAL for i in info.native_sliding)
    choosable = [i for i in range(layers) if i not in info.native_sliding]
    kept = sum(plan.modes[i] == RETRIEVAL for i in choosable)
    assert kept == math.floor(float(ratio) * len(choosable) + 0.5)
    assert plan.heads is None  # layer-exclusive
    assert {"command", "method", "device"} <= set(plan.provenance)


@pytest.mark.parametrize("name", [n for n in NAMES if "-m" in n.split("@")[1]])
def test_shipped_hybrid_keeps_its_layer_plans_kv_with_at_most_m_mixed_layers(name):
    """"ALIAS@RATIO-mM": a hybrid with at most M mixed layers and exactly the KV of the shipped ALIAS@RATIO plan
    at every length (the same number of retrieval KV heads), recording what it was evaluated as."""
    base, m = name.rsplit("-m", 1)
    plan, layers = zz.Plan.load(name), zz.Plan.load(base)
    assert plan.model is not None and plan.model.name == base.split("@")[0]
    assert plan.heads is not None and 0 < len(plan.mixed_layers) <= int(m)
    assert sum(map(sum, plan.head_mask(plan.model.num_kv_heads))) == sum(
        map(sum, layers.head_mask(layers.model.num_kv_heads)))
    for n in (4096, 32768, 131072):
        assert plan.kv_fraction(n) == layers.kv_fraction(n)
    assert {"command", "method", "device", "evaluation"} <= set(plan.provenance)
