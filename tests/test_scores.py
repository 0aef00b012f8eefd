"""`Scores`: construction, validation and lossless JSON persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zigzag_attn.plan import ModelInfo, Plan
from zigzag_attn.scores import Scores

MODEL = ModelInfo("llama", 3, 2, 64, name="toy-3l", native_sliding={1: 128})


def test_construction_and_aggregates():
    heads = [[1.0, 3.0], [-2.0, 0.0], [4.0, 4.0]]
    sc = Scores(heads, model=MODEL, method="gates", meta={"steps": 10})
    assert sc.heads.dtype == torch.float32 and sc.layers.dtype == torch.float32
    assert (sc.num_layers, sc.num_kv_heads) == (3, 2)
    assert sc.layers.tolist() == [2.0, -1.0, 4.0]  # mean by default
    assert Scores(heads, aggregate="max").layers.tolist() == [3.0, 0.0, 4.0]
    assert Scores(heads, aggregate="sum").layers.tolist() == [4.0, -2.0, 8.0]
    assert Scores(heads, layers=[0, 1, 2]).layers.tolist() == [0.0, 1.0, 2.0]
    assert Scores(np.array(heads)) == Scores(torch.tensor(heads, dtype=torch.float64)) == Scores(heads)
    assert Scores([[3e38, 3e38]]).layers.item() == pytest.approx(3e38)  # the mean does not overflow
    assert repr(sc) == "Scores(3 layers x 2 KV heads, method='gates', model='toy-3l')"


def test_input_is_copied():
    t = torch.ones(2, 2, requires_grad=True)
    sc = Scores(t)
    with torch.no_grad():
        t.zero_()
    assert sc.heads.tolist() == [[1.0, 1.0], [1.0, 1.0]] and not sc.heads.requires_grad


@pytest.mark.parametrize("kw, message", [
    ({"heads": [1.0, 2.0]}, "heads must be 2-D [num_layers, num_kv_heads]; got shape (2,) (1-D)"),
    ({"heads": torch.zeros(2, 2, 2)}, "got shape (2, 2, 2) (3-D)"),
    ({"heads": torch.zeros(0, 4)}, "at least one layer and one KV head; got shape (0, 4)"),
    ({"heads": [[1.0, 2.0], [3.0]]}, "heads must be a rectangular array of numbers"),
    ({"heads": [[1.0, float("nan")], [0.0, float("inf")]]},
     "heads contains 2 NaN/inf value(s) (float32), the first at index (0, 1): nan"),
    ({"heads": [[1e39]]}, "heads contains 1 NaN/inf value(s) (float32)"),  # overflows float32
    ({"heads": [[3e38, 3e38]], "aggregate": "sum"}, "layer scores (the sum of heads) contains 1 NaN/inf"),
    ({"heads": [[1.0], [2.0]], "layers": [1.0, 2.0, 3.0]},
     "layers must have shape [2] (one score per layer of heads); got shape (3,)"),
    ({"heads": [[1.0], [2.0]], "layers": [1.0, float("-inf")]},
     "layers contains 1 NaN/inf value(s) (float32), the first at index 1: -inf"),
    ({"heads": [[1.0], [2.0]], "aggregate": "median"}, "aggregate must be one of mean, max, sum; got 'median'"),
    ({"heads": torch.zeros(3, 4), "model": MODEL}, "heads has shape (3, 4) but the model has 3 layers x 2 KV heads"),
    ({"heads": [[1.0]], "meta": {"f": object()}}, "meta must be JSON-serialisable"),
])
def test_validation(kw, message):
    with pytest.raises(ValueError) as e:
        Scores(**kw)
    assert message in str(e.value)


def test_wrong_types():
    with pytest.raises(TypeError, match="model must be a ModelInfo"):
        Scores([[1.0]], model={"num_layers": 1})
    with pytest.raises(TypeError, match="meta must be a dict"):
        Scores([[1.0]], meta=[1, 2])
    with pytest.raises(TypeError, match="method must be a string"):
        Scores([[1.0]], method=3)


f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 6), st.integers(1, 4), st.data())
def test_save_load_is_exact(tmp_path_factory, L, H, data):
    heads = data.draw(st.lists(st.lists(f32, min_size=H, max_size=H), min_size=L, max_size=L))
    layers = data.draw(st.none() | st.lists(f32, min_size=L, max_size=L))
    model = data.draw(st.none() | st.just(ModelInfo("m", L, H, 32, name="n", native_sliding={0: 4096})))
    meta = data.draw(st.dictionaries(st.text(max_size=5), st.lists(st.floats(allow_nan=False)) | st.text()))
    sc = Scores(heads, layers, model, data.draw(st.none() | st.sampled_from(["gates", "attention"])), meta)
    path = tmp_path_factory.mktemp("s") / "scores.json"
    assert sc.save(path) == path
    back = Scores.load(str(path))
    assert back == sc
    assert back.heads.tolist() == sc.heads.tolist() and back.layers.tolist() == sc.layers.tolist()
    assert Scores.from_json(json.loads(json.dumps(sc.to_json()))) == sc


def test_file_format(tmp_path):
    sc = Scores([[1.5, 2.0]], method="measured", meta={"loss": [1.0, 0.5]})
    data = json.loads(sc.save(tmp_path / "s.json").read_text())
    assert data["format"] == "zigzag-attn/scores" and data["version"] == 1
    assert data["heads"] == [[1.5, 2.0]] and data["layers"] == [1.75] and data["meta"] == {"loss": [1.0, 0.5]}


def test_bad_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        Scores.load(missing)

    cases = {
        "corrupt.json": ("{not json", "is not valid JSON"),
        "binary.json": (b"\xff\xfe\x00", "is not valid JSON"),
        "list.json": ("[1, 2]", "is not a zigzag-attn scores file"),
        "future.json": (json.dumps({"format": "zigzag-attn/scores", "version": 2}), "scores format version 2"),
        "damaged.json": (json.dumps({"format": "zigzag-attn/scores", "version": 1, "layers": [1.0]}),
                         "is a damaged scores file: missing or malformed field 'heads'"),
        "invalid.json": (json.dumps({"format": "zigzag-attn/scores", "version": 1, "heads": [1.0], "layers": [1.0]}),
                         "heads must be 2-D"),
        "badmodel.json": (json.dumps({"format": "zigzag-attn/scores", "version": 1, "heads": [[1.0]],
                                      "layers": [1.0], "model": {"num_layers": 1}}), "damaged scores file"),
        "nowindow.json": (json.dumps({"format": "zigzag-attn/scores", "version": 1, "heads": [[1.0]], "layers": [1.0],
                                      "model": {"model_type": "gemma3_text", "num_layers": 1, "num_kv_heads": 1,
                                                "head_dim": 8, "native_sliding": {"0": 0}}}),
                          "model.native_sliding[0] must be >= 1 (the layer's own window in tokens); got 0"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        with pytest.raises(ValueError) as e:
            Scores.load(path)
        assert str(path) in str(e.value) and message in str(e.value), name

    plan_file = Plan.from_layers(["retrieval"], sink=4, window=8).save(tmp_path / "plan.json")
    with pytest.raises(ValueError, match=r"plan\.json is not a zigzag-attn scores file"):
        Scores.load(plan_file)
