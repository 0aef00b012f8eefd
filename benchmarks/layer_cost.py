"""Measured per-layer attention cost (decode step and prefill) for `zigzag_attn.CostModel`.

    python benchmarks/layer_cost.py --out DIR [--shapes llama3-8b,qwen2.5-coder-0.5b] [--contexts 4096,...]
    python benchmarks/layer_cost.py --out DIR --phases prefill --append   # add to DIR/<device-slug>.json
    python benchmarks/layer_cost.py --out DIR --smoke        # CPU, tiny sizes: checks the logic, not the speed

What is timed: the attention module (`self_attn`: q/k/v projections, RoPE, cache write, the plan's attention
kernels, output projection) of ONE decoder layer, through the library's real dispatch. Per head shape one model
with random weights is built (nothing is downloaded) whose layers are, in order: an untimed streaming "primer",
retrieval, streaming, and mixed with h = 1, H/2, H-1 of its H KV heads retrieval; it is patched with that plan, so
each layer runs the kernels a user's layer of that kind runs. The primer builds what one call's streaming layers
share (the prefill block mask), which a full model builds once for all of them. The MLP is tiny (it is not
timed), the vocabulary small.

How: a forward pre-hook and a forward hook on every `self_attn` record CUDA events; a layer's time is the
elapsed time between its two events. Events measure device time only when the host has queued the work before
the device reaches it, so the primer's pre-hook (after the model's preamble: positions and masks) queues
`torch.cuda._sleep` (a device spin, sized to twice the host time of a call) and an L2 flush (zeroing 256 MiB, so
KV and weights come from HBM as in a full model); a sample counts only if the host finished queueing the call
before the device finished the spin (checked with an event query), else the spin doubles and the call is
repeated (past 256 ms the sample is kept and counted "late": something in the layers waits on the device).
Figures are medians over the timed calls.
  decode:  one new token per row on the static cache compiled `generate` uses (`zz.make_cache(model,
           max_cache_len)`), marked filled to N tokens (values do not change the work), run eagerly: the same
           dispatch and kernels as the compiled step, without inductor's fusion of the small ops around them
           and with eager launch gaps removed by the spin (so close to a CUDA-graph replay).
  prefill: one forward over N tokens with the dynamic cache, as `generate` prefills; points with batch x N over
           --prefill-max-tokens are skipped. Streaming prefill compiles FlexAttention at first use (untimed).
Writes DIR/<device-slug>.json (`CostModel.save`; "cpu.json" on CPU) and prints a table (microseconds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zigzag_attn as zz  # noqa: E402
from zigzag_attn.cost import CostModel, device_slug  # noqa: E402
from zigzag_attn.runtime.hooks import cache_arg  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import copy_bandwidth, mark_filled  # noqa: E402

# name: (query heads, KV heads, head_dim, hidden size, qkv bias)
SHAPES = {"llama3-8b": (32, 8, 128, 4096, False), "qwen2.5-coder-0.5b": (14, 2, 64, 896, True),
          "qwen2.5-coder-1.5b": (12, 2, 128, 1536, True), "tiny": (4, 2, 8, 32, False)}
SMOKE = dict(shapes="tiny", contexts="24,48", batches="1,2", sink=4, window=8, reps=2, prefill_reps=2,
             prefill_max_tokens=96)
CUDA = torch.cuda.is_available()


def build(shape: str, sink: int, window: int):
    """A patched model of one head shape: layers primer (streaming, untimed), retrieval, streaming, mixed h=1, H/2,
    H-1. Returns (model, hs): the retrieval heads of every timed layer (all but the primer)."""
    q, kv, d, hidden, bias = SHAPES[shape]
    hs = [kv, 0, *sorted({h for h in (1, kv // 2, kv - 1) if 0 < h < kv})]  # retrieval heads per timed layer
    cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=64, num_hidden_layers=1 + len(hs),
                      num_attention_heads=q, num_key_value_heads=kv, head_dim=d, attention_bias=bias,
                      max_position_embeddings=1 << 21, rope_theta=500000.0, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=None)
    with torch.device("cuda" if CUDA else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if CUDA else torch.float32,
                                                 attn_implementation="sdpa").eval()
    plan = zz.Plan.from_heads([[False] * kv] + [[g < h for g in range(kv)] for h in hs], sink=sink, window=window,
                              model=zz.describe(model))
    return zz.patch(model, plan), hs


class LayerTimer:
    """Hooks on every layer's `self_attn`: the seconds each layer's attention module took in the last call."""

    def __init__(self, model):
        self.marks: dict[int, list] = {}
        for i, layer in enumerate(model.model.layers[1:]):  # the primer is not timed
            layer.self_attn.register_forward_pre_hook(partial(self._mark, i))
            layer.self_attn.register_forward_hook(partial(self._mark, i))

    def _mark(self, i: int, *_) -> None:
        if CUDA:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
        else:
            e = time.perf_counter()
        self.marks.setdefault(i, []).append(e)

    def seconds(self) -> list[float]:
        """Per layer, after the call has finished (CUDA: synchronized)."""
        out = []
        for i in sorted(self.marks):
            a, b = self.marks[i]
            out.append(a.elapsed_time(b) / 1e3 if CUDA else b - a)
        return out


class Runner:
    """Timed calls with the host ahead of the device (see the module docstring). The spin is queued by a pre-hook
    on the primer layer, after the model's own preamble (positions, masks), which may wait on the device."""

    def __init__(self):
        self.late, self.spin_ms, self.ready = 0, 0.0, None  # late: samples of the last point with the host behind
        if CUDA:
            self.flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(1_000_000)  # warm
            a.record()
            torch.cuda._sleep(10_000_000)
            b.record()
            torch.cuda.synchronize()
            self.cycles_per_ms = 1e7 / a.elapsed_time(b)

    def attach(self, model) -> None:
        model.model.layers[0].register_forward_pre_hook(self._before_layers)

    def _before_layers(self, *_) -> None:
        if not CUDA:
            return
        if self.spin_ms > 0:
            torch.cuda._sleep(int(self.spin_ms * self.cycles_per_ms))
        self.flush.zero_()  # KV and weights are read from HBM, as in a full model
        self.ready = torch.cuda.Event()
        self.ready.record()

    def median(self, timer: LayerTimer, fn, warm: int, reps: int) -> list[float]:
        """Per-layer median seconds of `fn` over `reps` timed calls, after `warm` untimed ones."""
        self.spin_ms, spin_ms = 0.0, 1.0
        for _ in range(warm):
            t = time.perf_counter()
            fn()
            spin_ms = max(1.0, 2e3 * (time.perf_counter() - t))  # twice the host's queueing time of the last one
            if CUDA:
                torch.cuda.synchronize()
        samples, self.late = [], 0
        while len(samples) < reps:
            timer.marks.clear()
            self.spin_ms, self.ready = spin_ms, None
            fn()
            ahead = not CUDA or (spin_ms > 0 and not self.ready.query())
            if CUDA:
                torch.cuda.synchronize()
            if ahead or spin_ms == 0:
                samples.append(timer.seconds())
                self.late += not ahead
            else:  # the device caught up: spin longer; past 256 ms `fn` must wait on the device itself: stop spinning
                spin_ms = 2 * spin_ms if spin_ms < 256 else 0
        self.spin_ms = 0.0
        return [statistics.median(col) for col in zip(*samples, strict=True)]


