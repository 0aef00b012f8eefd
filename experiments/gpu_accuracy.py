"""The accuracy matrix of docs/results.md (Qwen2.5-Coder, SmolLM2) on a GPU: calibrate, then evaluate every policy
on the same held-out prompts. Produced docs/results/qwen/ and the shipped `<model>@<ratio>` plans.

    python experiments/gpu_accuracy.py calibrate --model GGUF --name NAME --state DIR --out DIR
    python experiments/gpu_accuracy.py eval --model GGUF --name NAME --state DIR --out DIR --deadline EPOCH_S
    python experiments/gpu_accuracy.py plans --state DIR --out DIR --policies NAME,...   # plan files, no model
    python experiments/gpu_accuracy.py prompts --model GGUF --name NAME --state DIR --out DIR  # --state/prompts.pt
    python experiments/gpu_accuracy.py ... --smoke        # tiny sizes (size flags ignored), to check a job on CPU

calibrate (one call): the `method="robust"` profile (timed: that is the calibration cost) and plans at 50%, 33%
and 25% retrieval layers; DuoAttention head gates (one gate per KV head, distilled on the same calibration data)
for the head-level baseline. Everything goes to --state (kept on the GPU machine between calls) and --out. The
plain-ablation ranking the robust profile records on the way gives the "ablation@r" baseline plans; plans made by
`zigzag-attn calibrate` with the device's defaults, saved as --state/default/plan_R.json, are "default@R".
eval: prompts of every task x length on genres calibration never saw ("technical" GNU manuals, "legal" licence
texts; half of the prompts each), RULER wordings (calibration uses others). Policies go in PRIORITY order; a
chunk (one policy on one task at every length) starts only if, judged by the last chunk, it ends before
--deadline. Each finished chunk is appended to --out/matrix.jsonl at once, so a cut-off call keeps its numbers;
rows already in --state/matrix.jsonl are skipped. A policy whose plan is identical to one with rows already (e.g.
hybrid-m1@r and zigzag@r, experiments/hybrid_policies.py) gets copies of them, marked "same_as", without running.
plans: writes --out/plans/NAME.json ('@' as '_') for --policies (default: the frontier's), for bench_plans.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import shlex
import sys
import time
from pathlib import Path

import torch

import zigzag_attn as zz
from zigzag_attn.data.calibration import calibration_groups
from zigzag_attn.data.passkey import Sample
from zigzag_attn.data.texts import load_text
from zigzag_attn.eval.tasks import make
from zigzag_attn.model_info import describe
from zigzag_attn.models import load, load_tokenizer
from zigzag_attn.profile import measure

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hybrid_policies as hp  # noqa: E402
import matrix_policies as mp  # noqa: E402

GENRES = ("technical", "legal")
FULL = dict(length=8192, samples=4, candidates=6, gate_steps=100, gate_samples=4, gate_len=4096,
            lengths=(4096, 8192, 16384, 32768), n=24, randoms=5, sink=64, window=256)
SMOKE = dict(length=512, samples=1, candidates=2, gate_steps=3, gate_samples=1, gate_len=512, lengths=(384, 512), n=2,
             randoms=2, sink=4, window=32)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_model(args):
    """The model and tokenizer; with --cache, from (or else saved to) a plain copy there: later calls on the same
    machine skip the GGUF de-quantisation (about a minute for the 0.5B)."""
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    source = model_source(args)
    model, tok = load(source, dtype=dtype, device=args.device)
    if args.cache and source != args.cache:  # the weights are de-quantised already; only the GGUF marker blocks saving
        quantizer, model.hf_quantizer = getattr(model, "hf_quantizer", None), None
        qc = model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(args.cache)
        model.hf_quantizer = quantizer
        if qc is not None:
            model.config.quantization_config = qc
        tok.save_pretrained(args.cache)
    model.config.name_or_path = args.name  # plans record the alias, not the machine's path
    return model, tok


def model_source(args) -> str:
    """--cache once a call has filled it, else --model."""
    return args.cache if args.cache and (Path(args.cache) / "config.json").exists() else args.model


def calibrate(args, cfg, model, tok, state: Path, out: Path) -> None:
    if args.part in ("both", "robust"):
        robust(args, cfg, model, tok, state, out)
    if args.part in ("both", "gates"):
        gates(cfg, model, tok, state, out)
    if args.part == "layergates":
        gates(cfg, model, tok, state, out, granularity="layer")


def robust(args, cfg, model, tok, state: Path, out: Path) -> None:
    t = time.perf_counter()
    scores = zz.profile(model, tok, method="robust", length=cfg["length"], samples=cfg["samples"], sink=cfg["sink"],
                        window=cfg["window"], batch_size=8, candidates=cfg["candidates"], progress=False)
    seconds = time.perf_counter() - t
    log(f"robust profile: {seconds:.1f} s; ranking {scores.meta['ranking']}; "
        f"validation {scores.meta.get('validation', {}).get('worst_loss_rise')}")
    scores.save(state / "robust_scores.json")
    for r in mp.RATIOS:
        plan = zz.solve(scores, retrieval_ratio=r, sink=cfg["sink"], window=cfg["window"])
        prov = {**plan.provenance, "command": "python " + shlex.join(sys.argv), "model_name": args.name,
                "method": "robust", "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                "dtype": str(model.dtype).removeprefix("torch."), "seconds": round(seconds, 1),
                "calibration": {"tasks": list(scores.meta["groups"]), "genres": ["calibration (fiction)", "code"],
                                "length": cfg["length"], "samples": cfg["samples"]},
                "profile": scores.meta}
        plan = zz.Plan.from_layers(plan.modes, sink=plan.sink, window=plan.window, model=plan.model, provenance=prov)
        for d in (state, out):
            plan.save(d / f"{args.name}_{r}.json")  # '@' does not survive the device transfer
        log(f"zigzag@{r}: {plan.describe()}")
    scores.save(out / "robust_scores.json")


def gates(cfg, model, tok, state: Path, out: Path, granularity: str = "head") -> None:
    """DuoAttention's distillation objective with one gate per KV head (head_scores.json: the duo@r baseline) or
    per layer (layer_gates.json: the layergates@r candidate)."""
    groups = calibration_groups(tok, lengths=(cfg["gate_len"],), samples=cfg["gate_samples"], seed=7)
    data = [s for g in groups.values() for s in g]
    t = time.perf_counter()
    scores = zz.profile(model, tok, method="gates", data=data, granularity=granularity, steps=cfg["gate_steps"],
                        sink=cfg["sink"], window=cfg["window"], progress=False)
    log(f"DuoAttention {granularity} gates: {time.perf_counter() - t:.1f} s, {cfg['gate_steps']} steps on "
        f"{len(data)} prompts, mean change of a gate {scores.meta['mean_change']:.2f}")
    for d in (state, out):
        scores.save(d / ("head_scores.json" if granularity == "head" else "layer_gates.json"))


def prompts(cfg, tok, tasks, lengths, workers: int = 1, store: Path | None = None) -> dict[tuple[str, int], list]:
    """Every (task, length) cell: cfg["n"] prompts of each genre, the first genre's first. Built in `workers`
    forked processes (call it before CUDA is touched); the prompts do not depend on how they were built. With
    `store` (a file in --state), cells built by an earlier call on this machine are read back instead."""
    jobs = [(task, n, g) for task in tasks for n in lengths for g in GENRES]
    vocab = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()[:16]
    key = {j: f"{vocab}|{cfg['n']}|{'/'.join(map(str, j))}" for j in jobs}
    kept = torch.load(store, weights_only=True) if store is not None and store.exists() else {}
    todo = [j for j in jobs if key[j] not in kept]
    global _TOK, _N
    _TOK, _N = tok, cfg["n"]
    if workers > 1 and len(todo) > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(todo))) as pool:
            made = pool.map(_cell, todo, chunksize=1)
    else:
        made = list(map(_cell, todo))
    for j, samples in zip(todo, made, strict=True):
        kept[key[j]] = [{"input_ids": s.input_ids, "labels": s.labels, "answers": list(s.answers),
                         "depths": list(s.depths)} for s in samples]
    if store is not None and todo:
        torch.save(kept, store)
    cells: dict[tuple[str, int], list] = {}
    for task, n, g in jobs:
        cells.setdefault((task, n), []).extend(
            Sample(d["input_ids"], d["labels"], tuple(d["answers"]), tuple(d["depths"])) for d in kept[key[task, n, g]])
    return cells


_TOK, _N = None, 0  # what forked prompt builders read


def _cell(job):
    task, n, genre = job
    return make(task, _TOK, n, n=_N, text=load_text(split=genre),
                seed=random.Random(f"{task}/{n}/{genre}").randrange(2**31), depth=None)


def evaluate(args, cfg, model, tok, state: Path, out: Path, cache: dict) -> None:
    """Every policy on the prompts of `cache` ((task, length) -> samples), in matrix_policies.PRIORITY order,
    until --deadline."""
    info = describe(model)
    plans = mp.policies(cfg, info, state)
    extra = [n for n in (args.policies or "").split(",") if mp.is_extended(n)]
    try:
        plans.update({n: mp.extended(n, plans, cfg, info, state) for n in extra})
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"--policies: {e}") from None
    known = (set(mp.KNOWN) | set(extra)) & set(plans)
    unknown = sorted(set(args.policies.split(",")) - known) if args.policies else []
    if unknown:  # a misspelt or unavailable policy would otherwise be skipped without a word
        raise SystemExit(f"--policies: no such policy here: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    last = 0.0  # seconds the last chunk took
    f = state / "matrix.jsonl"
    done = {(r["policy"], r["task"], r["length"]): r for r in map(json.loads, f.read_text().splitlines())} \
        if f.exists() else {}
    same = {a: b for a, b in hp.twins(plans).items() if plans[a] is not None}

    def write(row: dict) -> None:
        done[row["policy"], row["task"], row["length"]] = row
        for f in (state / "matrix.jsonl", out / "matrix.jsonl"):
            with open(f, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    lengths = list(cfg["lengths"])
    for names, tasks in [*mp.PRIORITY, (extra, mp.TASKS)]:  # extended names: in the order given
        for name in names:
            if name not in plans or (args.policies and name not in args.policies.split(",")):
                continue
            plan = plans[name]
            for task in tasks:
                if args.tasks and task not in args.tasks.split(","):
                    continue
                todo = [n for n in lengths if (name, task, n) not in done]
                if not todo:
                    continue
                twin = next((o for o in same.get(name, []) if all((o, task, n) in done for n in todo)), None)
                if twin:
                    for n in todo:
                        write({**done[twin, task, n], "policy": name, "same_as": twin})
                    log(f"{name:>14} {task:>11} = {twin} (identical plan): rows copied")
                    continue
                if time.time() + last > args.deadline:
                    log(f"deadline: not started: {name} {task}")
                    continue
                t = time.perf_counter()
                for n in todo:
                    samples = cache[task, n]
                    batch = max(1, args.batch_tokens // n)  # 1 (the default): no padding, no mask
                    m = measure(model, samples, plan, batch_size=batch)
                    row = {"model": args.name, "policy": name, "task": task, "length": n, "prompts": len(samples),
                           "answers": len(m.correct), "correct": sum(m.correct), "accuracy": m.accuracy,
                           "loss": m.loss, "kv_fraction": 1.0 if plan is None else plan.kv_fraction(n),
                           **({} if plan is None else {"window": plan.window, "sink": plan.sink,
                                                       "kv_dtype": plan.kv_dtype}),
                           "per_genre": {g: sum(m.correct[i] for i in _answers(samples, g, cfg["n"]))
                                         for g in GENRES}}
                    write(row)
                last = time.perf_counter() - t
                log(f"{name:>14} {task:>11} {len(todo)} lengths in {last:.1f} s: " + " ".join(
                    f"{r['accuracy']:.2f}" for r in _last(out / "matrix.jsonl", len(todo))))


def _answers(samples, genre: str, n: int) -> list[int]:
    """Indices into the flat answer list of the prompts of `genre` (the first n prompts are GENRES[0]'s)."""
    idx, out = 0, []
    for i, s in enumerate(samples):
        k = len(s.answers)
        if (i < n) == (genre == GENRES[0]):
            out += range(idx, idx + k)
        idx += k
    return out


def _last(path: Path, k: int) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()[-k:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("calibrate", "eval", "plans", "prompts"))
    ap.add_argument("--model", help="a .gguf file or a local HF directory (calibrate, eval)")
    ap.add_argument("--name", help="the alias the plans record, e.g. qwen2.5-coder-0.5b (calibrate, eval)")
    ap.add_argument("--state", required=True, help="kept between calls: plans, scores, finished rows")
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=float("inf"), help="eval: start no chunk that would end later "
                    "than this (seconds since the epoch)")
    ap.add_argument("--policies", help="eval: only these policies, comma-separated")
    ap.add_argument("--tasks", help="eval: only these tasks, comma-separated")
    ap.add_argument("--lengths", help="eval lengths, comma-separated (default: 4k, 8k, 16k, 32k)")
    ap.add_argument("--calib-length", type=int, help="calibration prompt length (default 8192)")
    ap.add_argument("--part", choices=("both", "robust", "gates", "layergates"), default="both",
                    help="calibrate: the robust layer profile, the DuoAttention head gates, or both (two processes "
                    "can share a GPU); layergates: gates of one per layer, for the layergates@r plans")
    ap.add_argument("--candidates", type=int, help="robust profile: layers tried per greedy round (default 6)")
    ap.add_argument("--gate-steps", type=int, help="head gates: training steps (default 100; DuoAttention uses 2000)")
    ap.add_argument("--gate-samples", type=int, help="head gates: prompts per calibration task (default 4)")
    ap.add_argument("--randoms", type=int, help=f"random layer sets per ratio (default 5, at most {mp.MAX_RANDOMS})")
    ap.add_argument("--n", type=int, help="eval prompts per genre and cell (default 24: n = 48 per cell)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cache", help="a directory for a plain bf16 copy of the model (made by the first call)")
    ap.add_argument("--batch-tokens", type=int, default=0, help="eval: prompts per forward = this // length "
                    "(left-padded, masked); default 0: one prompt per forward, unpadded (flash kernels)")
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1), help="eval: prompt builders")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.randoms is not None and not 0 <= args.randoms <= mp.MAX_RANDOMS:
        ap.error(f"--randoms must be 0..{mp.MAX_RANDOMS}; got {args.randoms}")
    sizes = {"lengths": args.lengths and tuple(int(x) for x in args.lengths.split(",")), "n": args.n,
             "length": args.calib_length, "gate_len": args.calib_length, "candidates": args.candidates,
             "gate_steps": args.gate_steps, "gate_samples": args.gate_samples}
    if not args.smoke:  # --smoke: tiny sizes whatever a job asks for (it checks the job's logic, on CPU)
        cfg.update({k: v for k, v in sizes.items() if v is not None})
    if args.randoms is not None:  # the policies a job names must exist, smoke or not
        cfg["randoms"] = args.randoms
    state, out = Path(args.state), Path(args.out)
    if args.command == "plans":
        names = args.policies.split(",") if args.policies else mp.FRONTIER
        return mp.write_plans(cfg, state, out / "plans", names, log)
    if not (args.model and args.name):
        ap.error(f"{args.command} needs --model and --name")
    names = set(mp.KNOWN)
    bad = [n for n in (args.policies or "").split(",") if n and n not in names and not mp.is_extended(n)]
    if bad:  # before any slow work; availability: evaluate
        ap.error(f"--policies: unknown {', '.join(bad)}")
    if args.tasks and set(args.tasks.split(",")) - set(mp.TASKS):
        bad = ", ".join(sorted(set(args.tasks.split(",")) - set(mp.TASKS)))
        ap.error(f"--tasks: unknown {bad} (known: {', '.join(mp.TASKS)})")
    state.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if args.command == "calibrate":
        model, tok = load_model(args)
        log(f"loaded {args.name} in {time.perf_counter() - t:.1f} s on {args.device}")
        return calibrate(args, cfg, model, tok, state, out)
    tasks = [t for t in mp.TASKS if not args.tasks or t in args.tasks.split(",")]
    cells = prompts(cfg, load_tokenizer(model_source(args)), tasks, cfg["lengths"], args.workers, state / "prompts.pt")
    log(f"{sum(map(len, cells.values()))} prompts built in {time.perf_counter() - t:.1f} s ({args.workers} workers)")
    if args.command == "prompts":  # only fill --state/prompts.pt, for later calls (or processes) to read
        return
    t = time.perf_counter()
    model, tok = load_model(args)
    log(f"loaded {args.name} in {time.perf_counter() - t:.1f} s on {args.device}")
    evaluate(args, cfg, model, tok, state, out, cells)


if __name__ == "__main__":
    main()
