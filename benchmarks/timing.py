"""Measuring helpers the benchmarks share: CUDA-event and host timing of a step, peak memory, a static cache made
to look filled, the kernels a step spends its time in, the card's copy bandwidth and matmul rate, and a time limit
on a compile (SIGALRM).

On CPU (`--smoke` runs) the timers fall back to wall time and the memory counters to 0: the logic runs, the numbers
mean nothing.
"""

from __future__ import annotations

import signal
import statistics
import time

import torch

from zigzag_attn.runtime.static_cache import RingLayer, StaticMixedLayer, ZigzagStaticCache

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def cuda_ms(fn) -> float:
    if not torch.cuda.is_available():  # --smoke on CPU checks the logic, not the speed
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b)


def run_step(call):
    """One compiled decode step (its output); a new CUDA-graph generation each time, as `generate` starts one per
    token."""
    torch.compiler.cudagraph_mark_step_begin()
    return call()


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


HOST_STEPS = 5


def host_ms(call) -> float:
    """Median host time of a compiled step, from its call until it returns (the device idle before, not after)."""
    return host_times(call, HOST_STEPS)["ms"]


def host_times(call, steps: int) -> dict:
    """Median and p10/p90 host ms of `steps` compiled steps, each started with the device idle."""
    got = []
    for _ in range(steps):
        sync()
        t = time.perf_counter()
        run_step(call)
        got.append((time.perf_counter() - t) * 1e3)
    sync()
    got.sort()
    return {"ms": statistics.median(got), "p10": got[len(got) // 10], "p90": got[9 * len(got) // 10]}


def reset_peak() -> int:
    """Free cached blocks, restart the peak count; bytes allocated now (0 on CPU)."""
    if DEVICE != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def mark_filled(cache, n: int) -> None:
    """Make a static cache look as if `n` tokens had been seen, its buffers filled with random values in place.

    Decode work does not depend on which values the keys hold: static layers attend over their whole buffer under a
    mask, rings over their slots. Positions matter for masks only, so they are set as a real prefill would. The
    values are random rather than the allocation's zeros (which can time faster than real data): 16-bit ones
    normal, float8 ones finite random bytes with their scales at 0.01.
    """
    for layer in cache.layers:
        for sub in (layer.full, layer.stream) if isinstance(layer, StaticMixedLayer) else (layer,):
            sub.cumulative_length.fill_(n)
            for name in ("keys", "values", "key_scale", "value_scale"):
                t = getattr(sub, name, None)
                if t is None or not sub.is_initialized:
                    continue
                if t.element_size() == 1:
                    t.view(torch.uint8).random_(0, 120)  # e4m3fn bytes below 0x78: finite, |x| < 256
                elif "scale" in name:
                    t.fill_(0.01)
                else:
                    t.normal_()
    if isinstance(cache, ZigzagStaticCache) and cache.ring_pos is not None:
        ring = [layer for layer in cache.layers if isinstance(layer, (RingLayer, StaticMixedLayer))]
        if ring:
            sink, window = cache.plan.sink, cache.plan.window
            pos = torch.cat([torch.arange(sink), torch.arange(n - window, n)]).to(cache.ring_pos.device)
            slot = torch.where(pos < sink, pos, sink + (pos - sink) % window)
            cache.ring_pos.fill_(-1)
            cache.ring_pos[:, slot] = pos
            cache.next_pos.fill_(n)


def top_kernels(fn, steps: int = 5, top: int = 60) -> list[dict]:
    """The kernels one call of `fn` spends its device time in (torch profiler over `steps` calls), largest first;
    the first row sums all of them."""
    from torch.profiler import ProfilerActivity, profile

    cuda = DEVICE == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = (e.device_time_total if cuda else e.self_cpu_time_total) / steps
        if us > 0:
            rows.append({"name": e.key[:90], "us_per_step": round(us, 1), "calls_per_step": e.count / steps})
    total = {"name": "(all kernels)", "us_per_step": round(sum(r["us_per_step"] for r in rows), 1),
             "calls_per_step": sum(r["calls_per_step"] for r in rows)}
    return [total] + sorted(rows, key=lambda r: -r["us_per_step"])[:top]


def copy_bandwidth() -> float:
    """Achievable HBM bandwidth in bytes/s: a 4 GiB device-to-device copy counts 2 x its size."""
    a = torch.empty(1 << 31, dtype=torch.float16, device=DEVICE)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ms = statistics.median(cuda_ms(lambda src=a, dst=b: dst.copy_(src)) for _ in range(10))
    del a, b
    torch.cuda.empty_cache()
    return 2 * (1 << 32) / ms * 1e3


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=DEVICE)
    for _ in range(3):
        a @ a
    ms = statistics.median(cuda_ms(lambda: a @ a) for _ in range(10))
    return 2 * 8192 ** 3 / ms * 1e3


def cuda_bytes() -> tuple[int, int]:
    """(allocated now, peak since the last reset); zeros on CPU."""
    return (torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()) if DEVICE == "cuda" else (0, 0)


class CompileTimeout(BaseException):
    """The compile limit was reached. Not an Exception: torch's compile paths catch those and carry on (eagerly),
    so a timeout raised inside them would be swallowed and the step reported as compiled."""


class time_limit:
    """Raise CompileTimeout in the main thread after `seconds` (SIGALRM; the compile runs in the main thread)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        def stop(*_):
            raise CompileTimeout(f"compile limit of {self.seconds:.0f} s reached")

        self.old = signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)
