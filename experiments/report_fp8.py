"""Sections on FP8 retrieval KV and on KV budgets spent on window, sink and KV dtype together: accuracy
(docs/results.md) and speed (docs/performance.md), from the rows under docs/results/fp8/, docs/results/*/budget/
and the models' matrix.jsonl."""

from __future__ import annotations

import re

import bench_report
import throughput_report
from report_qwen import mean, shipped
from report_util import DATA, Ctx, demote, f, jsonl, length_label, load_json, minutes, table

from zigzag_attn.eval.run import Results

SMOLLM2_FP8 = "fp8/smollm2_compare_2k.json"  # zigzag-attn eval compare (experiments/README.md has the command)


def _smollm2_fp8():
    """The recorded `eval compare` run as (per (policy, task) pooled row, tasks), or None where not recorded."""
    if not (DATA / SMOLLM2_FP8).exists():
        return None
    res = Results.load(DATA / SMOLLM2_FP8)
    return {(a["policy"], a["task"]): a for a in res.aggregate(("policy", "task"))}, res.tasks


def _mean(cells: dict, policy: str, tasks) -> float:
    return sum(cells[policy, t]["accuracy"] for t in tasks) / len(tasks)


def fp8_accuracy() -> str:
    """SmolLM2 with FP8 retrieval KV against the same plans in 16-bit, on held-out genres (one eval compare run)."""
    got = _smollm2_fp8()
    if got is None:
        return ""
    cells, tasks = got
    names = {"full": "full attention", "full-fp8": "full attention, FP8 KV", "half": "smollm2-135m@0.5",
             "half-fp8": "smollm2-135m@0.5, FP8 KV", "streaming": "all-streaming"}
    policies = [p for p in names if (p, tasks[0]) in cells]
    bases = {"full-fp8": "full", "half-fp8": "half"}
    out = [[names[p], f(cells[p, tasks[0]]["kv_fraction"], 3)] + [f(cells[p, t]["accuracy"]) for t in tasks]
           + [f(_mean(cells, p, tasks), 3),
              f(_mean(cells, p, tasks) / _mean(cells, bases[p], tasks), 3) if p in bases else "–"]
           for p in policies]
    n = {cells[p, t]["n"] for p in policies for t in tasks}
    lengths = load_json(SMOLLM2_FP8)["meta"]["lengths"]
    plan = {t: cells["half-fp8", t]["accuracy"] - cells["half", t]["accuracy"] for t in tasks}
    worst = min(plan, key=plan.get)
    full = _mean(cells, "full-fp8", tasks) / _mean(cells, "full", tasks)
    cost = "nothing" if full >= 0.99 else f"{1 - full:.1%} of its mean accuracy"
    note = (f"\n\nFP8 costs full attention {cost} here; on the 50% plan, whose streaming layers already lose some "
            f"retrieval, it costs most on {worst} ({plan[worst]:+.2f}).")
    return (f"SmolLM2-135M-Instruct, {'/'.join(map(str, lengths))} tokens, "
            f"{n.pop() if len(n) == 1 else n} prompts per cell on the technical and legal genres (calibration never "
            "read them); every layer of `full-fp8` keeps full attention with FP8 KV.\n\n"
            + table(["policy", "KV (16-bit = 1)", *tasks, "mean", "FP8 / 16-bit"], out) + note)


SMOLLM2_CHOICE = "fp8/smollm2_fp8_at_0.5.json"  # calibrate --kv-budget 0.5 --kv-dtypes model,fp8 (see experiments/)


def smollm2_choice() -> str:
    """What `calibrate` chose for SmolLM2 at half of the KV bytes when FP8 was a candidate (its validation)."""
    if not (DATA / SMOLLM2_CHOICE).exists():
        return ""
    plan = load_json(SMOLLM2_CHOICE)
    prov, choice = plan["provenance"], plan["provenance"]["choice"]
    said = "; ".join(f"{'FP8' if r['kv_dtype'] == 'fp8' else '16-bit'}, {r['retrieval_layers']} layers: worst rise "
                     f"{r['worst_rise']:.3f}" for r in choice["rows"])
    return (f"SmolLM2-135M-Instruct on 2 CPU cores, `calibrate --kv-budget 0.5 --context-length "
            f"{prov['constraint']['context_length']} --kv-dtypes model,fp8`: on its validation prompts of "
            f"{choice['length']} tokens ({said}) it kept FP8 with {prov['constraint']['retrieval_layers']} of "
            f"{len(plan['modes'])} layers retrieval (`{SMOLLM2_CHOICE}`; {minutes(prov['seconds'])} with another "
            "job sharing the cores). Not yet evaluated on held-out genres.")


