"""Tables (markdown) and a latency plot from the rows `bench.py` writes (bench.jsonl files).

    python benchmarks/bench.py --report A.jsonl [B.jsonl ...] --png latency.png

A later file's row replaces an earlier one's for the same point; rows are tagged with their file's name (`run`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

POLICIES = ("full", "fullk", "mixed", "zigzag", "fullk-fp8", "mixed-fp8", "zigzag-fp8", "zigzag-fp8-dq", "mixed-fp8-dq",
            "fullk-fp8-dq")
BASE = POLICIES[:4]  # the bf16 policies of the main tables; the FP8 ones get a table of their own
STYLES = {"full": "k-o", "fullk": "k--x", "mixed": "C1-s", "zigzag": "C0-^", "zigzag-fp8": "C2-v",
          "zigzag-fp8-dq": "C2:v", "mixed-fp8": "C1:s", "fullk-fp8": "k:x"}


def load_rows(paths: list[str]) -> list[dict]:
    """Rows of bench.jsonl files, each tagged with its file's name (`run`)."""
    rows = []
    for p in paths:
        rows += [{**json.loads(line), "run": Path(p).stem} for line in Path(p).read_text().splitlines()
                 if line.strip()]
    return rows


def repeats(rows: list[dict]) -> list[str]:
    """Compiled decode points measured in several runs: ms per run, spread, and zigzag's same-run speed-ups."""
    runs = list(dict.fromkeys(r["run"] for r in rows if r["part"] == "compiled" and "ms" in r))
    ms = {(r["policy"], r["batch"], r["n"], r["run"]): r["ms"] for r in rows if r["part"] == "compiled" and "ms" in r}
    points = sorted({k[:3] for k in ms}, key=lambda k: (POLICIES.index(k[0]), k[1], k[2]))
    points = [p for p in points if sum(p + (run,) in ms for run in runs) > 1]
    if not points:
        return []
    out = ["\n### Repeat runs, compiled decode (ms per run; spread = slowest / fastest - 1)\n",
           "| policy | B | N | " + " | ".join(runs) + " | spread |", "|---|---|---|" + "---|" * (len(runs) + 1)]
    for p in points:
        got = [ms.get(p + (run,)) for run in runs]
        vals = [v for v in got if v is not None]
        out.append(f"| {p[0]} | {p[1]} | {p[2]} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in got)
                   + f" | {max(vals) / min(vals) - 1:.0%} |")
    same = [(run, b, n, ms[(other, b, n, run)] / ms[("zigzag", b, n, run)], other)
            for (pol, b, n, run) in ms if pol == "zigzag" for other in ("mixed", "full", "fullk")
            if (other, b, n, run) in ms]
    if same:
        out += ["\n### Zigzag's speed-up measured within one run (compiled decode)\n",
                "| run | B | N | vs | speed-up |", "|---|---|---|---|---|"]
        out += [f"| {run} | {b} | {n} | {o} | {x:.2f}× |" for run, b, n, x, o in sorted(same)]
    return out


def interleaved(rows: list[dict]) -> list[str]:
    """Zigzag's speed-ups from `ratio` rows: each round times every policy once, in a shuffled order, so drift
    within a process and the order policies run in cancel out; the median over rounds and its range."""
    ratios = sorted((r for r in rows if r["part"] == "ratio"), key=lambda r: (r["run"], r["batch"], r["n"], r["vs"]))
    if not ratios:
        return []
    out = ["\n### Zigzag's compiled-decode speed-up, policies interleaved in one process\n",
           "| run | B | N | vs | speed-up (median of rounds) | range over rounds | rounds |",
           "|---|---|---|---|---|---|---|"]
    out += [f"| {r['run']} | {r['batch']} | {r['n']} | {r['vs']} | {r['median']:.2f}× | "
            f"{r['min']:.2f}–{r['max']:.2f}× | {len(r['rounds'])} |" for r in ratios]
    return out


