"""Conformance on CUDA in bf16 (FlexAttention and SDPA paths) against the float32 reference.

    python benchmarks/gpu_conformance.py [--smollm2 PATH.gguf] [--out docs/gpu_conformance.json] [--fp8-only]

For every family x {exclusive, mixed} x {one-pass prefill, chunked prefill, decode past the window,
left-padded batch} and each streaming backend, it reports ||patched_bf16 - ref_fp32|| / ||ref_fp32||
over the logits of real tokens, then does the same on SmolLM2 at 2k tokens. FP8 retrieval KV: the same plans with
kv_dtype "fp8", decoded past the window with the fused kernel and with dequantise + SDPA, against the float32
reference that applies the same quantisation (tests/reference.py). A case passes when that error
is <= 1e-2, or <= 1.25x the error of the unpatched bf16 model against its own float32 self (the "floor":
random tiny models, Gemma 3's especially, amplify bf16 rounding by themselves).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import FAMILIES, plans_for, tiny_model  # noqa: E402
from reference import reference_logits  # noqa: E402
from test_matrix import run_chunks  # noqa: E402

import zigzag_attn as zz  # noqa: E402

BOUND = 1e-2


def rel(out: torch.Tensor, ref: torch.Tensor, real: torch.Tensor) -> float:
    m = real.bool()
    d = out.float()[m] - ref.float()[m]
    return float(d.norm() / ref.float()[m].norm())


@torch.no_grad()
def check(model_fp32, plan, x, mask, backend, chunks, fp8_backend="auto"):
    ref = reference_logits(model_fp32, plan, x, mask)
    full_ref = model_fp32(input_ids=x, attention_mask=mask).logits
    model = model_fp32.to(torch.bfloat16)
    try:
        floor = rel(model(input_ids=x, attention_mask=mask).logits, full_ref, mask)
        with zz.patched(model, plan, streaming_backend=backend, fp8_backend=fp8_backend):
            one = model(input_ids=x, attention_mask=mask).logits
            chunked, cache = run_chunks(model, x, chunks, mask=mask)
        bounded = all(t <= plan.sink + plan.window for i, t in enumerate(cache.stored_tokens())
                      if plan.modes[i] != "retrieval")
    finally:
        model.to(torch.float32)
    one, chunked = rel(one, ref, mask), rel(chunked, ref, mask)
    good = max(one, chunked) <= max(BOUND, 1.25 * floor) and bounded
    return one, chunked, floor, bounded, good


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", help="path of SmolLM2-135M-Instruct .gguf (else the smollm2-135m alias)")
    ap.add_argument("--out", default="docs/gpu_conformance.json")
    ap.add_argument("--fp8-only", action="store_true", help="only the FP8 retrieval-KV cases")
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}  transformers {__import__('transformers').__version__}  "
          f"{torch.cuda.get_device_name()}")
    rows, ok = [], True
    g = torch.Generator().manual_seed(0)
    for family in FAMILIES:
        model = tiny_model(family).to(dev)
        for kind, plan in plans_for(model).items():
            plan = zz.Plan(plan.modes, 4, 16, plan.heads, plan.model)
            x = torch.randint(2, 96, (2, 300), generator=g).to(dev)
            mask = torch.ones_like(x)
            mask[1, :37] = 0
            runs = [] if args.fp8_only else [(plan, b, name, chunks, "auto") for b in ("flex", "sdpa") for name, chunks
                                             in (("prefill+chunks", [130, 77, 1, 92]), ("decode", [40] + [1] * 260))]
            runs += [(plan.with_kv_dtype("fp8"), "sdpa", f"fp8 {fb} decode", [40] + [1] * 260, fb)
                     for fb in ("triton", "dequantize")]
            for p, backend, name, chunks, fp8_backend in runs:
                t = time.perf_counter()
                one, chunked, floor, bounded, good = check(model, p, x, mask, backend, chunks, fp8_backend)
                ok &= good
                rows.append(dict(model=family, plan=kind, backend=backend, path=name, one_pass=one,
                                 chunked=chunked, floor=floor, bounded=bounded, ok=good, s=time.perf_counter() - t))
                print(f"{family:12s} {kind:9s} {backend:5s} {name:22s} one-pass {one:.2e}  chunked {chunked:.2e}"
                      f"  floor {floor:.2e}  bounded {bounded}  {'ok' if good else 'FAIL'}", flush=True)
    from zigzag_attn.models import load

    model, tok = load(args.smollm2 or "smollm2-135m", device="cuda")
    from zigzag_attn.data import load_text

    text = load_text(split="technical")
    x = tok(text, return_tensors="pt").input_ids[:, :2048].to(dev)
    mask = torch.ones_like(x)
    plan = zz.Plan.from_layers(["retrieval" if i % 2 == 0 else "streaming" for i in range(30)], sink=64, window=256,
                               model=zz.describe(model))
    for backend, fp8 in ([] if args.fp8_only else [("flex", None), ("sdpa", None)]) + [("sdpa", "triton")]:
        p = plan.with_kv_dtype("fp8") if fp8 else plan
        one, chunked, floor, bounded, good = check(model, p, x, mask, backend, [1000, 500, 300] + [1] * 248,
                                                   fp8 or "auto")
        ok &= good
        rows.append(dict(model="smollm2-135m", plan="exclusive" + (" fp8" if fp8 else ""), backend=backend,
                         path="2k prefill+chunks+decode",
                         one_pass=one, chunked=chunked, floor=floor, bounded=bounded, ok=good))
        print(f"smollm2-135m exclusive{' fp8' if fp8 else ''} {backend:5s} 2k   one-pass {one:.2e}  "
              f"chunked {chunked:.2e}  floor {floor:.2e}  bounded {bounded}  {'ok' if good else 'FAIL'}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"{sum(r['ok'] for r in rows)} passed, {sum(not r['ok'] for r in rows)} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