def fp8_shares() -> dict | None:
    """Mean accuracy over tasks of FP8 over 16-bit, for full attention and the 50% plan (the SmolLM2 run)."""
    got = _smollm2_fp8()
    if got is None:
        return None
    cells, tasks = got
    lengths = load_json(SMOLLM2_FP8)["meta"]["lengths"]
    return {"model": "SmolLM2-135M", "full": _mean(cells, "full-fp8", tasks) / _mean(cells, "full", tasks),
            "plan": _mean(cells, "half-fp8", tasks) / _mean(cells, "half", tasks), "n": cells["full", tasks[0]]["n"],
            "length": "/".join(map(str, lengths)), "tasks": ", ".join(tasks)}


def fp8_batch() -> dict | None:
    """The largest batch of zigzag with FP8 retrieval KV over 16-bit zigzag's, at 32k (the 1.5B)."""
    rows = jsonl("fp8/throughput_q15_32k_eager.jsonl")
    got = {r["policy"]: r["batch"] for r in rows if r.get("part") == "decode"}
    return {"model": "Qwen2.5-Coder-1.5B", "batch": got["zigzag-fp8"] / got["zigzag"]} if len(got) == 2 else None


def choice_rows(model_dir: str) -> list[dict]:
    path = DATA / model_dir / "budget" / "choice.jsonl"
    return jsonl(f"{model_dir}/budget/choice.jsonl") if path.exists() else []


def window_choice() -> str:
    """zz.choose's validation measurements: layers traded for a wider window or for FP8 retrieval KV."""
    out = []
    for label, d in (("Qwen2.5-Coder-1.5B", "qwen15"), ("Qwen2.5-Coder-0.5B", "qwen")):
        for r in sorted(choice_rows(d), key=lambda r: (r["budget"], r.get("kv_dtype", "model"), r["window"])):
            rise = " / ".join(f"{r['rise'][k]:.2f}" for k in ("passkeys", "ledger", "boxes"))
            out.append([label, f(r["budget"]), r["window"], "FP8" if r.get("kv_dtype") == "fp8" else "16-bit",
                        r["retrieval_layers"], f(r["kv_fraction"], 3), rise,
                        f"**{r['worst_rise']:.3f}**" if r.get("chosen") else f(r["worst_rise"], 3)])
    if not out:
        return ""
    lengths = sorted({r["length"] for d in ("qwen15", "qwen") for r in choice_rows(d)})
    return (f"Validation (calibration's wordings on the held-out novels at {'/'.join(map(str, lengths))} tokens; the "
            "rise in answer loss over full attention, lower is better; bold: `zz.choose`'s pick where FP8 was among "
            "the candidates): at equal bytes a wider window costs retrieval layers and rarely pays; FP8 doubles the "
            "layers, which pays at 25% and fails at 50%, where the budget then reaches the layers FP8 hurts most "
            "(the first layers' keys, below). Rows: `experiments/budget_choice.py`.\n\n"
            + table(["model", "KV budget", "window", "retrieval KV", "retrieval layers", "KV at 32k",
                     "rise: pass keys / ledger / boxes", "worst rise"], out))


BUDGET_TASKS = ("multikey", "multivalue", "multiquery", "vartrack")
BUDGET_POLICIES = {  # the 1.5B's rows at 25% of KV, with the 16-bit plans of about the same layers beside
    "full": "full attention", "zigzag~b0.25~fp8": "zigzag at 25%, FP8 retrieval KV (zz.choose's pick)",
    "zigzag@0.5": "zigzag@0.5, 16-bit (one layer more)", "duo@0.25": "head plan at 25%, 16-bit",
    "zigzag@0.25": "zigzag@0.25, 16-bit", "zigzag~b0.25~w256~s64": "zigzag at 25%, 16-bit, solved at 32k",
    "duo~b0.25~w4096": "head plan at 25%, window 4,096", "random@0.5": "best of the random sets of zigzag@0.5's size",
    "streaming": "all-streaming"}