@torch.no_grad()
def decode_point(model, timer, runner, n: int, batch: int, reps: int) -> list[float]:
    warm = 2
    cache = zz.make_cache(model, max_cache_len=n + warm + 2 * reps + 24)  # room for every sample and retry
    kw = {cache_arg(model.forward): cache}
    tok = torch.randint(10, 256, (batch, 1), device=model.device)
    model(input_ids=tok, use_cache=True, **kw)  # allocates the cache
    mark_filled(cache, n)  # sink and window from the cache's plan
    return runner.median(timer, lambda: model(input_ids=tok, use_cache=True, logits_to_keep=1, **kw), warm, reps)


@torch.no_grad()
def prefill_point(model, timer, runner, n: int, batch: int, reps: int) -> list[float]:
    x = torch.randint(10, 256, (batch, n), device=model.device)
    return runner.median(timer, lambda: model(input_ids=x, use_cache=True, logits_to_keep=1), 2 if CUDA else 1,
                         reps)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for <device-slug>.json")
    ap.add_argument("--shapes", default="llama3-8b,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b",
                    help=f"comma-separated, of: {', '.join(SHAPES)}")
    ap.add_argument("--contexts", default="4096,8192,16384,32768,65536,131072")
    ap.add_argument("--prefill-contexts", default="4096,16384,65536")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--phases", default="decode,prefill")
    ap.add_argument("--prefill-max-tokens", type=int, default=65536, help="skip prefill where batch x N exceeds it")
    ap.add_argument("--reps", type=int, default=10, help="timed decode steps per point (median)")
    ap.add_argument("--prefill-reps", type=int, default=5, help="timed prefills per point (median)")
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--max-seconds", type=float, default=100,
                    help="skip the points that would start after this many seconds (a point is never cut short)")
    ap.add_argument("--append", action="store_true", help="add to the figures already in the output file")
    ap.add_argument("--smoke", action="store_true", help=f"tiny CPU run: {SMOKE}")
    args = ap.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        args.prefill_contexts = args.contexts
    if not CUDA and not args.smoke:
        sys.exit("layer_cost.py times CUDA kernels; without a CUDA GPU run it with --smoke (checks the logic only)")
    shapes = args.shapes.split(",")
    if unknown := [s for s in shapes if s not in SHAPES]:
        sys.exit(f"unknown --shapes {unknown}; known: {', '.join(SHAPES)}")
    lengths = [int(n) for c in (args.contexts, args.prefill_contexts) for n in c.split(",")]
    if min(lengths) <= args.sink + args.window:
        sys.exit(f"context lengths must exceed sink + window = {args.sink + args.window}; got {min(lengths)}")
    return run(args, shapes, sys.argv[1:] if argv is None else argv)


