"""Tables (and a PNG) from throughput.py's rows: batch x length, tokens/s and peak memory side by side."""

from __future__ import annotations

import textwrap
from pathlib import Path


def last_rows(rows: list[dict], part: str) -> dict:
    """(policy, n) -> the last row of `part` (a later run of a point replaces an earlier one)."""
    return {(r["policy"], r["n"]): r for r in rows if r.get("part") == part and "policy" in r}


def table(rows: list[dict]) -> str:
    decode, prefill, limit = last_rows(rows, "decode"), last_rows(rows, "prefill"), last_rows(rows, "limit")
    smaller = [r for r in rows if r.get("part") == "decode_smaller"]
    prefill = {k: r for k, r in prefill.items() if "ms" in r}
    lines = ["| N | policy | batch (candidate) | decode | ms/step | tokens/s | peak GB | cache GB | prefill k x N ms "
             "| batch prefill s (derived) |", "|---" * 10 + "|"]
    for n in sorted({k[1] for k in limit}):
        for (policy, m), lim in limit.items():
            if m != n:
                continue
            d, p = decode.get((policy, n), {}), prefill.get((policy, n), {})
            mode = d.get("mode", "-") + (" (fallback)" if d.get("fallback") else "")
            batch = d.get("batch", lim["batch"])  # one less where the real prefill did not fit beside the cache
            lines.append(f"| {n} | {policy} | {batch} ({lim['candidate']}) | {mode} | {fmt(d.get('ms'))} | "
                         f"{fmt(d.get('tok_s'), 0)} | {fmt(d.get('peak_GB'), 1)} | {fmt(d.get('cache_GB'), 1)} | "
                         f"{p.get('k', '-')} x {n}: {fmt(p.get('ms'), 0)} | "
                         f"{fmt(p['batch_ms_derived'] / 1e3 if p else None, 1)} |")
            for d in (r for r in smaller if (r["policy"], r["n"]) == (policy, n)):
                lines.append(f"| {n} | {policy}, compiled below its limit | {d['batch']} | {d['mode']} | "
                             f"{fmt(d['ms'])} | {fmt(d['tok_s'], 0)} | {fmt(d['peak_GB'], 1)} | "
                             f"{fmt(d['cache_GB'], 1)} | - | - |")
    return "\n".join(lines)


def fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def best_rows(rows: list[dict]) -> dict:
    """(policy, n) -> its decode row with the most tokens/s in the point's last run (a run starts with its limit
    row): the decode at the limit batch, or compiled below it (`decode_smaller`)."""
    got: dict = {}
    for r in rows:
        key = (r.get("policy"), r.get("n"))
        if r.get("part") == "limit":
            got[key] = None
        elif r.get("part") in ("decode", "decode_smaller") and key in got:
            got[key] = r if got[key] is None or r["tok_s"] > got[key]["tok_s"] else got[key]
    return {k: r for k, r in got.items() if r}


def ratios(rows: list[dict], ref: str = "zigzag") -> list[dict]:
    """`ref` against each other policy at each context: the batch at the limit (the decode row's: one less where
    the real prefill did not fit) and tokens/s, each policy at its best."""
    best, decode, out = best_rows(rows), last_rows(rows, "decode"), []
    for (policy, n), b in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        z = best.get((ref, n))
        if policy != ref and z:
            out.append({"n": n, "vs": policy, "batch": decode[ref, n]["batch"] / decode[policy, n]["batch"],
                        "tok_s": z["tok_s"] / b["tok_s"], "modes": [z["mode"], b["mode"]],
                        "tok_s_batches": [z["batch"], b["batch"]]})
    return out