def budget_table() -> str:
    """Held-out accuracy of the 1.5B's plans at 25% of KV: each task's accuracy at 4k/8k/16k/32k."""
    rows = jsonl("qwen15/matrix.jsonl")
    got = {(r["policy"], r["task"], r["length"]): r for r in rows}
    lengths = sorted({r["length"] for r in rows})

    randoms = {r["policy"] for r in rows if re.fullmatch(r"random-\d+@0\.5", r["policy"])}
    best = max(randoms, key=lambda p: mean(rows, p) or -1.0)  # multi-key + multi-value; sets missing a cell last
    out = []
    for p, label in BUDGET_POLICIES.items():
        p, label = (best, f"{label} (`{best}` of {len(randoms)}, 16-bit)") if p == "random@0.5" else (p, label)
        if not any((p, t, n) in got for t in BUDGET_TASKS for n in lengths):
            continue
        kv = next((got[p, t, lengths[-1]]["kv_fraction"] for t in BUDGET_TASKS if (p, t, lengths[-1]) in got), None)
        cells = [" / ".join(f(got[p, t, n]["accuracy"]) if (p, t, n) in got else "–" for n in lengths)
                 for t in BUDGET_TASKS]
        out.append([label, f"`{p}`", f(kv, 2), *cells, f(mean(rows, p), 3)])
    n = {r["prompts"] for r in rows if r["policy"] in BUDGET_POLICIES and r["task"] in BUDGET_TASKS}
    layers = {r.get("kv_dtype", "model"): r["retrieval_layers"] for r in choice_rows("qwen15")
              if r["budget"] == 0.25 and r["window"] == 256}
    half = shipped("qwen2.5-coder-1.5b@0.5")["modes"].count("retrieval")
    return (f"Qwen2.5-Coder-1.5B, held-out genres, {'/'.join(length_label(x) for x in lengths)} tokens, "
            f"{n.pop() if len(n) == 1 else n} prompts per cell; KV kept at {length_label(lengths[-1])} (16-bit "
            f"full attention = 1). At a quarter of the KV, FP8 lets zigzag keep {layers['fp8']} retrieval layers "
            f"instead of {layers['model']}: about the accuracy of the 16-bit plan with {half}, far above the 16-bit "
            "head plan at the same bytes.\n\n"
            + table(["plan", "policy", "KV", *(f"{t} ({'/'.join(length_label(x) for x in lengths)})"
                                               for t in BUDGET_TASKS), "mean, multi-key + multi-value"], out))


