"""docs/results.md's sections on the small models (Gemma-3-270M; SmolLM2-135M, evaluated on the calibration genre
only) and on what calibration costs, from the recorded files."""

from __future__ import annotations

import re
from collections import defaultdict

from report_qwen import MODELS, retrieval_layers, shipped
from report_util import DATA, Ctx, f, jsonl, kib_gib, length_label, load_json, minutes, table

CPU_LOG = "smollm2_robust_cpu_bestfirst.log"  # `/usr/bin/time -v zigzag-attn calibrate ...` on two CPU cores
SHARED_GPU = ("qwen2.5-coder-1.5b",)  # its robust profile ran beside evaluation jobs on the same GPU


# -- Gemma-3-270M ----------------------------------------------------------------------------------------------------
def gemma(ctx: Ctx) -> str:
    res = load_json("gemma_gpu/gemma_gpu.json")
    plan = shipped("gemma3-270m@0.33")
    prov, info = plan["provenance"], plan["model"]
    native = sorted(int(i) for i in info["native_sliding"])
    full_layers = [i for i in range(len(plan["modes"])) if i not in native]
    rows = res["results"]["rows"]
    cell = defaultdict(lambda: [0, 0])  # (task, policy, length) -> [correct, answers], depths pooled
    prompts = defaultdict(int)
    for r in rows:
        c = cell[r["task"], r["policy"], r["length"]]
        c[0] += r["correct"]
        c[1] += r["answers"]
        prompts[r["task"], r["length"]] += r["n"] if r["policy"] == "full" else 0
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    out = ["## Gemma-3-270M", "",
           f"{len(full_layers)} of its {len(plan['modes'])} layers use full attention "
           f"({', '.join(map(str, full_layers))}); "
           "the others keep the model's own sliding window and cannot stream. The shipped plan `gemma3-270m@0.33` "
           f"keeps layer {', '.join(str(i) for i in retrieval_layers(plan) if i not in native)} "
           f"and was made by `zigzag-attn calibrate` with its GPU settings (ablation, then measured greedy "
           f"elimination, {prov['calibration']['samples']} prompts of {prov['calibration']['length']} tokens) in "
           f"{prov['seconds']:.0f} s on an {prov['device'].split('(')[-1].rstrip(')')}, model load included. "
           f"Evaluation: {res['results']['meta']['text']} (held-out novels of the calibration genre), "
           f"{len(res['results']['meta']['depths'])} needle depths, every single-layer choice beside the plan. Raw: "
           "[results/gemma_gpu/gemma_gpu.json](results/gemma_gpu/gemma_gpu.json).", ""]
    for task in res["results"]["meta"]["tasks"]:
        lens = res["results"]["meta"]["lengths"]
        out += [f"**{task}** (accuracy; n = prompts per cell)", "",
                table(["policy"] + [f"{length_label(n)} (n={prompts[task, n]})" for n in lens],
                      [[p] + [f(cell[task, p, n][0] / cell[task, p, n][1]) for n in lens] for p in policies]), ""]
    out.append(ctx.figure("gemma_gpu/accuracy_vs_length.png", "Gemma-3-270M accuracy by length", _gemma_png))
    return "\n".join(out + [""])


def _gemma_png(path: str) -> None:
    import gemma_gpu  # imports torch: only when drawing

    from zigzag_attn.eval import Results

    gemma_gpu.length_plot(Results.from_json(load_json("gemma_gpu/gemma_gpu.json")["results"]), path)


