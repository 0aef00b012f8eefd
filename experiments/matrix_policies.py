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
TASKS = ("multikey", "multivalue", "multiquery", "vartrack", "niah", "passkey", "commonwords")
MAX_RANDOMS = 20  # random-1@r .. random-20@r; a state evaluates the first cfg["randoms"] of them
PRIORITY = [  # (policies, tasks) chunks, most needed first; every length of --lengths
    (["full", "zigzag@0.5", "duo@0.5", "streaming", "zigzag@0.25", "duo@0.25"], TASKS),
    ([f"random-{i}@0.5" for i in range(1, 6)], TASKS),
    (["default@0.5", "default@0.25"], TASKS),  # `zigzag-attn calibrate`'s device default, when made (gpu_jobs.sh)
    (["zigzag@0.33", "duo@0.33", "ablation@0.5", "ablation@0.25"], TASKS),
    ([f"random-{i}@0.25" for i in range(1, 6)], TASKS),
    # the frontier: hybrids at zigzag@r's KV; m = 1 copies zigzag@r's rows (an identical plan)
    ([f"hybrid-m{m}@{r}" for m in (2, 4, 1) for r in hp.RATIOS], hp.TASKS),
    ([f"hybrid-m{m}-s8@{r}" for m in (2, 4) for r in hp.RATIOS], hp.TASKS),
    ([f"{p}@{r}" for p in ("layergates", "gatemean", "gatemax") for r in RATIOS], TASKS),  # other layer rankings
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
    ablation = _scores("ablation", info, state)
    out: dict[str, zz.Plan | None] = {"full": None, "streaming": all_streaming(info, sink=cfg["sink"],
                                                                                  window=cfg["window"]).plan}
    # layer rankings from the distillation objective: the head gates' mean per layer (the layer scores
    # train_gates records with head gates), their max per layer (a layer with one decisive head stays full: the
    # 1.5B's mean hid it, docs/results.md), and layer gates
    gatemax = _scores("gatemax", info, state)
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


# -- plans at a KV budget, with a window, sink and KV dtype of their own -------------------------------------------
# NAME+fp8           the plan of policy NAME with FP8 retrieval KV ("full+fp8": every layer retrieval, in FP8)
# M~bF[~wW][~sS][~fp8] solved for KV budget F (of full 16-bit KV at the longest evaluated length), window W
#                    (default 256), sink S (default 64), KV dtype; M: zigzag (robust scores), duo (head gates, per
#                    head), gatemax, ablation, random-I (the I-th random layer ranking)
# choice~bF          the plan zz.choose picked for budget F (experiments/budget_choice.py, state/choice-bF.json)

def is_extended(name: str) -> bool:
    return name.endswith("+fp8") or "~b" in name


def extended(name: str, plans: dict, cfg, info: zz.ModelInfo, state: Path) -> zz.Plan:
    """The plan of an extended policy name (see above); ValueError naming what is wrong with the name."""
    if name.endswith("+fp8"):
        base = name[:-4]
        if base == "full":
            return zz.Plan.from_layers(["retrieval"] * info.num_layers, sink=64, window=256, model=info,
                                       kv_dtype="fp8")
        if base not in plans or plans[base] is None:
            raise ValueError(f"{name}: no policy {base!r} here")
        return plans[base].with_kv_dtype("fp8")
    method, *parts = name.split("~")
    opts = {"sink": 64, "window": 256, "kv_dtype": "model"}
    budget = None
    for part in parts:
        if part == "fp8":
            opts["kv_dtype"] = "fp8"
        elif part[:1] in "bws" and part[1:].replace(".", "", 1).isdigit():
            if part[0] == "b":
                budget = float(part[1:])
            else:
                opts["window" if part[0] == "w" else "sink"] = int(part[1:])
        else:
            raise ValueError(f"{name}: cannot read {part!r} (expected bF, wW, sS or fp8)")
    if budget is None:
        raise ValueError(f"{name}: no budget (~bF)")
    if method == "choice":
        return zz.Plan.load(state / f"choice-b{budget}.json")
    n = max(cfg["lengths"])
    scores = _scores(method, info, state)
    if method == "duo":
        return zz.solve_heads(scores, kv_budget=budget, context_length=n, **opts)
    return zz.solve(scores, kv_budget=budget, context_length=n, **opts)


def _scores(method: str, info: zz.ModelInfo, state: Path) -> zz.Scores:
    if method == "zigzag":
        return zz.Scores.load(state / "robust_scores.json")
    if method == "ablation":
        rise = torch.tensor(zz.Scores.load(state / "robust_scores.json").meta["ablation"])
        return zz.Scores(rise[:, None].expand(-1, info.num_kv_heads), rise, model=info, method="ablation-worst-task")
    if method in ("duo", "gatemax"):
        heads = zz.Scores.load(state / "head_scores.json")
        if method == "duo":
            return heads
        top = torch.as_tensor(heads.heads).float()
        return zz.Scores(top, top.max(dim=1).values, model=heads.model, method="gates-max-per-layer")
    if method.startswith("random-") and method[7:].isdigit():
        g = torch.Generator().manual_seed(1000 + int(method[7:]))
        layers = torch.rand(info.num_layers, generator=g)
        return zz.Scores(layers[:, None].expand(-1, info.num_kv_heads), layers, model=info, method=method)
    raise ValueError(f"unknown method {method!r} (zigzag, duo, gatemax, ablation, random-I, choice)")
