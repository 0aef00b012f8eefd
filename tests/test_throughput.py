"""benchmarks/throughput.py and host_time.py on CPU (--smoke): the rows exist, are consistent, and the largest
batch found is the largest the pretend memory budget allows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(out: Path, *extra: str) -> list[dict]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--smoke", "--layers", "2",
           "--contexts", "512", "--steps", "2", "--host-steps", "2", "--prefill-tokens", "1024", "--margin-gb", "0",
           "--mem-gb", "0.012", "--out", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 512 | zigzag |" in done.stdout  # the table was printed
    assert (out / "throughput.png").stat().st_size > 0
    return [json.loads(s) for s in (out / "throughput.jsonl").read_text().splitlines()]


def rows_of(rows: list[dict], part: str) -> dict:
    return {r["policy"]: r for r in rows if r["part"] == part}


def test_largest_batch_and_rows(tmp_path):
    rows = run(tmp_path, "--policies", "zigzag,full,mixed", "--compiled-contexts", "")
    probe, limit, prefill, decode = (rows_of(rows, p) for p in ("probe", "limit", "prefill", "decode"))
    assert set(limit) == {"zigzag", "full", "mixed"}
    for policy, lim in limit.items():
        b = lim["batch"]
        # the search ended on a batch that fits next to one that does not
        assert [b, True] in lim["trials"] and [b + 1, False] in lim["trials"]
        assert lim["need_GB"] <= lim["room_GB"]
        # on CPU the pretend budget decides: the next batch's cache alone would not fit
        assert (b + 1) * probe[policy]["per_seq_bytes"] > lim["room_GB"] * 1e9
        d = decode[policy]
        assert d["mode"] == "eager" and d["batch"] == b and d["fallback"] is None
        assert abs(d["tok_s"] - b / d["ms"] * 1e3) < 1e-6 * d["tok_s"]
        assert abs(d["cache_GB"] * 1e9 - b * probe[policy]["per_seq_bytes"]) < 1e3
        p = prefill[policy]
        assert p["k"] == 2 and abs(p["batch_ms_derived"] - p["ms"] / 2 * b) < 1e-6 * p["ms"] * b
    # one KV budget: mixed and zigzag hold the same bytes per sequence, fewer than full
    assert probe["zigzag"]["per_seq_bytes"] == probe["mixed"]["per_seq_bytes"] < probe["full"]["per_seq_bytes"]
    assert limit["zigzag"]["batch"] > limit["full"]["batch"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from throughput_report import ratios

    ratio = {r["vs"]: r for r in ratios(rows)}
    assert ratio["full"]["batch"] == limit["zigzag"]["batch"] / limit["full"]["batch"]
    assert ratio["full"]["tok_s"] == decode["zigzag"]["tok_s"] / decode["full"]["tok_s"]


def test_compiled_step_and_host_time(tmp_path):
    rows = run(tmp_path, "--policies", "zigzag", "--compiled-contexts", "512", "--backend", "eager", "--host-time")
    decode, host = rows_of(rows, "decode")["zigzag"], rows_of(rows, "host")["zigzag"]
    assert decode["mode"] == "compiled" and decode["first_call_s"] > 0
    assert host["recompiles"] == 0 and host["batch"] == decode["batch"]
    groups = host["profile"]["groups"]
    assert abs(sum(g["ms"] for g in groups.values()) - host["profile"]["profiled_ms"]) < 0.01 * len(groups)
    assert "ours (zigzag_attn)" not in groups  # our Python is traced into the graph, not run per step
    for name, s in host["settings"].items():
        assert "unavailable" in s or s["same_logits"], name
    assert host["settings"]["default"]["same_logits"]


def test_compile_past_its_limit_falls_back_to_eager(tmp_path):
    rows = run(tmp_path, "--policies", "zigzag", "--compiled-contexts", "512", "--backend", "eager",
               "--compile-limit-s", "0.05")
    decode = rows_of(rows, "decode")["zigzag"]
    assert decode["mode"] == "eager" and "CompileTimeout" in decode["fallback"]


def test_compile_out_of_memory_tries_a_smaller_batch(tmp_path, monkeypatch):
    """A compile that runs out of memory beside the largest batch leaves that row eager and is tried again compiled
    at --compile-retry x the batch; the ratios take the best tokens/s but the batch at the limit."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import throughput
    import throughput_report

    failed = []

    def run_step(fn):  # the first compile attempt (at the limit batch) runs out of memory
        if not failed:
            failed.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return fn()

    monkeypatch.setattr(throughput, "run_step", run_step)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--smoke", "--layers", "2", "--contexts", "512", "--steps", "2",
                                      "--prefill-tokens", "1024", "--margin-gb", "0", "--mem-gb", "0.012",
                                      "--policies", "zigzag,full", "--compiled-contexts", "512", "--backend", "eager",
                                      "--compile-retry", "0.5", "--out", str(tmp_path)])
    throughput.main()
    rows = [json.loads(s) for s in (tmp_path / "throughput.jsonl").read_text().splitlines()]
    limit, decode, smaller = (rows_of(rows, p) for p in ("limit", "decode", "decode_smaller"))
    assert decode["zigzag"]["mode"] == "eager" and "OutOfMemoryError" in decode["zigzag"]["fallback"]
    assert decode["zigzag"]["batch"] == limit["zigzag"]["batch"]
    s = smaller["zigzag"]
    assert s["mode"] == "compiled" and s["batch"] == max(1, int(limit["zigzag"]["batch"] * 0.5))
    assert "full" not in smaller  # full compiled at its limit: no retry
    assert decode["full"]["mode"] == "compiled"
    ratio = {r["vs"]: r for r in throughput_report.ratios(rows)}["full"]
    assert ratio["batch"] == limit["zigzag"]["batch"] / limit["full"]["batch"]
    best = max(decode["zigzag"]["tok_s"], s["tok_s"])
    assert abs(ratio["tok_s"] - best / decode["full"]["tok_s"]) < 1e-9
    table = throughput.report(rows)
    assert f"| 512 | full | {ratio['batch']:.2f}x | {ratio['tok_s']:.2f}x |" in table
    assert "| 512 | zigzag, compiled below its limit |" in table