def run(args, shapes: list[str], argv: list[str]) -> Path:
    """Time every point (decode first, every shape, then prefill) and save after each one."""
    start = time.perf_counter()  # --max-seconds counts from here
    torch.manual_seed(0)
    runner = Runner()
    models = {s: build(s, args.sink, args.window) for s in shapes}
    timers = {s: LayerTimer(models[s][0]) for s in shapes}
    for model, _ in models.values():
        runner.attach(model)
    device = torch.cuda.get_device_name() if CUDA else "cpu"
    path = Path(args.out) / f"{device_slug(device)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cost = CostModel(device=device, bandwidth=copy_bandwidth() if CUDA else CostModel().bandwidth, meta={
        "timed": "attention module (self_attn) of one decoder layer, device time, median",
        "benchmark": "benchmarks/layer_cost.py", "argv": argv, "sink": args.sink, "window": args.window,
        "dtype": "bfloat16" if CUDA else "float32", "torch": torch.__version__,
        "transformers": transformers.__version__, "late_samples": 0, "skipped": [], "failed": [],
        "shapes": {s: dict(zip(("num_heads", "num_kv_heads", "head_dim", "hidden_size", "bias"), SHAPES[s],
                               strict=True)) for s in shapes}})
    if args.append and path.is_file():  # keep the figures of an earlier run (other phases or shapes)
        old = CostModel.load(path)
        cost.points = {k: list(v) for k, v in old.points.items()}
        cost.meta["earlier_runs"] = [*old.meta.pop("earlier_runs", []), old.meta]
    print(f"{'shape':>20} {'phase':>7} {'B':>2} {'N':>7}  attention module per layer, us (h retrieval of H)")
    for phase in args.phases.split(","):
        contexts = args.contexts if phase == "decode" else args.prefill_contexts
        for s in shapes:
            model, hs = models[s]
            H, d = SHAPES[s][1], SHAPES[s][2]
            for b in map(int, args.batches.split(",")):
                for n in map(int, contexts.split(",")):
                    if phase == "prefill" and b * n > args.prefill_max_tokens:
                        continue
                    if time.perf_counter() - start > args.max_seconds:
                        cost.meta["skipped"].append(f"{s} {phase} B={b} N={n}")
                        continue
                    t = time.perf_counter()
                    try:
                        if phase == "decode":
                            got = decode_point(model, timers[s], runner, n, b, args.reps)
                        else:
                            got = prefill_point(model, timers[s], runner, n, b, args.prefill_reps)
                    except (RuntimeError, torch.OutOfMemoryError) as e:  # one point's failure: keep the others
                        if not CUDA:
                            raise
                        cost.meta["failed"].append(f"{s} {phase} B={b} N={n}: {type(e).__name__}: {str(e)[:300]}")
                        print(f"{s:>20} {phase:>7} {b:>2} {n:>7}  FAILED: {type(e).__name__}: {str(e)[:200]}",
                              flush=True)
                        torch.cuda.empty_cache()
                        continue
                    for h, sec in zip(hs, got, strict=True):
                        pts = cost.points.setdefault((phase, b, h, H, d), [])
                        pts[:] = sorted([(m, x) for m, x in pts if m != n] + [(n, round(sec, 9))])
                    cost.meta["late_samples"] += runner.late
                    cost.meta["seconds"] = round(time.perf_counter() - start, 1)
                    cost.save(path)  # after every point: a run cut short keeps what it measured
                    cells = "  ".join(f"{h}/{H}:{sec * 1e6:9.1f}" for h, sec in zip(hs, got, strict=True))
                    print(f"{s:>20} {phase:>7} {b:>2} {n:>7}  {cells}   ({time.perf_counter() - t:.1f} s"
                          + (f", {runner.late} late" if runner.late else "") + ")", flush=True)
                    if CUDA:
                        torch.cuda.empty_cache()
    cost.meta["seconds"] = round(time.perf_counter() - start, 1)
    cost.save(path)
    print(f"wrote {path}: {sum(map(len, cost.points.values()))} figures in {cost.meta['seconds']} s since start; "
          f"{len(cost.meta['skipped'])} points skipped for time (--max-seconds), {len(cost.meta['failed'])} failed, "
          f"{cost.meta['late_samples']} "
          "samples taken with the host behind the device")
    return path


if __name__ == "__main__":
    main()
