"""The policies of docs/results.md's accuracy matrix (experiments/gpu_accuracy.py), built from a calibration state:
which plan each policy name stands for, and the order the evaluation runs them in.

A state directory holds `robust_scores.json` and the plans solved from it (`<name>_<r>.json`: zigzag@r),
`head_scores.json` (DuoAttention head gates: duo@r, the hybrids, gatemean@r, gatemax@r), optionally
`layer_gates.json` (layergates@r), `default/plan_<r>.json` (`zigzag-attn calibrate` with the device's defaults:
default@r) and `cpu/plan_<r>.json` (a plan made on CPU: cpu@r). shipped@r is the package's shipped plan
`<model name>@<r>`, where one exists.
"""

from __future__ import annotations

from pathlib import Path

import hybrid_policies as hp
import torch

import zigzag_attn as zz
from zigzag_attn.eval import all_streaming, random_sets
from zigzag_attn.plan import SHIPPED_DIR

RATIOS = (0.5, 0.33, 0.25)
TASKS = ("multikey", "multivalue", "vartrack", "niah", "passkey", "commonwords")
MAX_RANDOMS = 20  # random-1@r .. random-20@r; a state evaluates the first cfg["randoms"] of them
PRIORITY = [  # (policies, tasks) chunks, most needed first; every length of --lengths
    (["full", "zigzag@0.5", "duo@0.5", "streaming", "zigzag@0.25", "duo@0.25"], TASKS),
    ([f"random-{i}@0.5" for i in range(1, 6)], TASKS),
    (["default@0.5", "default@0.25"], TASKS),  # `zigzag-attn calibrate`'s device default, when made (gpu_jobs.sh)
    (["zigzag@0.33", "duo@0.33", "ablation@0.5", "ablation@0.25"], TASKS),
    ([f"random-{i}@0.25" for i in range(1, 6)], TASKS),
    # the frontier (issue #16): hybrids at zigzag@r's KV; m = 1 copies zigzag@r's rows (an identical plan)
    ([f"hybrid-m{m}@{r}" for m in (2, 4, 1) for r in hp.RATIOS], hp.TASKS),
    ([f"hybrid-m{m}-s8@{r}" for m in (2, 4) for r in hp.RATIOS], hp.TASKS),
    ([f"{p}@{r}" for p in ("layergates", "gatemean", "gatemax") for r in RATIOS], TASKS),  # issue #14's gate candidates
    ([f"{p}@{r}" for p in ("shipped", "cpu", "default") for r in RATIOS], TASKS),  # plans made elsewhere, when present
    ([f"random-{i}@{r}" for r in RATIOS for i in range(1, MAX_RANDOMS + 1)], TASKS),  # the best of 20 (SmolLM2)
]
FRONTIER = ["full", *(f"{p}@{r}" for r in hp.RATIOS for p in ("zigzag", "duo", *hp.NAMES))]
KNOWN = list(dict.fromkeys(n for names, _ in PRIORITY for n in names))  # every policy name, in priority order


def policies(cfg, info: zz.ModelInfo, state: Path) -> dict[str, zz.Plan | None]:
    """{policy name: plan (None: full attention, unpatched)} for every policy `state` can make."""
    heads = zz.Scores.load(state / "head_scores.json")
    robust = zz.Scores.load(state / "robust_scores.json")
    # the plain-ablation baseline: the worst-task loss rise of each layer streaming alone, recorded by the robust
    # profile; the layers whose streaming hurts most stay retrieval
    rise = torch.tensor(robust.meta["ablation"])
    ablation = zz.Scores(rise[:, None].expand(-1, info.num_kv_heads), rise, model=info, method="ablation-worst-task")
    out: dict[str, zz.Plan | None] = {"full": None, "streaming": all_streaming(info, sink=cfg["sink"],
                                                                                  window=cfg["window"]).plan}
    # issue #14's candidates from the distillation objective: the head gates' mean per layer (the layer scores
    # train_gates records with head gates), their max per layer (a layer with one decisive head stays full: the
    # 1.5B's mean hid it, docs/results.md), and layer gates
    top = torch.as_tensor(heads.heads).float()
    gatemax = zz.Scores(top, top.max(dim=1).values, model=heads.model, method="gates-max-per-layer")
    layer_gates = zz.Scores.load(state / "layer_gates.json") if (state / "layer_gates.json").exists() else None
    sw = dict(sink=cfg["sink"], window=cfg["window"])
    for r in RATIOS:
        plan = zz.Plan.load(plan_file(state, r))
        out[f"zigzag@{r}"] = plan
        out[f"gatemean@{r}"] = zz.solve(heads, retrieval_ratio=r, **sw)
        out[f"gatemax@{r}"] = zz.solve(gatemax, retrieval_ratio=r, **sw)
        if layer_gates is not None:
            out[f"layergates@{r}"] = zz.solve(layer_gates, retrieval_ratio=r, **sw)
        # equal KV: the same number of retrieval heads, so the budget is equal at every length
        out[f"duo@{r}"] = zz.solve_heads(heads, kv_budget=plan.kv_fraction(max(cfg["lengths"])),
                                         context_length=max(cfg["lengths"]), sink=plan.sink, window=plan.window)
        out[f"ablation@{r}"] = zz.solve(ablation, retrieval_ratio=r, **sw)
        made = {"default": state / "default" / f"plan_{r}.json",  # `zigzag-attn calibrate MODEL --retrieval-ratio r`
                "cpu": state / "cpu" / f"plan_{r}.json",
                "shipped": SHIPPED_DIR / f"{info.name}@{r}.json"}
        for name, f in made.items():
            if f.exists():
                out[f"{name}@{r}"] = _checked(zz.Plan.load(f), info, f"{name}@{r}", f)
        for i, p in enumerate(random_sets(info, cfg["randoms"], r, seed=17, **sw), 1):
            out[f"random-{i}@{r}"] = p.plan
    out.update(hp.hybrids(robust, heads, {r: out[f"zigzag@{r}"] for r in hp.RATIOS}, max(cfg["lengths"])))
    return out


def _checked(plan: zz.Plan, info: zz.ModelInfo, name: str, source: Path) -> zz.Plan:
    """A plan made outside this state must fit its model: else the policy would be evaluated on the wrong layers."""
    try:
        plan.check_model(info)
    except ValueError as e:
        raise ValueError(f"{name} ({source}) does not fit the evaluated model: {e}") from None
    return plan


def write_plans(cfg, state: Path, out: Path, names: list[str], log=print) -> None:
    """`out/NAME.json` ('@' written '_') for each named policy but "full" (no plan), from the state's scores."""
    plans = policies(cfg, zz.Scores.load(state / "robust_scores.json").model, state)
    unknown = [n for n in names if n not in plans]
    if unknown:
        raise SystemExit(f"unknown policies {unknown}; known: {', '.join(plans)}")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if plans[name] is not None:
            plans[name].save(out / f"{name.replace('@', '_')}.json")
            log(f"{name:>16}: {plans[name].describe()}")


def plan_file(state: Path, r: float) -> Path:
    """The robust plan for ratio r in `state` (`<model name>_<r>.json`)."""
    found = list(state.glob(f"*_{r}.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one calibrated plan for ratio {r} in {state}; found {found}")
    return found[0]
