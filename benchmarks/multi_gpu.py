"""Multi-GPU runs of a patched model: inference split over GPUs, and calibration spread over GPUs.

    python benchmarks/multi_gpu.py --model PATH_OR_ALIAS --out DIR [--gpus 2]
    python benchmarks/multi_gpu.py --model smollm2-135m --out DIR --cpu-smoke   # the same code, tiny, on CPU

(a) inference: the model loaded whole on cuda:0, and loaded with device_map="auto" and a `max_memory` that forces
    its layers over --gpus GPUs; both patched with one plan (shipped "smollm2-135m@0.5" for SmolLM2, else every
    other full-attention layer streaming); greedy generation of --new-tokens tokens from a ~6k-token passkey prompt
    in bf16. Checks: equal tokens, prefill logits close, each layer's cache on the device that runs the layer,
    streaming layers within sink + window.
(b) calibration: `refine` from full attention to half the layers on 4 prompts x 4k tokens, on 1 GPU and on --gpus
    GPUs (model replicas, one thread each): wall time, speed-up, and whether the chosen plans are equal.
--cpu-smoke runs both parts on CPU with tiny settings: the "split" model keeps half its layers in memory and
offloads the rest to disk (device_map="auto" with a cpu max_memory), and the replica is a second CPU copy.
Writes DIR/multi_gpu.json, prints a table, exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

import zigzag_attn as zz
from zigzag_attn.data import IGNORE, passkey_samples
from zigzag_attn.model_info import execution_device
from zigzag_attn.models import ALIASES, load, resolve
from zigzag_attn.plan import RETRIEVAL, STREAMING
from zigzag_attn.profile import measure, refine
from zigzag_attn.profile.replicas import make_replicas
from zigzag_attn.runtime.cache import MixedLayer

SMOKE = dict(prompt_len=640, new_tokens=8, calib_n=2, calib_len=256, calib_from=4, dtype="float32", sink=16,
             window=64)  # sink/window: refine's plans (a shipped plan keeps its own)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a local model directory, a .gguf file, or an alias")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--plan", help="a plan file or shipped plan name (default: see above)")
    ap.add_argument("--prompt-len", type=int, default=6000)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--calib-n", type=int, default=4)
    ap.add_argument("--calib-len", type=int, default=4096)
    ap.add_argument("--calib-from", type=int, help="start refine from only the first N choosable layers retrieval")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--parts", default="inference,calibration")
    ap.add_argument("--cpu-smoke", action="store_true", help="both parts on CPU with tiny settings")
    args = ap.parse_args()
    if args.cpu_smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        devices = ["cpu", "cpu"]
    else:
        if not torch.cuda.is_available() or torch.cuda.device_count() < args.gpus or args.gpus < 2:
            sys.exit(f"needs --gpus >= 2 CUDA GPUs; torch sees {torch.cuda.device_count()} (or use --cpu-smoke)")
        devices = [f"cuda:{i}" for i in range(args.gpus)]
    dtype = getattr(torch, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"args": vars(args), "devices": devices, "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version(),
           "gpu_names": [torch.cuda.get_device_name(i) for i in range(args.gpus)] if not args.cpu_smoke else None}
    t0 = time.perf_counter()
    model, tok = load(args.model, dtype=dtype, device=devices[0])
    plan = choose_plan(args, model)
    res["plan"] = {"describe": plan.describe(), "modes": list(plan.modes), "sink": plan.sink, "window": plan.window}
    print(f"model {args.model} on {devices[0]} ({args.dtype}); plan: {plan.describe()}", flush=True)
    checks = {}
    if "inference" in args.parts:
        res["inference"] = inference(args, model, tok, plan, devices, dtype, out)
        checks.update(res["inference"]["checks"])
        save(out, res)
    if "calibration" in args.parts:
        res["calibration"] = calibration(args, model, tok, devices)
        checks.update(res["calibration"]["checks"])
    res["checks"], res["elapsed_s"] = checks, round(time.perf_counter() - t0, 1)
    save(out, res)
    table(res)
    failed = [k for k, ok in checks.items() if not ok]
    print("ALL CHECKS PASSED" if not failed else f"FAILED: {', '.join(failed)}")
    print(f"wrote {out / 'multi_gpu.json'}")
    sys.exit(1 if failed else 0)


def choose_plan(args, model) -> zz.Plan:
    info = zz.describe(model)
    if args.plan or args.model == "smollm2-135m":
        return zz.Plan.load(args.plan or "smollm2-135m@0.5")
    full = [i for i in range(info.num_layers) if i not in info.native_sliding]
    modes = [STREAMING if i in full[1::2] else RETRIEVAL for i in range(info.num_layers)]
    return zz.Plan.from_layers(modes, sink=args.sink, window=args.window, model=info)


def load_split(args, model, dtype, devices, out: Path):
    """The model again, through from_pretrained(device_map="auto") with budgets that force a split."""
    from transformers import AutoModelForCausalLM

    folder, gguf = resolve(args.model)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    largest = max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in model.model.layers)
    if args.cpu_smoke:  # half the weights in memory, the rest offloaded to disk
        max_memory = {"cpu": size // 2}
    else:  # an even share (+ a layer) on each GPU but the last, which takes the rest
        share = size // len(devices) + 2 * largest
        max_memory = {i: share for i in range(len(devices) - 1)}
        max_memory[len(devices) - 1] = torch.cuda.mem_get_info(len(devices) - 1)[0] * 9 // 10
    kwargs = {"gguf_file": gguf} if gguf else {}
    split = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype, device_map="auto",
                                                 max_memory=max_memory, offload_folder=str(out / "offload"),
                                                 **kwargs).eval()
    if args.model in ALIASES:
        split.config.name_or_path = args.model
    return split, max_memory


def sync() -> None:
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


@torch.no_grad()
def run_patched(model, plan, prompt, new_tokens: int, pad: int):
    """Prefill logits (no cache), then greedy generation; the cache and per-layer report of the generation."""
    zz.patch(model, plan)
    x = prompt.to(execution_device(model.get_input_embeddings()))
    sync()
    t = time.perf_counter()
    logits = model(input_ids=x, use_cache=False).logits
    sync()
    prefill_s = time.perf_counter() - t
    t = time.perf_counter()
    gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, return_dict_in_generate=True, pad_token_id=pad)
    sync()
    generate_s = time.perf_counter() - t
    cache = zz.cache_of(gen)
    layers = []
    for i, (layer, stored) in enumerate(zip(cache.layers, cache.stored_tokens(), strict=True)):
        parts = (layer.full, layer.stream) if isinstance(layer, MixedLayer) else (layer,)
        where = {str(tensor.device) for p in parts for tensor in (p.keys, p.values)}
        runs_on = str(execution_device(model.model.layers[i]))
        bounded = plan.modes[i] == RETRIEVAL or stored <= plan.sink + plan.window
        layers.append({"layer": i, "mode": plan.modes[i], "runs_on": runs_on, "cache_on": sorted(where),
                       "stored": stored, "bounded": bounded, "device_ok": where == {runs_on}})
    zz.unpatch(model)
    return logits, gen.sequences[0, x.shape[1]:].cpu(), layers, round(prefill_s, 3), round(generate_s, 3)


def inference(args, model, tok, plan, devices, dtype, out: Path) -> dict:
    sample = passkey_samples(tok, n=1, length=args.prompt_len, keys=1, split="evaluation")[0]
    first = int((sample.labels != IGNORE).nonzero()[0])
    prompt = sample.input_ids[:first][None]
    split, max_memory = load_split(args, model, dtype, devices, out)
    device_map = {k: f"cuda:{v}" if isinstance(v, int) else str(v) for k, v in split.hf_device_map.items()}
    placement = sorted(set(device_map.values()))
    print(f"split model: {len(placement)} placements {placement}", flush=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    runs = {}
    for name, m in (("single", model), ("split", split)):
        logits, tokens, layers, prefill_s, generate_s = run_patched(m, plan, prompt, args.new_tokens, pad)
        for r in layers:  # where the weights live: a GPU, or "cpu"/"disk" offload run on the execution device
            r["placed"] = device_map.get(f"model.layers.{r['layer']}", "?") if m is split else r["runs_on"]
        runs[name] = {"logits": logits, "tokens": tokens, "layers": layers, "prefill_s": prefill_s,
                      "generate_s": generate_s, "text": tok.decode(tokens)}
        print(f"{name}: prefill {prefill_s} s, generate {generate_s} s: {runs[name]['text']!r}", flush=True)
    a = runs["single"]["logits"].float()
    b = runs["split"]["logits"].to(a.device).float()
    diff = (a - b).abs()
    single, split_run = runs["single"], runs["split"]
    result = {
        "prompt_tokens": prompt.shape[1], "answer": sample.answers[0], "max_memory": {str(k): v for k, v in
                                                                                         max_memory.items()},
        "hf_device_map": device_map, "placements": placement,
        "prefill_logits_max_abs_diff": float(diff.max()),
        "prefill_logits_rel_error": float((a - b).norm() / a.norm()),
        "prefill_argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "tokens_single": single["tokens"].tolist(), "tokens_split": split_run["tokens"].tolist(),
        "text_single": single["text"], "text_split": split_run["text"],
        "answer_found": {n: sample.answers[0] in r["text"] for n, r in runs.items()},
        "seconds": {n: {"prefill": r["prefill_s"], "generate": r["generate_s"]} for n, r in runs.items()},
        "layers_single": single["layers"], "layers_split": split_run["layers"],
    }
    if not args.cpu_smoke:
        result["max_memory_allocated_gib"] = [round(torch.cuda.max_memory_allocated(i) / 2**30, 2)
                                              for i in range(len(devices))]
    result["checks"] = {
        "split_uses_several_devices": len(placement) >= 2,
        **({} if args.cpu_smoke else {"split_only_on_gpus": all(p.startswith("cuda") for p in placement)}),
        "tokens_equal": torch.equal(single["tokens"], split_run["tokens"]),
        "cache_on_layer_device": all(r["device_ok"] for r in single["layers"] + split_run["layers"]),
        "streaming_bounded": all(r["bounded"] for r in single["layers"] + split_run["layers"]),
    }
    del split, runs, a, b, diff
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def calibration(args, model, tok, devices) -> dict:
    info = zz.describe(model)
    samples = passkey_samples(tok, n=args.calib_n, length=args.calib_len, keys=min(4, args.calib_len // 64), seed=1)
    full = [i for i in range(info.num_layers) if i not in info.native_sliding]
    choosable = full[:args.calib_from] if args.calib_from else full
    modes = [RETRIEVAL if i in choosable or i in info.native_sliding else STREAMING for i in range(info.num_layers)]
    start = zz.Plan.from_layers(modes, sink=args.sink, window=args.window, model=info)
    k = len(choosable) // 2
    replicas = make_replicas(model, devices[1:])
    warm = zz.Plan.from_layers([STREAMING if i in choosable[::2] else m for i, m in enumerate(modes)],
                               sink=args.sink, window=args.window, model=info)
    for m in (model, *replicas):  # compile kernels on every device before timing
        measure(m, samples, warm, batch_size=args.batch)
    runs = {}
    for name, reps in (("1 device", None), (f"{len(devices)} devices", replicas)):
        sync()
        t = time.perf_counter()
        plan = refine(start, model, samples, retrieval_layers=k, batch_size=args.batch, replicas=reps)
        sync()
        runs[name] = {"seconds": round(time.perf_counter() - t, 2), "modes": list(plan.modes),
                      "history": plan.provenance["refine"]["history"]}
        print(f"refine on {name}: {runs[name]['seconds']} s, streaming order "
              f"{[h['streaming'] for h in runs[name]['history']]}", flush=True)
    one, many = runs.values()
    evaluations = sum(len(choosable) - r for r in range(len(choosable) - k))
    return {"samples": len(samples), "tokens": max(len(s) for s in samples), "from_retrieval": len(choosable),
            "to_retrieval": k, "candidate_evaluations": evaluations, "runs": runs,
            "speedup": round(one["seconds"] / max(many["seconds"], 1e-9), 2),
            "checks": {"calibration_plans_equal": one["modes"] == many["modes"],
                       "calibration_history_equal": one["history"] == many["history"]}}


def save(out: Path, res: dict) -> None:
    (out / "multi_gpu.json").write_text(json.dumps(res, indent=1))


def table(res: dict) -> None:
    print("\n| part | quantity | value |\n| --- | --- | --- |")
    inf = res.get("inference")
    if inf:
        rows = [("prompt tokens", inf["prompt_tokens"]), ("split placements", ", ".join(inf["placements"])),
                ("tokens equal", inf["checks"]["tokens_equal"]),
                ("prefill logits max abs diff", f"{inf['prefill_logits_max_abs_diff']:.3g}"),
                ("prefill logits rel error", f"{inf['prefill_logits_rel_error']:.3g}"),
                ("prefill argmax agreement", f"{inf['prefill_argmax_agreement']:.4f}"),
                ("passkey answered (single / split)", f"{inf['answer_found']['single']} / "
                                                      f"{inf['answer_found']['split']}"),
                ("cache on each layer's device", inf["checks"]["cache_on_layer_device"]),
                ("streaming layers bounded", inf["checks"]["streaming_bounded"]),
                ("seconds single (prefill / generate)", "{prefill} / {generate}".format(**inf["seconds"]["single"])),
                ("seconds split (prefill / generate)", "{prefill} / {generate}".format(**inf["seconds"]["split"]))]
        for q, v in rows:
            print(f"| inference | {q} | {v} |")
        by_device = {}
        for r in inf["layers_split"]:
            mark = "" if r["mode"] == RETRIEVAL else "*"
            by_device.setdefault(f"{r['placed']} (runs on {r['runs_on']})", []).append(f"{r['layer']}{mark}")
        for d, ls in by_device.items():
            print(f"| inference | split: layers on {d}, * streaming | {' '.join(ls)} |")
    cal = res.get("calibration")
    if cal:
        rows = [("refine", f"{cal['from_retrieval']} -> {cal['to_retrieval']} retrieval layers, "
                           f"{cal['candidate_evaluations']} candidate evaluations x {cal['samples']} prompts x "
                           f"{cal['tokens']} tokens")]
        rows += [(f"seconds on {name}", r["seconds"]) for name, r in cal["runs"].items()]
        rows += [("speed-up", f"{cal['speedup']}x"), ("plans equal", cal["checks"]["calibration_plans_equal"]),
                 ("histories (losses) equal", cal["checks"]["calibration_history_equal"])]
        for q, v in rows:
            print(f"| calibration | {q} | {v} |")
    print()


if __name__ == "__main__":
    main()
