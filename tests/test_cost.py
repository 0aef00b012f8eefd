"""The cost model: the bytes-read fallback, measured figures from a versioned JSON file, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zigzag_attn.cost import CostModel, device_slug

FIXTURE = Path(__file__).parent / "data" / "cost_example.json"
KW = dict(batch=1, sink=4, window=8, head_dim=4)


def test_bytes_model():
    c = CostModel(bandwidth=1e9, call_overhead=1e-6, dtype_bytes=2)
    per_token = 2 * 4 * 2 / 1e9  # K and V, head_dim 4, 2 bytes
    assert c.decode(3, 3, context_length=100, **KW) == pytest.approx(3 * 100 * per_token + 1e-6)
    assert c.decode(0, 3, context_length=100, **KW) == pytest.approx(3 * 12 * per_token + 1e-6)
    assert c.decode(1, 3, context_length=100, **KW) == pytest.approx((100 + 2 * 12) * per_token + 2e-6)  # 2 calls
    assert c.decode(0, 3, context_length=5, **KW) == pytest.approx(3 * 5 * per_token + 1e-6)  # shorter than sink+window
    assert c.decode(3, 3, context_length=100, **{**KW, "batch": 4}) == pytest.approx(4 * 3 * 100 * per_token + 1e-6)


def test_defaults_are_the_h200_figures():
    c = CostModel()
    assert (c.bandwidth, c.call_overhead) == (4.25e12, 45e-6) and c.describe()["kind"] == "bytes"


def test_measured_figures_override_inside_their_range():
    c = CostModel.load(FIXTURE)
    fallback = CostModel(bandwidth=1e9, call_overhead=1e-6)
    assert c.decode(1, 3, context_length=100, **KW) == 0.001
    assert c.decode(1, 3, context_length=200, **KW) == pytest.approx(0.002)  # linear in N between points
    assert c.decode(1, 3, context_length=250, **KW) == pytest.approx(0.0025)
    for n in (50, 301):  # outside the measured range: the fallback
        assert c.decode(1, 3, context_length=n, **KW) == fallback.decode(1, 3, context_length=n, **KW)
    assert c.decode(1, 3, context_length=200, **{**KW, "batch": 2}) == fallback.decode(
        1, 3, context_length=200, **{**KW, "batch": 2})
    assert c.decode(3, 3, context_length=100, **KW) == 0.0005  # a single point
    assert c.prefill(0, 3, context_length=1000, batch=2) == 0.25
    with pytest.raises(LookupError, match="no measured prefill"):
        c.prefill(1, 3, context_length=1000, batch=2)
    assert c.describe()["kind"] == "measured+bytes"


def test_round_trip(tmp_path):
    c = CostModel.load(FIXTURE)
    again = CostModel.load(c.save(tmp_path / "c.json"))
    assert again.to_json() == c.to_json() and again.points == c.points


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="zigzag-attn/plan"), "not a zigzag-attn cost file"),
    (lambda d: d.update(version=3), "cost format version 3"),
    (lambda d: d.update(version=2, points=[{**d["points"][0], "head_dim": 0}]), r"points\[0\].head_dim must be"),
    (lambda d: d.update(meta=[1]), "meta must be an object"),
    (lambda d: d.pop("bandwidth"), "missing or malformed field 'bandwidth'"),
    (lambda d: d.update(bandwidth=0), "bandwidth must be > 0"),
    (lambda d: d["points"][0].update(phase="train"), r"points\[0\].phase"),
    (lambda d: d["points"][0].update(heads=4), r"retrieval heads must be an integer in \[0, 3\]"),
    (lambda d: d["points"][0].update(context_length=1.5), "must be integers"),
    (lambda d: d["points"][0].update(seconds=-1), "seconds >= 0"),
    (lambda d: d["points"][1].update(context_length=100), "repeats context_length 100"),
    (lambda d: d.update(points=[1]), "damaged cost file"),
])
def test_damaged_files(tmp_path, edit, message):
    d = json.loads(FIXTURE.read_text())
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message):
        CostModel.load(path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="retrieval heads must be an integer in"):
        CostModel().decode(4, 3, context_length=10, **KW)
    with pytest.raises(ValueError, match="call_overhead must be a finite number"):
        CostModel(call_overhead=-1)


def test_head_dim_keys_and_version_1_figures():
    """Version-2 figures answer for their head_dim only; version-1 figures (no head_dim) for every head_dim."""
    c = CostModel(bandwidth=1e9, call_overhead=1e-6, points={
        ("decode", 1, 3, 3, 4): [(100, 0.5)], ("decode", 1, 3, 3): [(100, 0.25)]})
    assert c.decode(3, 3, context_length=100, **KW) == 0.5  # KW has head_dim 4
    assert c.decode(3, 3, context_length=100, **{**KW, "head_dim": 8}) == 0.25
    again = CostModel.from_json(c.to_json())
    assert again.points == c.points and c.to_json()["version"] == 2
    assert "head_dim" not in CostModel.load(FIXTURE).to_json()["points"][0]  # a version-1 file reads as before


def test_mixed_layers_interpolate_between_measured_mixed_layers():
    pts = {("decode", 1, h, 8, 4): [(100, t), (200, 2 * t)] for h, t in ((1, 1.0), (4, 4.0), (7, 7.0))}
    pts[("decode", 1, 0, 8, 4)] = [(100, 0.1)]
    pts[("decode", 1, 8, 8, 4)] = [(100, 9.0)]
    c = CostModel(bandwidth=1e9, call_overhead=1e-6, points=pts)
    assert c.decode(2, 8, context_length=100, **KW) == 2.0
    assert c.decode(6, 8, context_length=150, **KW) == 9.0  # in h and in N
    fallback = CostModel(bandwidth=1e9, call_overhead=1e-6)
    # no measured mixed layer below h=1: streaming and retrieval layers are not used (their single call differs)
    c2 = CostModel(bandwidth=1e9, call_overhead=1e-6, points={k: v for k, v in pts.items() if k[2] != 1})
    assert c2.decode(1, 8, context_length=100, **KW) == fallback.decode(1, 8, context_length=100, **KW)
    assert c.decode(2, 8, context_length=300, **KW) == fallback.decode(2, 8, context_length=300, **KW)  # beyond N


def test_for_device_picks_the_shipped_file_or_falls_back(tmp_path):
    CostModel.load(FIXTURE).save(tmp_path / "nvidia-h200.json")
    found = CostModel.for_device("NVIDIA H200", directory=tmp_path)
    assert found.points == CostModel.load(FIXTURE).points and "measured: nvidia-h200.json" in found.source
    assert found.describe()["source"] == found.source
    other = CostModel.for_device("NVIDIA A100-SXM4-80GB", directory=tmp_path)
    assert other.points == {} and other.describe()["kind"] == "bytes"
    assert "no measured figures for 'NVIDIA A100-SXM4-80GB' (have: nvidia-h200)" in other.source
    assert "fallback" in CostModel.for_device("X", directory=tmp_path / "missing").source
    assert device_slug("NVIDIA H200") == "nvidia-h200" and device_slug(" NVIDIA A100-SXM4-80GB ") == \
        "nvidia-a100-sxm4-80gb"
    with pytest.raises(ValueError, match="no letters or digits"):
        device_slug("--")


def test_for_device_without_cuda_falls_back(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert CostModel.for_device().source.startswith("fallback: no CUDA device")


def test_shipped_cost_files_load():
    from zigzag_attn.cost import COSTS_DIR

    for path in COSTS_DIR.glob("*.json"):
        c = CostModel.load(path)
        assert c.points and device_slug(c.device) == path.stem, path
