"""benchmarks/layer_cost.py --smoke (CPU, tiny shape): it writes a cost file that loads, covers its whole grid with
positive figures keyed by head_dim, answers for them instead of the fallback, and is found by `for_device`.
No timing is asserted: CPU times say nothing about the GPU."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from zigzag_attn.cost import CostModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import layer_cost  # noqa: E402


def test_smoke_run_writes_a_loadable_cost_file(tmp_path):
    path = layer_cost.main(["--out", str(tmp_path), "--smoke", "--max-seconds", "1e9"])
    assert path == tmp_path / "cpu.json"
    cost = CostModel.load(path)
    raw = json.loads(path.read_text())
    assert raw["version"] == 2 and raw["device"] == "cpu" and raw["meta"]["skipped"] == raw["meta"]["failed"] == []
    assert raw["meta"]["shapes"]["tiny"] == {"num_heads": 4, "num_kv_heads": 2, "head_dim": 8, "hidden_size": 32,
                                             "bias": False}
    smoke = layer_cost.SMOKE
    lengths = [int(n) for n in smoke["contexts"].split(",")]
    batches = [int(b) for b in smoke["batches"].split(",")]
    expected = {(p, b, h, 2, 8) for p in ("decode", "prefill") for b in batches for h in (0, 1, 2)
                if p == "decode" or b * lengths[0] <= smoke["prefill_max_tokens"]}
    assert set(cost.points) == expected  # retrieval, streaming and mixed layers, both phases, every batch
    for key, pts in cost.points.items():
        got = [n for n, _ in pts]
        assert got == [n for n in lengths if key[0] == "decode" or key[1] * n <= smoke["prefill_max_tokens"]]
        assert all(math.isfinite(t) and t > 0 for _, t in pts), (key, pts)
    fallback = CostModel()
    kw = dict(sink=smoke["sink"], window=smoke["window"], head_dim=8)
    for (phase, b, h, H, d), pts in cost.points.items():
        n, t = pts[-1]
        if phase == "decode":
            assert cost.decode(h, H, context_length=n, batch=b, **kw) == t != fallback.decode(
                h, H, context_length=n, batch=b, **kw)
        else:
            assert cost.prefill(h, H, context_length=n, batch=b, head_dim=d) == t
    assert CostModel.for_device("cpu", directory=tmp_path).points == cost.points


def test_append_keeps_the_figures_of_an_earlier_run(tmp_path):
    layer_cost.main(["--out", str(tmp_path), "--smoke", "--phases", "decode", "--max-seconds", "1e9"])
    decode = CostModel.load(tmp_path / "cpu.json").points
    assert {k[0] for k in decode} == {"decode"}
    layer_cost.main(["--out", str(tmp_path), "--smoke", "--phases", "prefill", "--append", "--max-seconds", "1e9"])
    both = CostModel.load(tmp_path / "cpu.json")
    assert {k: v for k, v in both.points.items() if k[0] == "decode"} == decode
    assert {k[0] for k in both.points} == {"decode", "prefill"} and len(both.meta["earlier_runs"]) == 1
