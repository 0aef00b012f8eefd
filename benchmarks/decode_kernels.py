"""Decode attention kernels alone, and the weight reads around them, at the Llama-3-8B shape (CUDA).

    python benchmarks/decode_kernels.py --out DIR

- attention of one new token over N keys (32 q / 8 kv heads, head_dim 128, bf16), for the kernels a decode step
  can use: zigzag's `decode_attention` (split: torch matmuls over key chunks; sdpa: SDPA with grouped heads and
  an additive mask), SDPA with grouped heads and a boolean mask, and SDPA without a mask (the floor);
  N = 321 is a streaming layer's ring (sink 64 + window 256 + 1);
- `F.linear` of one token through each of the 8B's weight shapes (the rest of a decode step);
- bf16 accuracy of each kernel against a float32 reference.
Each timing is a CUDA graph replayed over distinct buffers (more bytes than L2 holds), median of 10 replays.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zigzag_attn.runtime.kernels import decode_attention  # noqa: E402

HEADS, KV, D = 32, 8, 128
L2_BYTES = 1 << 30  # cycle through this many bytes at least, so no read is served from L2


def graph_ms(fn, reps: int = 10) -> float:
    """Median ms of one replay of a CUDA graph of `fn`."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(reps + 2):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times[2:])


def attention_rows(batch: int, n: int, fill: float) -> list[dict]:
    """Every kernel on `copies` distinct caches of `n` slots, the first `fill` of them visible."""
    per = 2 * batch * KV * n * D * 2
    copies = max(1, min(64, -(-L2_BYTES // per)))
    if copies * per > 24e9:
        return []
    g = torch.Generator(device="cuda").manual_seed(n)
    q = [torch.randn(batch, HEADS, 1, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(copies)]
    k = [torch.randn(batch, KV, n, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(copies)]
    v = [torch.randn(batch, KV, n, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(copies)]
    filled = int(n * fill)
    mask = torch.zeros(batch, 1, 1, n, dtype=torch.bool, device="cuda")
    mask[..., :filled] = True
    kernels = {
        "split": lambda i: decode_attention(q[i], k[i], v[i], mask, scale=None),
        "sdpa": lambda i: decode_attention(q[i], k[i], v[i], mask, scale=None, sdpa=True),
        "sdpa_bool": lambda i: F.scaled_dot_product_attention(q[i], k[i], v[i], attn_mask=mask, enable_gqa=True),
    }
    if fill == 1.0:
        kernels["sdpa_nomask"] = lambda i: F.scaled_dot_product_attention(q[i], k[i], v[i], enable_gqa=True)
    ref = F.scaled_dot_product_attention(q[0].float(), k[0].float(), v[0].float(), attn_mask=mask,
                                         enable_gqa=True).transpose(1, 2)
    rows = []
    read = 2 * batch * KV * filled * D * 2  # bytes a kernel must read
    for name, fn in kernels.items():
        out = fn(0)
        out = out if out.shape[1] == 1 else out.transpose(1, 2)
        err = (out.float() - ref).abs().max().item()
        ms = graph_ms(lambda f=fn: [f(i) for i in range(copies)]) / copies
        rows.append({"part": "attention", "kernel": name, "batch": batch, "n": n, "filled": filled, "ms": ms,
                     "TBps": read / ms / 1e9, "max_err_vs_fp32": err})
    return rows


def linear_rows() -> list[dict]:
    shapes = {"q_proj": (4096, 4096), "k_proj": (1024, 4096), "o_proj": (4096, 4096), "gate_proj": (14336, 4096),
              "down_proj": (4096, 14336), "lm_head": (128256, 4096)}
    rows = []
    for name, (out_f, in_f) in shapes.items():
        copies = max(1, min(32, L2_BYTES * 4 // (out_f * in_f * 2)))
        w = [torch.randn(out_f, in_f, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        x = torch.randn(1, 1, in_f, device="cuda", dtype=torch.bfloat16)
        ms = graph_ms(lambda x=x, w=w: [F.linear(x, wi) for wi in w]) / copies
        rows.append({"part": "linear", "name": name, "shape": [out_f, in_f], "ms": ms,
                     "TBps": out_f * in_f * 2 / ms / 1e9})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--contexts", default="321,4096,32768,131072")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decode_kernels.py times CUDA kernels and needs a CUDA GPU; torch sees none")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "decode_kernels.jsonl").open("a")
    rows = [{"part": "machine", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "argv": sys.argv}]
    rows += linear_rows()
    for b in map(int, args.batches.split(",")):
        for n in map(int, args.contexts.split(",")):
            rows += attention_rows(b, n, 1.0)
        rows += attention_rows(b, 65536, 0.5)
    for r in rows:
        print(json.dumps(r), flush=True)
        log.write(json.dumps(r) + "\n")
    for r in rows:
        if r["part"] == "attention":
            print(f"B={r['batch']} N={r['n']:>6} filled={r['filled']:>6} {r['kernel']:>12}: {r['ms'] * 1e3:8.1f} us "
                  f"{r['TBps']:5.2f} TB/s  err {r['max_err_vs_fp32']:.2e}")
        elif r["part"] == "linear":
            print(f"linear {r['name']:>10} {r['shape']}: {r['ms'] * 1e3:8.1f} us {r['TBps']:5.2f} TB/s")


if __name__ == "__main__":
    main()