def layer_error() -> str:
    """Per-layer error of attention with FP8 keys and values (experiments/fp8_layer_error.py)."""
    runs = [load_json(p.relative_to(DATA)) for p in sorted(DATA.glob("fp8/layer_error_*.json"))]
    if not runs:
        return ""
    names = list(dict.fromkeys(k for run in runs for k in run["rows"][0] if k != "layer"))
    offsets = [k for k in names if k.startswith("k ") and k != "k"]
    out, said = [], []
    for run in runs:
        rows = run["rows"]
        for r in sorted(rows, key=lambda r: -r["kv"])[:4]:
            out.append([run["model"], r["layer"], *(f(r.get(k), 3) for k in names)])
        med = {k: sorted(r[k] for r in rows)[len(rows) // 2] if k in rows[0] else None for k in names}
        out.append([run["model"], f"median of {len(rows)} layers", *(f(med[k], 3) for k in names)])
        worst = max(rows, key=lambda r: r["kv"])
        said.append(f"{run['model']}, layer {worst['layer']}: {worst['kv']:.2f} to "
                    + " / ".join(f"{worst[k]:.2f}" for k in offsets if k in worst)
                    + "; lower on " + " / ".join(f"{sum(r[k] < r['kv'] for r in rows)}" for k in offsets if k in worst)
                    + f" of {len(rows)} layers")
    return ("Why FP8 on every layer fails where FP8 on a plan's layers does not: the relative error of attention "
            "with FP8 keys and values, against exact attention, per layer (the last 64 queries of one held-out "
            f"multi-key prompt of {runs[0]['tokens']} tokens, float32; `experiments/fp8_layer_error.py`). Keys "
            "carry nearly all of it, and a few early layers carry most: layers the plans stream first. Storing keys "
            "minus a fixed vector per KV head does not change attention (softmax ignores the shift) but changes "
            "the rounding: `k offset` subtracts the median key of one calibration prompt, `k bias` the key "
            "projection's bias after RoPE, averaged over positions, which needs no data "
            f"({' / '.join(offsets)}: {'; '.join(said)}). Neither is part of the format yet: their effect on "
            "accuracy is unmeasured.\n\n"
            + table(["model", "layer", *(f"error, FP8 {k}" for k in names)], out))


def results_section(ctx: Ctx) -> str:
    parts = ["## FP8 retrieval KV and KV budgets", fp8_accuracy(), smollm2_choice(), budget_table(), window_choice(),
             layer_error()]
    return "\n\n".join(p for p in parts if p)


def _real_case(line: str) -> str:
    """One sentence on a real model's conformance line that is over the rule."""
    case = re.sub(r" +", " ", line.split(" one-pass")[0]).strip()
    err, floor = re.search(r"one-pass (\S+)", line).group(1), re.search(r"floor (\S+)", line).group(1)
    return (f" The real SmolLM2-135M case ({case}) is over the rule too: one-pass {err} against the unpatched "
            f"model's own {floor}.")


def performance_section(ctx: Ctx) -> str:
    thr = jsonl("fp8/throughput_q15_32k_eager.jsonl")
    compiled = jsonl("fp8/throughput_q15_32k_h100.jsonl")
    b1 = jsonl("fp8/decode_b1_q15_32k.jsonl")
    conf = (DATA / "gpu" / "conformance_fp8.log").read_text().splitlines()
    cases = [x for x in conf if re.search(r"\b(ok|FAIL)$", x)]
    tiny = [x for x in cases if re.search(r"fp8 (triton|dequantize) ", x)]
    real = [x for x in cases if x not in tiny]
    worst = max(float(re.search(r"one-pass (\S+)", x).group(1)) for x in tiny)
    fails = {p: sum(x.endswith("FAIL") and f"fp8 {p} " in x for x in tiny) for p in ("triton", "dequantize")}
    alike = "on both paths alike" if fails["triton"] == fails["dequantize"] else \
        f"{fails['triton']} with the kernel, {fails['dequantize']} with dequantise + SDPA"
    dec = {(r["policy"], r["mode"]): r for r in compiled if r.get("part") in ("decode", "decode_smaller")}
    fused, eager, base = dec["zigzag-fp8", "compiled"], dec["zigzag-fp8", "eager"], dec["zigzag", "compiled"]
    per_seq = (fused["ms"] / fused["batch"]) / (base["ms"] / base["batch"])
    gpu = next(r["gpu"] for r in compiled if r.get("part") == "machine")
    real_line = "".join(_real_case(x) for x in real if x.endswith("FAIL"))
    return "\n\n".join([
        "## FP8 retrieval KV (Qwen2.5-Coder-1.5B, 32k tokens)",
        "### At the memory limit, eager decode (NVIDIA H200)", demote(throughput_report.table(thr)),
        demote(throughput_report.ratio_table(thr)),
        f"### At the memory limit, compiled decode ({gpu})",
        f"The fused kernel inside a compiled step is slow: {fused['ms']:.1f} ms at {fused['batch']} sequences, "
        f"{per_seq:.1f}× 16-bit zigzag's compiled time per sequence ({base['ms']:.1f} ms at {base['batch']}), and "
        f"slower than the same kernel called eagerly ({eager['ms']:.1f} ms at {eager['batch']}). Its compile also "
        "ran out of memory beside the largest batch. So `fp8_backend=\"auto\"` keeps dequantise + SDPA and the "
        "kernel stays opt-in; FP8's gain is capacity (about twice the sequences), not tokens/s.",
        demote(throughput_report.table(compiled)), demote(throughput_report.ratio_table(compiled)),
        "### Compiled decode, B = 1 (interleaved in one process, NVIDIA H200)",
        "Dequantise + SDPA reads FP8 and writes a 16-bit copy, so it is slower than 16-bit KV at one sequence. "
        "The fused kernel's B = 1 compiled step is not timed yet.",
        demote(bench_report.report(bench_report.load_rows([str(DATA / "fp8/decode_b1_q15_32k.jsonl")]), None)
               .strip()) if b1 else "",
        f"### Conformance in bf16\n\n{len(tiny)} cases (six tiny families × two plans × the fused kernel and "
        f"dequantise + SDPA, decoding 260 tokens past the window): largest error against the float32 reference "
        f"with the same quantisation {worst:.2e}; {sum(x.endswith('FAIL') for x in tiny)} over the bf16 rule "
        f"(1e-2 or 1.25× the unpatched model's own bf16 error), {alike}: bf16 rounding moves keys across e4m3 "
        f"rounding boundaries that the float32 reference does not cross.{real_line} "
        "([log](results/gpu/conformance_fp8.log))",
    ])
