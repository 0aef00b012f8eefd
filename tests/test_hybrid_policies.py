"""experiments/hybrid_policies.py on the recorded Qwen 0.5B state (docs/results/qwen): hybrids at zigzag@r's KV,
m = 0 is zigzag@r, identical plans are found; gpu_accuracy.py's `plans` step writes loadable files;
matrix_policies.py's plans made elsewhere (shipped, CPU) and up to 20 random sets."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import zigzag_attn as zz

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "docs/results/qwen"
sys.path.insert(0, str(ROOT / "experiments"))
import gpu_accuracy  # noqa: E402
import hybrid_policies as hp  # noqa: E402
import matrix_policies as mp  # noqa: E402

N = 32768


def scores():
    return zz.Scores.load(STATE / "robust_scores.json"), zz.Scores.load(STATE / "head_scores.json")


def zigzag(r: float) -> zz.Plan:
    return zz.Plan.load(STATE / f"qwen2.5-coder-0.5b_{r}.json")


def test_equal_kv_and_mixed_bound():
    robust, gates = scores()
    zig = {r: zigzag(r) for r in hp.RATIOS}
    got = hp.hybrids(robust, gates, zig, N, variants=(*hp.VARIANTS, ("-s3", 3.0, (1, 24))))
    assert set(got) == {f"{n}@{r}" for n in (*hp.NAMES, "hybrid-m1-s3", "hybrid-m24-s3") for r in hp.RATIOS}
    for name, plan in got.items():
        m, r = int(name[len("hybrid-m"):].split("@")[0].split("-")[0]), float(name.split("@")[1])
        assert hp.retrieval_heads(plan) == hp.retrieval_heads(zig[r])
        assert len(plan.mixed_layers) <= m
        for n in (4096, 8192, 16384, 32768):
            assert plan.kv_fraction(n) == pytest.approx(zig[r].kv_fraction(n), abs=1e-12)
    # 2 KV heads a layer: one mixed layer cannot change a plan with an even head count
    assert got["hybrid-m1@0.5"].head_mask(2) == zig[0.5].head_mask(2)
    assert got["hybrid-m2@0.5"].mixed_layers  # the gates make a split worth it here
    assert len(got["hybrid-m4-s8@0.5"].mixed_layers) == 4  # sharper shares: more layers split
    assert got["hybrid-m4-s8@0.5"].provenance["sharpness"] == 8.0
    same = hp.twins({"zigzag@0.5": zig[0.5], **got, "full": None})
    assert "hybrid-m1@0.5" in same["zigzag@0.5"] and "full" not in same


def test_m0_must_be_the_zigzag_plan():
    robust, gates = scores()
    other = zz.Plan.from_layers(["retrieval", "streaming"] * 12, sink=64, window=256, model=robust.model)
    with pytest.raises(RuntimeError, match="not zigzag@0.5"):
        hp.hybrids(robust, gates, {0.5: other}, N)


def test_write_plans(tmp_path):
    mp.write_plans(dict(gpu_accuracy.FULL), STATE, tmp_path, ["full", "duo@0.5", "hybrid-m2@0.25"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["duo_0.5.json", "hybrid-m2_0.25.json"]
    plan = zz.Plan.load(tmp_path / "hybrid-m2_0.25.json")
    assert plan.provenance["equal_kv_to"] == "zigzag@0.25" and hp.retrieval_heads(plan) == 12


def test_prompt_store_gives_the_built_prompts(smollm2, tmp_path):
    # gpu_accuracy.prompts with a store: a later call reads back exactly what building gives, and builds only the
    # cells the store lacks
    tok, cfg, store = smollm2[1], dict(gpu_accuracy.SMOKE), tmp_path / "prompts.pt"
    built = gpu_accuracy.prompts(cfg, tok, ["multikey", "niah"], (384,))
    gpu_accuracy.prompts(cfg, tok, ["multikey"], (384,), store=store)
    again = gpu_accuracy.prompts(cfg, tok, ["multikey", "niah"], (384,), store=store)
    assert sorted(again) == sorted(built)
    for cell, samples in built.items():
        assert [(s.input_ids.tolist(), s.labels.tolist(), s.answers, s.depths) for s in again[cell]] == \
            [(s.input_ids.tolist(), s.labels.tolist(), s.answers, s.depths) for s in samples], cell
    assert len(torch.load(store, weights_only=True)) == 2 * len(gpu_accuracy.GENRES)


def test_gate_candidates_of_issue_14():
    """gatemean@r ranks layers by the head gates' mean, gatemax@r by their best head: both layer-exclusive, at the
    zigzag plan's size; on the 1.5B's recorded gates they differ (the mean hides a layer's one decisive head)."""
    state = ROOT / "docs/results/qwen15"
    heads = zz.Scores.load(state / "head_scores.json")
    plans = mp.policies(dict(gpu_accuracy.FULL), heads.model, state)
    best = torch.as_tensor(heads.heads).float().max(dim=1).values
    for r in mp.RATIOS:
        mean, top = plans[f"gatemean@{r}"], plans[f"gatemax@{r}"]
        assert mean.is_layer_exclusive and top.is_layer_exclusive
        assert len(top.retrieval_layers) == len(plans[f"zigzag@{r}"].retrieval_layers)
        kept = sorted(best[list(top.retrieval_layers)].tolist())
        dropped = [best[i].item() for i in range(heads.model.num_layers) if i not in top.retrieval_layers]
        assert kept[0] >= max(dropped)  # the layers with the best heads stay full
    assert plans["gatemax@0.25"].retrieval_layers != plans["gatemean@0.25"].retrieval_layers
    assert "layergates@0.5" in plans  # layer_gates.json is recorded beside the head gates


def test_gpu_job_script_names_known_policies_and_tasks():
    # a misspelt policy or task in a background job would cost a GPU run's chunk: caught here instead
    text = (ROOT / "experiments" / "gpu_jobs.sh").read_text().replace("%s", "1")  # printf templates: one instance
    used = set(re.findall(r"(?<![%\w@~-])([a-z][a-z0-9-]*@\d(?:\.\d+)?)(?![~\w])", text))
    assert used and used <= set(mp.KNOWN), sorted(used - set(mp.KNOWN))
    budget = set(re.findall(r"(?<![\w-])([a-z][a-z0-9-]*(?:@[\d.]+\+fp8|~[a-z0-9.~%]+|\+fp8))", text))
    grammar = re.compile(r"(zigzag|duo|gatemax|ablation|random-\d+|choice)(~b[\d.]+)(~w\d+)?(~s\d+)?(~fp8)?"
                         r"|[a-z0-9-]+(@[\d.]+)?\+fp8")
    assert budget and all(grammar.fullmatch(b) and mp.is_extended(b) for b in budget), budget
    tasks = set()
    calls = "".join(re.findall(r"\n\s+chunks (.*?)(?:;;|\n\s+fi)", text, re.S))  # every `chunks "TASKS POLICIES"`
    for group in re.findall(r'"(?:\$\w+,)?([a-z]+(?:,[a-z]+)*) ', calls) + re.findall(r"^\w+=([a-z]+(?:,[a-z]+)+)",
                                                                                      text, re.M):
        tasks |= set(group.split(","))
    assert len(tasks) >= 5 and tasks <= set(mp.TASKS), sorted(tasks - set(mp.TASKS))


def test_plans_made_elsewhere_and_twenty_random_sets(tmp_path):
    """shipped@r is the package's plan for the state's model (the 0.5B's equal the recorded zigzag@r: the same
    robust calibration), cpu@r a plan file under cpu/; a plan for another model is refused, not evaluated. The
    first five of 20 random sets are the five the recorded rows were measured on."""
    state = tmp_path / "state"
    state.mkdir()
    for f in STATE.glob("*.json"):
        (state / f.name).write_bytes(f.read_bytes())
    heads = zz.Scores.load(state / "head_scores.json")
    cfg = dict(gpu_accuracy.FULL)
    five = mp.policies(cfg, heads.model, state)
    assert hp.key(five["shipped@0.5"]) == hp.key(five["zigzag@0.5"]) and "cpu@0.5" not in five
    (state / "cpu").mkdir()
    mine = zz.Plan.from_layers(["retrieval", "streaming"] * 12, sink=64, window=256, model=heads.model)
    mine.save(state / "cpu" / "plan_0.5.json")
    twenty = mp.policies({**cfg, "randoms": mp.MAX_RANDOMS}, heads.model, state)
    assert twenty["cpu@0.5"].modes == mine.modes
    for r in mp.RATIOS:
        assert [hp.key(twenty[f"random-{i}@{r}"]) for i in range(1, 6)] == \
            [hp.key(five[f"random-{i}@{r}"]) for i in range(1, 6)]
        keys = {hp.key(twenty[f"random-{i}@{r}"]) for i in range(1, mp.MAX_RANDOMS + 1)}
        assert len(keys) == mp.MAX_RANDOMS and f"random-{mp.MAX_RANDOMS}@{r}" in mp.KNOWN
    other = zz.Plan.from_layers(["retrieval", "streaming"] * 15, sink=64, window=256)
    other.save(state / "cpu" / "plan_0.25.json")
    with pytest.raises(ValueError, match="cpu@0.25 .* does not fit the evaluated model: plan has 30 layers"):
        mp.policies(cfg, heads.model, state)