def fp8_table(latest: dict) -> list[str]:
    """FP8 retrieval KV against the same plan in bf16 and against bf16 zigzag, compiled decode (ms)."""
    fp8 = sorted({(k[3], k[2], k[1]) for k in latest if k[0] == "compiled" and "-fp8" in k[1] and "ms" in latest[k]})
    if not fp8:
        return []
    out = ["\n### FP8 retrieval KV, compiled decode (ms; ratios: this policy's step over the other's)\n",
           "| B | N | policy | ms | bf16 plan | vs bf16 plan | vs zigzag | bytes read (weights + KV) / bf16 plan's |",
           "|---" * 8 + "|"]
    for b, n, p in fp8:
        r, base = latest["compiled", p, n, b], p.split("-fp8")[0]
        o, z = latest.get(("compiled", base, n, b), {}), latest.get(("compiled", "zigzag", n, b), {})
        cells = [f"{r['ms'] / o['ms']:.3f}×" if "ms" in o else "–", f"{r['ms'] / z['ms']:.3f}×" if "ms" in z else "–",
                 f"{r['bytes'] / o['bytes']:.2f}" if "bytes" in o else "–"]
        out.append(f"| {b} | {n} | {p} | {r['ms']:.2f} | {base} | " + " | ".join(cells) + " |")
    return out


