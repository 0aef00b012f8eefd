"""Streaming-layer prefill kernel cost vs context: FlexAttention sink+window vs full causal SDPA.

    python benchmarks/kernel_scaling.py [--heads 32 --kv-heads 8 --head-dim 128 --sink 64 --window 256]

One layer's attention in bf16 at batch 1 (Llama-3-8B head shape). Medians over 20 timed runs with CUDA
events after warm-up. The block mask is built once per forward and shared by every streaming layer,
so its build time is listed apart.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from zigzag_attn.runtime import kernels


def median_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--lengths", default="4096,8192,16384,32768,65536")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'N':>7} {'full SDPA ms':>13} {'flex s+w ms':>12} {'mask build ms':>14} {'speedup':>8} {'FLOP bound':>11}")
    for n in map(int, args.lengths.split(",")):
        row(n, args)


def row(n: int, args) -> None:
    q = torch.randn(1, args.heads, n, args.head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, args.kv_heads, n, args.head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    pos = torch.arange(n, device="cuda")[None]
    full = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    build = median_ms(lambda: kernels.sink_window_block_mask(pos, pos, sink=args.sink, window=args.window))
    bm = kernels.sink_window_block_mask(pos, pos, sink=args.sink, window=args.window)
    flex = median_ms(lambda: kernels.sink_window_flex(q, k, v, bm, scale=None))
    w = args.sink + args.window
    bound = (n * (n + 1) / 2) / sum(min(i + 1, w) for i in range(n))  # attended pairs: causal / sink+window
    print(f"{n:>7} {full:>13.3f} {flex:>12.3f} {build:>14.3f} {full / flex:>7.1f}x {bound:>10.1f}x", flush=True)

if __name__ == "__main__":
    main()
