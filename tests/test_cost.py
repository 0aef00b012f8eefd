"""The cost model: the bytes-read fallback, measured figures from a versioned JSON file, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zigzag_attn.cost import CostModel

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
    (lambda d: d.update(version=2), "cost format version 2"),
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