def report(rows: list[dict], png: str | None) -> str:
    """Tables (markdown) of the latest row per (part, policy, n, batch), with bounds and ratios."""
    latest = {}
    for r in rows:  # a later row for the same point replaces an earlier one
        if r["part"] in ("prefill", "eager", "compiled", "maxctx"):
            latest[(r["part"], r["policy"], r.get("n") if r["part"] != "maxctx" else None, r.get("batch"))] = r
    out = []
    machine = [r for r in rows if r["part"] == "machine"]
    if machine:
        m = machine[-1]
        out.append(f"{m['gpu']}, torch {m['torch']}, transformers {m['transformers']}; copy bandwidth "
                   f"{m['copy_TBps']:.2f} TB/s, bf16 matmul {m['matmul_TFLOPs']:.0f} TFLOP/s, weights read per "
                   f"step {m['weights_GB']:.2f} GB\n")
    for part in ("compiled", "eager"):
        keys = sorted({(k[3], k[2]) for k in latest if k[0] == part})
        if not keys:
            continue
        out.append(f"\n### Decode step, {part} (ms; ratios are speed-ups of zigzag)\n")
        out.append("| B | N | full | fullk | mixed | zigzag | vs full | vs fullk | bytes bound | share of bound "
                   "| vs mixed | zigzag / HBM bound | zigzag TB/s |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for b, n in keys:
            r = {p: latest.get((part, p, n, b), {}) for p in POLICIES}
            z, k = r["zigzag"], r["fullk"]
            if "ms" not in z:
                continue
            ms = " | ".join(f"{r[p]['ms']:.2f}" if "ms" in r[p] else r[p].get("skipped", "–") for p in BASE)
            ratio = {p: f"{r[p]['ms'] / z['ms']:.2f}×" if "ms" in r[p] else "–" for p in POLICIES}
            bound = self_bound(r, z)
            share = f"{k['ms'] / z['ms'] / bound:.0%}" if "ms" in k else "–"
            out.append(f"| {b} | {n} | {ms} | {ratio['full']} | {ratio['fullk']} | {bound:.2f}× | {share} | "
                       f"{ratio['mixed']} | {z['ms'] / z['bound_ms']:.2f}× | {z['TBps']:.2f} |")
    out += fp8_table(latest)
    keys = sorted({(k[3], k[2]) for k in latest if k[0] == "prefill"})
    if keys:
        out.append("\n### Prefill (ms; ratios are speed-ups of zigzag)\n")
        out.append("| B | N | full | fullk | mixed | zigzag | vs full | vs fullk | FLOP bound | share of bound | "
                   "vs mixed | zigzag TFLOP/s | KV bytes / theory | peak GB full / zigzag |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for b, n in keys:
            r = {p: latest.get(("prefill", p, n, b), {}) for p in POLICIES}
            z, f = r["zigzag"], r["full"]
            if "ms" not in z or "ms" not in f:
                continue
            ms = " | ".join(f"{r[p]['ms']:.1f}" if "ms" in r[p] else r[p].get("skipped", "–") for p in BASE)
            ratio = {p: f"{r[p]['ms'] / z['ms']:.2f}×" if "ms" in r[p] else "–" for p in POLICIES}
            bound = f["tflop"] / z["tflop"]
            out.append(f"| {b} | {n} | {ms} | {ratio['full']} | {ratio['fullk']} | {bound:.2f}× | "
                       f"{f['ms'] / z['ms'] / bound:.0%} | {ratio['mixed']} | {z['tflops']:.0f} | "
                       f"{z['kv_bytes'] / z['kv_theory']:.4f} | "
                       f"{f['peak_bytes'] / 1e9:.1f} / {z['peak_bytes'] / 1e9:.1f} |")
    maxctx = {k[1]: r for k, r in latest.items() if k[0] == "maxctx"}
    if maxctx:
        out.append("\n### Largest context that fits (B=1, static cache + one decode step)\n")
        out.append("| policy | tokens | vs full |")
        out.append("|---|---|---|")
        for p in POLICIES:
            if p in maxctx:
                ratio = maxctx[p]["n"] / maxctx["full"]["n"] if "full" in maxctx else math.nan
                out.append(f"| {p} | {maxctx[p]['n']:,} | {ratio:.2f}× |")
    out += repeats(rows)
    out += interleaved(rows)
    profiles = [r for r in rows if r["part"] == "profile"]
    if profiles:
        timed = {(r["run"], r["policy"], r["n"], r["batch"]): r for r in rows if r["part"] == "compiled" and "ms" in r}
        out.append("\n### Device time inside a compiled step (torch profiler) against its wall time\n")
        out.append("host ms: from the call until it returns, the device idle (`–`: not recorded in that run).\n")
        out.append("| run | policy | B | N | wall ms | kernel ms | kernels | wall - kernels ms | host ms | copies |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in profiles:
            t, k = timed.get((r["run"], r["policy"], r["n"], r["batch"])), r["top"][0]
            if t is not None and k["name"] == "(all kernels)":
                kms = k["us_per_step"] / 1e3
                host = f"{t['host_ms']:.2f}" if "host_ms" in t else "–"
                copies = sum(x["calls_per_step"] for x in r["top"][1:] if x["name"].startswith("Memcpy"))
                out.append(f"| {r['run']} | {r['policy']} | {r['batch']} | {r['n']} | {t['ms']:.2f} | {kms:.2f} | "
                           f"{k['calls_per_step']:g} | {t['ms'] - kms:.2f} | {host} | {copies:g} |")
    for r in (r for r in profiles if r["n"] == 32768 and r["batch"] == 1):
        out.append(f"\n### Top kernels of one compiled step: {r['policy']}, N={r['n']}, B={r['batch']} ({r['run']})\n")
        out.append("| kernel | µs per step | calls per step |")
        out.append("|---|---|---|")
        out += [f"| `{k['name']}` | {k['us_per_step']:.1f} | {k['calls_per_step']:g} |" for k in r["top"][:12]]
    if png:
        plot(latest, png)
    return "\n".join(out)


def self_bound(r: dict, z: dict) -> float:
    """Bandwidth-bound speed-up of zigzag over full attention: bytes read per step, full / zigzag."""
    if "bytes_full" in z:
        return z["bytes_full"] / z["bytes"]
    full = r["fullk"] if "bytes" in r["fullk"] else r["full"]  # rows written before bytes_full was recorded
    return full["bytes"] / z["bytes"] if "bytes" in full else float("nan")


def plot(latest: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("prefill", 1, "prefill ms"), ("compiled", 1, "compiled decode ms/step, B=1"),
              ("compiled", 8, "compiled decode ms/step, B=8"), ("eager", 1, "eager decode ms/step, B=1")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (part, b, title) in zip(axes, panels, strict=True):
        for p in POLICIES:
            style = STYLES.get(p, "C3-.")
            pts = sorted((k[2], r["ms"]) for k, r in latest.items() if k[:2] == (part, p) and k[3] == b and "ms" in r)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=p)
        if part != "prefill":
            pts = sorted((k[2], r["bound_ms"]) for k, r in latest.items()
                         if k[:2] == (part, "zigzag") and k[3] == b and "ms" in r)
            if pts:
                ax.plot(*zip(*pts, strict=True), "C0:", label="zigzag HBM bound")
        ax.set(xscale="log", yscale="log", xlabel="context tokens", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