# -- SmolLM2-135M ----------------------------------------------------------------------------------------------------
def run_table(res: dict) -> str:
    """Accuracy per policy and cell, the best random set per layer count, the worst share of full attention."""
    rows = res["eval"]
    cells = [k for k in rows[0] if "@" in k]
    full = next(r for r in rows if r["policy"] == "full")
    by_k: dict[str, list[dict]] = {}
    for r in rows:
        by_k.setdefault(r["policy"].split(" ")[-1] if "k=" in r["policy"] else "", []).append(r)
    out = []
    for k, group in by_k.items():
        randoms = [r for r in group if r.get("family") == "random"]
        shown = [r for r in group if r.get("family") != "random"]
        if randoms:
            best = max(randoms, key=lambda r: sum(r[c]["accuracy"] for c in cells))
            shown.append({**best, "policy": f"best of {len(randoms)} random {k}"})
        for r in shown:
            share = min(r[c]["accuracy"] / full[c]["accuracy"] for c in cells if full[c]["accuracy"] > 0)
            out.append([r["policy"]] + [f(r[c]["accuracy"]) for c in cells] + [f(share)])
    return table(["policy"] + [f"{c} (n={full[c]['n']})" for c in cells] + ["worst share of full"], out)


def _smollm2_pngs(res: dict, which: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if which == "heads":
        heads = res["steps"]["gates-head"]["heads"]
        fig, ax = plt.subplots(figsize=(3.2, 7))
        im = ax.imshow(heads, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set(xlabel="KV head", ylabel="layer", title="gate per KV head", xticks=range(len(heads[0])))
        fig.colorbar(im, ax=ax, label="alpha (1 = retrieval)")
    else:
        cells = [k for k in res["eval"][0] if k.startswith("niah@")]
        fig, ax = plt.subplots(figsize=(6, 4))
        for fam in sorted({r["family"] for r in res["eval"]}):
            pts = sorted((r[cells[-1]]["kv_fraction"], sum(r[c]["accuracy"] for c in cells) / len(cells))
                         for r in res["eval"] if r["family"] == fam)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o" if fam == "random" else "o-", label=fam,
                    alpha=0.5 if fam == "random" else 1)
        ax.set(xlabel=f"KV cache vs full attention at {cells[-1].split('@')[1]} tokens",
               ylabel="NIAH accuracy (mean over lengths)", title="SmolLM2-135M, calibration genre (Austen)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def smollm2(ctx: Ctx) -> str:
    one, two = load_json("compare_methods_smollm2.json"), load_json("greedy_long_smollm2.json")
    cfg, steps = one["config"], one["steps"]
    layers = one["model"]["num_layers"]
    methods = [("`gates-head`", f"DuoAttention gates per KV head, {cfg['gate_steps']} steps at {cfg['gate_len']} "
                "tokens; a layer's score is its mean gate (`-max`: its largest)", steps["gates-head"]["seconds"]),
               ("`gates-layer`", "one gate per layer, the same objective", steps["gates-layer"]["seconds"]),
               ("`attention`", f"ablation: each layer streamed alone, {cfg['calib_n']} prompts of {cfg['calib_len']}",
                steps["attention"]["seconds"]),
               ("`attention-cpu`", f"the same at {cfg['cpu_len']} tokens", steps["attention-cpu"]["seconds"]),
               ("`greedy`", "measured greedy elimination from full attention (the shipped `smollm2-135m@r` plans)",
                steps["greedy"]["seconds"]),
               ("`duo-heads`", "baseline, not layer-exclusive: the head plan from `gates-head` at the same KV", None)]
    return "\n".join([
        "## SmolLM2-135M (evaluated on the calibration genre only)", "",
        "**These runs evaluate on held-out Austen novels: other books, but the genre calibration read.** They "
        "overstate what a plan keeps on text unlike its calibration data; the Qwen sections above use genres "
        f"calibration never read. Plans keep k of the {layers} layers retrieval: "
        + ", ".join(f"k={shipped(f'smollm2-135m@{r}')['provenance']['retrieval_layers']} (`@{r}`)"
                    for r in ("0.5", "0.33", "0.25")) + ". "
        f"{one['device']}, {one['dtype'].replace('torch.', '')}. Raw: "
        "[compare_methods_smollm2.json](results/compare_methods_smollm2.json), "
        "[greedy_long_smollm2.json](results/greedy_long_smollm2.json).", "",
        table(["method", "what it does", f"seconds ({one['device'].split()[1]})"],
              [(m, w, f(s, 1)) for m, w, s in methods]), "",
        "**Run 1: every method** (accuracy; worst share of full over the cells)", "", run_table(one), "",
        "**Run 2: the greedy plans on new prompts, and greedy calibrated at 8192 tokens**", "", run_table(two), "",
        ctx.figure("accuracy_vs_kv.png", "SmolLM2 accuracy vs KV", lambda p: _smollm2_pngs(one, "kv", p)),
        ctx.figure("gates_heatmap.png", "SmolLM2 head gates", lambda p: _smollm2_pngs(one, "heads", p)), ""])


# -- calibration cost ------------------------------------------------------------------------------------------------
def cpu_run() -> dict:
    """The recorded CPU calibration: its command, wall time (s) and peak resident memory (KiB)."""
    text = (DATA / CPU_LOG).read_text()
    cmd = re.search(r'Command being timed: "(.*)"', text).group(1)
    m, s = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\d+):([\d.]+)", text).groups()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    cmd = re.sub(r" --out \S+", " --out plan.json", re.sub(r" --scores-out \S+", "", cmd))
    return {"command": cmd, "seconds": int(m) * 60 + float(s), "rss_kib": rss}


def cost_rows() -> list[tuple]:
    """(model, device, method, seconds, memory) for every recorded calibration."""
    cpu = cpu_run()
    one = load_json("compare_methods_smollm2.json")
    gem = shipped("gemma3-270m@0.33")["provenance"]
    rows = [("SmolLM2-135M", "CPU, 2 cores", "robust, 50% of layers (the whole command)", cpu["seconds"],
             kib_gib(cpu["rss_kib"])),
            ("SmolLM2-135M", one["device"], "attention ablation + measured greedy",
             one["steps"]["attention"]["seconds"] + one["steps"]["greedy"]["seconds"], "–"),
            ("Gemma-3-270M", gem["device"].split("(")[-1].rstrip(")"), "attention ablation + measured greedy "
             "(model load included)", gem["seconds"], "–")]
    for alias, cfg in MODELS.items():
        prov = shipped(f"{alias}@0.5")["provenance"]
        heads = load_json(f"{cfg['dir']}/head_scores.json")["meta"]
        shared = " (GPU shared with other jobs: an upper bound)" if alias in SHARED_GPU else ""
        rows.append((cfg["short"], prov["device"], f"robust{shared}", prov["seconds"], "–"))
        rows.append((cfg["short"], prov["device"], f"head gates, {heads['steps']} steps", heads["seconds"], "–"))
        choice = DATA / cfg["dir"] / "budget" / "choice.jsonl"
        if choice.exists():  # zz.choose's validation: one candidate at the target length (GPU shared)
            rows_ = jsonl(f"{cfg['dir']}/budget/choice.jsonl")
            for gpu in sorted({r["gpu"] for r in rows_}):
                secs = sorted(r["seconds"] for r in rows_ if r["gpu"] == gpu)
                rows.append((cfg["short"], gpu, f"zz.choose: one candidate on its validation prompts of "
                             f"{rows_[0]['length']:,} tokens, median of {len(secs)} (GPU shared with other jobs)",
                             secs[len(secs) // 2], "–"))
    sm = load_json("smollm2/robust_scores_h200.json")["meta"]
    rows.insert(1, ("SmolLM2-135M", "NVIDIA H200", f"robust at {sm['tokens']:,} tokens (GPU shared with other jobs)",
                    sm["seconds"], "–"))
    return rows


def cost_table() -> str:
    return table(["model", "device", "method", "time", "peak memory"],
                 [(m, d, w, minutes(s), mem) for m, d, w, s, mem in cost_rows()])


def cost(ctx: Ctx) -> str:
    cpu = cpu_run()
    return "\n".join([
        "## What calibration costs", "",
        "Wall time of the profile and solve (the model's load excluded unless said). The CPU run is "
        f"`{cpu['command']}`, timed by `/usr/bin/time -v` ([log](results/{CPU_LOG})).", "", cost_table(), ""])