def ratio_table(rows: list[dict]) -> str:
    """One table per reference policy present: zigzag with FP8 retrieval KV first, then zigzag."""
    tables = []
    for ref in ("zigzag-fp8", "zigzag"):
        got = ratios(rows, ref)
        if not got:
            continue
        lines = [f"| N | {ref} vs | batch ratio (at the limit) | tokens/s ratio (each at its best) | modes ({ref}, "
                 "other) | batches of the tokens/s |", "|---" * 6 + "|"]
        lines += [f"| {r['n']} | {r['vs']} | {r['batch']:.2f}x | {r['tok_s']:.2f}x | {', '.join(r['modes'])} | "
                  f"{', '.join(map(str, r['tok_s_batches']))} |" for r in got]
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def host_table(rows: list[dict]) -> str:
    host = [r for r in rows if r.get("part") == "host"]
    if not host:
        return ""
    h = host[-1]
    if "failed" in h:
        return f"host time analysis failed: {h['failed']}"
    lines = [f"host time, {h['policy']} compiled at N={h['n']}, B={h['batch']}: {h['host']['ms']:.3f} ms per step "
             f"(p10 {h['host']['p10']:.3f}, p90 {h['host']['p90']:.3f}); recompiles during the analysis: "
             f"{h['recompiles']}; dynamo cache entries' leaf guards: {h.get('guards')}; guard ms estimate "
             f"(default - skip_guard_eval_unsafe): {fmt(h.get('guard_ms_estimate'), 3)}",
             "", "| group (cProfile, tottime) | ms/step | share |", "|---|---|---|"]
    lines += [f"| {g} | {v['ms']:.3f} | {v['share']:.0%} |" for g, v in h["profile"]["groups"].items()]
    lines += ["", "| setting | host ms (median of rounds) | rounds | same logits as a default repeat (max diff) |",
              "|---|---|---|---|"]
    for name, s in h["settings"].items():
        same = f"{s['same_logits']} ({fmt(s.get('max_abs_diff'), 3)}{'' if s.get('finite', True) else ', not finite'})"
        lines.append(f"| {name} | " + (f"{s['ms']:.3f} | {' '.join(f'{x:.2f}' for x in s['rounds'])} | {same} |"
                                       if "ms" in s else f"{s['unavailable']} | | |"))
    return "\n".join(lines)


def plot(rows: list[dict], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decode, limit, best = last_rows(rows, "decode"), last_rows(rows, "limit"), best_rows(rows)
    ns = sorted({k[1] for k in limit})
    from bench_report import POLICIES

    policies = [p for p in POLICIES if any(k[0] == p for k in limit)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / max(1, len(policies))
    for i, p in enumerate(policies):
        xs = [j + i * width for j in range(len(ns))]
        # the decode row's batch: one less than the limit's where the real prefill did not fit beside the cache
        vals = [[decode.get((p, n), limit.get((p, n), {})).get("batch", 0) for n in ns],
                [best.get((p, n), {}).get("tok_s", 0) for n in ns],
                [decode.get((p, n), {}).get("peak_GB", 0) for n in ns]]
        for ax, v in zip(axes, vals, strict=True):
            bars = ax.bar(xs, v, width, label=p)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
    for ax, title in zip(axes, ("largest batch", "decode tokens/s (best batch)", "peak memory GB"), strict=True):
        ax.set_xticks([j + width * (len(policies) - 1) / 2 for j in range(len(ns))], [label(n) for n in ns])
        ax.set_title(title)
    modes = "; ".join(f"{label(n)}: " + ", ".join(
        f"{p} {best[p, n]['mode']}" + (f" at {best[p, n]['batch']}" if best[p, n]["part"] == "decode_smaller" else "")
        for p in policies if (p, n) in best) for n in ns)
    axes[0].legend()
    fig.suptitle("\n".join(["throughput at the memory limit (policies run one after another); decode (best):"]
                           + textwrap.wrap(modes, 170)), fontsize=9)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def report(rows: list[dict], png: str | None = None) -> str:
    if png:
        plot(rows, png)
    machine = [r for r in rows if r.get("part") == "machine"]
    head = "" if not machine else (f"{machine[-1]['gpu']}, torch {machine[-1]['torch']}, transformers "
                                   f"{machine[-1]['transformers']}; weights {machine[-1]['weights_GB']:.2f} GB\n\n")
    skipped = [f"{r.get('policy')} {r.get('n')}: {r['why']}" for r in rows if r.get("part") == "skipped"]
    fallbacks = [f"{k[0]} {k[1]}: {r['fallback']}" for k, r in last_rows(rows, "decode").items() if r.get("fallback")]
    parts = [head + table(rows), ratio_table(rows), host_table(rows)]
    parts += ["skipped: " + "; ".join(skipped)] if skipped else []
    parts += ["compile fallbacks: " + "; ".join(fallbacks)] if fallbacks else []
    return "\n\n".join(p for p in parts if p)
