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
    for n, edge in ((50, 100), (301, 300)):  # outside the measured range: the nearest figure, moved by the fallback
        moved = fallback.decode(1, 3, context_length=n, **KW) - fallback.decode(1, 3, context_length=edge, **KW)
        nearest = c.decode(1, 3, context_length=edge, **KW)
        assert c.decode(1, 3, context_length=n, **KW) == pytest.approx(nearest + moved)
        assert c.origin(1, 3, context_length=n, **KW).startswith("extrapolated: outside the measured 100..300 tokens")
    assert c.origin(1, 3, context_length=200, **KW) == "measured"
    assert c.decode(1, 3, context_length=200, **{**KW, "batch": 2}) == fallback.decode(
        1, 3, context_length=200, **{**KW, "batch": 2})  # no figures for batch 2: the fallback, and it says so
    assert c.origin(1, 3, context_length=200, **{**KW, "batch": 2}).startswith(
        "fallback: the bytes-read model (no measured decode figures for these heads at batch=2, H=3, head_dim=4)")
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
    (lambda d: d["points"][0].update(seconds=float("inf")), r"seconds >= 0 and finite; got seconds=inf"),
    (lambda d: d.update(dtype_bytes=0), "dtype_bytes must be > 0"),  # else reading the KV cache is free
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
    # beyond N: between h=1 and h=4, each moved past its last figure by the fallback (16 ns per retrieval head-token)
    assert c.decode(2, 8, context_length=300, **KW) == pytest.approx(4 + 2 * 100 * 16e-9)
    assert c.origin(2, 8, context_length=300, **KW).startswith("interpolated: between the measured mixed layers of 1 "
                                                               "and 4 retrieval heads (extrapolated: outside")


def test_mixed_layers_above_the_highest_measured_mixed_layer_fall_back():
    """Between the highest measured mixed layer and the retrieval layer there is nothing to interpolate with: a
    retrieval layer makes one attention call, a mixed one two."""
    pts = {("decode", 1, h, 8, 4): [(100, t)] for h, t in ((0, 0.1), (1, 1.0), (4, 4.0), (8, 9.0))}
    c, fallback = CostModel(bandwidth=1e9, call_overhead=1e-6, points=pts), CostModel(bandwidth=1e9, call_overhead=1e-6)
    assert c.decode(3, 8, context_length=100, **KW) == 3.0  # below 4: interpolated
    for h in (5, 7):
        assert c.decode(h, 8, context_length=100, **KW) == fallback.decode(h, 8, context_length=100, **KW)
        assert c.origin(h, 8, context_length=100, **KW).startswith("fallback")


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


def test_shipped_predictions_stay_monotone_and_continuous_past_the_measured_range():
    """The H200 figures cover 4,096..131,072 tokens: one token outside, a prediction moves by one token's bytes (it
    fell 40-60% to the bytes-read model before), never falls as the context grows past either end, and says where it
    came from."""
    c = CostModel.for_device("NVIDIA H200")
    assert "measured: nvidia-h200.json" in c.source and "extrapolated" in c.source and "bytes-read" in c.source
    kw = dict(batch=1, sink=64, window=256, head_dim=64)
    assert c.decode(2, 2, context_length=131_072, **kw) == pytest.approx(102.112e-6)
    assert c.decode(2, 2, context_length=131_073, **kw) == pytest.approx(102.112e-6, rel=1e-4)
    assert c.decode(2, 2, context_length=4095, **kw) == pytest.approx(76.112e-6, rel=1e-4)
    for (phase, b, _, H, d) in {k for k in c.points if k[0] == "decode"}:
        kw = dict(batch=b, sink=64, window=256, head_dim=d)
        for h in range(H + 1):  # mixed layers between measured ones included
            low = [c.decode(h, H, context_length=n, **kw) for n in (1, 300, 320, 4000, 4095, 4096)]
            high = [c.decode(h, H, context_length=n, **kw) for n in (131_072, 131_073, 200_000, 10**6)]
            for t in (low, high):
                assert all(0 < x <= y for x, y in zip(t, t[1:], strict=False)), (b, h, H, d, t)
            assert low[-1] - low[-2] < 1e-8 and high[1] - high[0] < 1e-8  # one token's bytes: under 10 ns
            where = [c.origin(h, H, context_length=n, **kw).split(":")[0] for n in (4095, 4096, 131_073)]
            assert where[0] == where[2] == ("extrapolated" if (phase, b, h, H, d) in c.points else "interpolated")
            assert where[1] == ("measured" if (phase, b, h, H, d) in c.points else "interpolated")
