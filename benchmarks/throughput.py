"""Throughput at the memory limit: full, mixed and zigzag (one KV budget), each at the largest batch that fits.

    python benchmarks/throughput.py --contexts 32768,8192,131072 --compiled-contexts 32768 --out DIR
    python benchmarks/throughput.py --report DIR/throughput.jsonl --png DIR/throughput.png

Model and policies as in bench.py (random-weight Llama-3-8B shape, or --model). The policies run one after another,
each freeing all it holds before the next: at their largest batches they cannot share the card. Every policy runs
the first context before any runs the next. Per policy and context N (each row is flushed to DIR/throughput.jsonl
as soon as it exists):
  probe    a static cache of N + steps tokens at batch 1 and 2, one decode step each, and the prefill of k new
           sequences (k = max(1, --prefill-tokens // N); at most --probe-tokens long, its workspace scaled to N):
           bytes per sequence of the cache, decode workspace (a + c x batch), prefill workspace;
  limit    the largest batch B whose cache fits beside a decode step's workspace and one more prefill of k
           sequences. The arithmetic gives a candidate; it is verified by allocating the cache and running a
           decode step (stepping up or down until the next batch does not fit); the prefill is then run for real;
  prefill  k sequences prefilled (dynamic cache, as a new request would be) while the B-row cache is held: measured
           ms; `batch_ms_derived` = ms / k x B is derived from it, not measured;
  decode   steps at batch B on the static cache marked filled to N (values do not change the work): `compiled`
           (transformers' get_compiled_call: inductor + CUDA graphs) at --compiled-contexts, `eager` elsewhere or
           when the compile fails or passes --compile-limit-s or the end of --budget-s (`fallback` says why).
           tokens/s = B / step time. Where the compile ran out of memory beside B, it is tried again at
           --compile-retry x B (and so on): `decode_smaller` rows; the ratios take each policy's best tokens/s.
--host-time also analyses the host side of zigzag's compiled step at the first compiled context (host_time.py).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from transformers.generation.configuration_utils import CompileConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Bench  # noqa: E402
from bench_report import POLICIES  # noqa: E402
from host_time import analyse  # noqa: E402
from throughput_report import report  # noqa: E402
from timing import DEVICE, CompileTimeout, cuda_bytes, cuda_ms, mark_filled, reset_peak, run_step, sync, time_limit  # noqa: E402

from zigzag_attn.runtime.cache import kv_nbytes  # noqa: E402

WARM = 3  # compiled: the first call compiles, the second records the CUDA graph


class Point:
    """One policy at one context: probe, largest batch, prefill and decode rows."""

    def __init__(self, bench: Bench, policy: str, n: int, compiled: bool, deadline: float):
        self.bench, self.args, self.policy, self.n, self.compiled = bench, bench.args, policy, n, compiled
        self.deadline = deadline  # a compile must end by then (time.time()), or the point falls back to eager
        self.model = bench.models[policy]
        # room past N for the warm-up, the timed steps and host_time's (the same for every policy)
        self.max_len = n + 2 * WARM + self.args.steps + 6 * self.args.host_steps + 16
        self.k = max(1, self.args.prefill_tokens // n)
        self.head = {"policy": policy, "n": n}

    def emit(self, part: str, **row) -> None:
        self.bench.emit({"part": part, **self.head, **row})

    def step(self, cache, batch: int):
        tok = torch.randint(10, 1000, (batch, 1), device=DEVICE)
        return self.model(input_ids=tok, use_cache=True, **{self.bench.cache_kw: cache})

    def filled_cache(self, batch: int):
        """A batch-row static cache, allocated by one eager decode step, then marked filled to N."""
        cache = self.bench.new_cache(self.policy, self.max_len)
        self.step(cache, batch)
        mark_filled(cache, self.n)
        return cache

    def prefill(self, n: int) -> tuple[float, int]:
        """Prefill k sequences of n tokens (logits of the last only): (ms, peak bytes above what was allocated)."""
        x = torch.randint(10, 1000, (self.k, n), device=DEVICE)
        before = reset_peak()
        ms = cuda_ms(lambda: self.model(input_ids=x, use_cache=True, logits_to_keep=1))
        return ms, cuda_bytes()[1] - before

    @torch.no_grad()
    def probe(self) -> dict:
        """Cache bytes per sequence, decode workspace a + c x batch, prefill workspace (bytes)."""
        ws, per_seq = {}, 0
        for b in (1, 2):
            reset_peak()
            cache = self.filled_cache(b)
            per_seq = self.bench.cache_bytes(cache) // b
            if DEVICE == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            now = cuda_bytes()[0]
            self.step(cache, b)
            ws[b] = cuda_bytes()[1] - now
            if b == 1:  # beside a cache, as later; at most --probe-tokens long, its workspace scaled up (linear)
                short = min(self.n, self.args.probe_tokens)
                prefill_ms, prefill_ws = self.prefill(short)
                prefill_ws = int(prefill_ws * (1.0 if short == self.n else 1.1 * self.n / short))
            del cache
        c = max(0, ws[2] - ws[1])
        got = {"per_seq_bytes": per_seq, "decode_ws_a": max(0, ws[1] - c), "decode_ws_c": c,
               "prefill_ws": prefill_ws, "prefill_k": self.k, "prefill_probe_ms": prefill_ms,
               "prefill_probe_n": short}
        self.emit("probe", **got)
        return got

    def room(self) -> float:
        """Bytes the caches and workspaces may use now: free device memory less --margin-gb, capped by --mem-gb."""
        reset_peak()
        real = torch.cuda.mem_get_info()[0] if DEVICE == "cuda" else math.inf
        fake = self.args.mem_gb * 1e9 - self.bench.all_weight_bytes if self.args.mem_gb else math.inf
        return min(real, fake) - self.args.margin_gb * 1e9

    def need(self, p: dict, batch: int) -> float:
        return batch * p["per_seq_bytes"] + max(p["decode_ws_a"] + p["decode_ws_c"] * batch, p["prefill_ws"])

    @torch.no_grad()
    def fits(self, p: dict, room: float, batch: int, trials: list) -> bool:
        """The arithmetic allows it, and a real cache plus a decode step fit with the prefill's workspace free."""
        ok, cache = False, None
        try:
            if self.need(p, batch) <= room or DEVICE == "cuda" and not self.args.mem_gb:
                cache = self.filled_cache(batch)
                self.step(cache, batch)
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
                    spare = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - cuda_bytes()[0]
                    ok = spare - self.args.margin_gb * 1e9 >= p["prefill_ws"]
                else:
                    ok = True
        except torch.OutOfMemoryError:
            ok = False
        finally:
            del cache
            reset_peak()
        trials.append([batch, ok])
        return ok

    def largest(self, p: dict, room: float) -> tuple[int, int, list]:
        """(candidate, verified largest batch, trials): gallop from the candidate, then bisect."""
        cand = max(1, int((room - max(p["decode_ws_a"], p["prefill_ws"])) // (p["per_seq_bytes"] + p["decode_ws_c"])))
        trials: list = []
        fits = lambda b: self.fits(p, room, b, trials)  # noqa: E731
        stride = max(1, cand // 64)
        if fits(cand):
            lo, hi = cand, cand + stride
            while fits(hi):
                lo, stride = hi, stride * 2
                hi = lo + stride
        else:
            lo, hi = cand - stride, cand
            while lo >= 1 and not fits(lo):
                hi, stride = lo, stride * 2
                lo = max(1, lo - stride) if lo > 1 else 0
            if lo < 1:
                return cand, 0, trials
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return cand, lo, trials

    @torch.no_grad()
    def run(self) -> None:
        t0 = time.time()
        p = self.probe()
        room = self.room()
        cand, batch, trials = self.largest(p, room)
        self.emit("limit", batch=batch, candidate=cand, trials=trials, room_GB=room / 1e9,
                  need_GB=self.need(p, batch) / 1e9, search_s=time.time() - t0)
        while batch >= 1:  # the prefill for real beside the batch's cache (rarely fails where the search passed)
            cache = None
            try:
                reset_peak()
                cache = self.filled_cache(batch)
                ms, _ = self.prefill(self.n)
                break
            except torch.OutOfMemoryError:
                del cache
                self.emit("prefill", batch=batch, skipped="OOM beside the cache; one batch less")
                batch -= 1
        if batch < 1:
            return
        self.emit("prefill", batch=batch, k=self.k, ms=ms, ms_per_seq=ms / self.k,
                  batch_ms_derived=ms / self.k * batch, probe_ms=p["prefill_probe_ms"])
        del cache
        row = self.decode(batch)
        smaller = batch
        while "OutOfMemoryError" in (row["fallback"] or "") and smaller > 1:
            # the compile's workspace did not fit beside the largest batch: the policy's best decode throughput may be
            # compiled at a smaller one (its own row, `decode_smaller`; the limit row above stays eager)
            smaller = max(1, int(smaller * self.args.compile_retry))
            row = self.decode(smaller, part="decode_smaller")

    def decode(self, batch: int, part: str = "decode") -> dict:
        reset_peak()
        cache = self.filled_cache(batch)
        mode, fallback, first_s, compiled = "eager", None, None, None
        call = lambda: self.step(cache, batch)  # noqa: E731
        left = self.deadline - time.time()
        if self.compiled and left < self.args.compile_min_s:
            fallback = f"not compiled: {left:.0f} s of --budget-s left, below --compile-min-s"
        elif self.compiled:
            cfg = CompileConfig(dynamic=self.args.dynamic, backend=self.args.backend,
                                mode="reduce-overhead" if self.args.backend == "inductor" else None)
            tok = torch.randint(10, 1000, (batch, 1), device=DEVICE)
            fn = self.model.get_compiled_call(cfg)
            compiled = lambda: fn(input_ids=tok, use_cache=True, **{self.bench.cache_kw: cache})  # noqa: E731
            t = time.time()
            try:
                with time_limit(min(self.args.compile_limit_s, left)):
                    for _ in range(WARM):
                        run_step(compiled)
                    sync()
                mode, call, first_s = "compiled", lambda: run_step(compiled), time.time() - t
            except (Exception, KeyboardInterrupt, CompileTimeout) as e:  # noqa: BLE001 - any failure falls back
                fallback = f"{type(e).__name__}: {str(e)[:200]} after {time.time() - t:.0f} s"
                self.bench.reset_compiled()
                mark_filled(cache, self.n)
        for _ in range(WARM if mode == "eager" else 1):
            call()
        steps = [cuda_ms(call) for _ in range(self.args.steps)]
        ms = statistics.median(steps)
        peak = cuda_bytes()[1]
        row = {"mode": mode, "fallback": fallback, "batch": batch, "ms": ms, "p10": sorted(steps)[len(steps) // 10],
               "p90": sorted(steps)[9 * len(steps) // 10], "steps": len(steps), "tok_s": batch / ms * 1e3,
               "first_call_s": first_s, "cache_GB": self.bench.cache_bytes(cache) / 1e9, "peak_GB": peak / 1e9}
        if mode == "compiled" and self.args.host_time and self.policy == "zigzag" and not self.bench.host_done:
            self.bench.host_done = True
            try:
                self.emit("host", batch=batch, **analyse(compiled, cache, self.args.host_steps))
            except Exception as e:  # noqa: BLE001 - the decode row must still be written
                self.emit("host", batch=batch, failed=f"{type(e).__name__}: {str(e)[:300]}")
        self.emit(part, **row)
        cache = call = compiled = None  # the closures hold the cache through this cell
        if mode == "compiled":
            self.bench.reset_compiled()  # its CUDA graphs hold the cache
        return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="32768,8192,131072", help="in the order run (the first is the target)")
    ap.add_argument("--compiled-contexts", default="32768", help="contexts decoded compiled ('' for none)")
    ap.add_argument("--policies", default="zigzag,full,mixed", help="in the order run")
    ap.add_argument("--steps", type=int, default=10, help="timed decode steps per point")
    ap.add_argument("--prefill-tokens", type=int, default=32768, help="prefill k = max(1, this // N) sequences")
    ap.add_argument("--probe-tokens", type=int, default=32768, help="the probe's prefill: at most this long")
    ap.add_argument("--backend", default="inductor", choices=("inductor", "cudagraphs", "eager"),
                    help="torch.compile backend (inductor: what generate uses; eager: dynamo only, for CPU checks)")
    ap.add_argument("--dynamic", choices=("auto", "true"), default="auto")
    ap.add_argument("--compile-limit-s", type=float, default=150, help="fall back to eager past this")
    ap.add_argument("--compile-retry", type=float, default=0.85,
                    help="when the compile runs out of memory beside the largest batch, try compiled at this share "
                         "of the batch (again while it fails for memory)")
    ap.add_argument("--compile-min-s", type=float, default=45,
                    help="with less of --budget-s left than this, decode eager without trying to compile")
    ap.add_argument("--mem-gb", type=float, help="pretend the device holds this many GB (weights included)")
    ap.add_argument("--margin-gb", type=float, default=1.0, help="kept free beyond the measured workspaces")
    ap.add_argument("--host-time", action="store_true", help="analyse zigzag's compiled step's host time")
    ap.add_argument("--host-steps", type=int, default=20)
    ap.add_argument("--decode-backend", choices=("auto", "sdpa", "split"), default="auto")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--model", help="real weights (alias, .gguf or directory) instead of the random 8B shape")
    ap.add_argument("--zigzag-plan")
    ap.add_argument("--smoke", action="store_true", help="tiny model, on CPU: checks the logic")
    ap.add_argument("--budget-s", type=float, default=1e9,
                    help="start no new point, and end no compile, after this many seconds")
    ap.add_argument("--skip", default="", help="points not to run, as policy@N,... (measured by an earlier call)")
    ap.add_argument("--out", default="throughput-out")
    ap.add_argument("--report", nargs="*", help="only print the tables (and --png) from these jsonl files")
    ap.add_argument("--png")
    args = ap.parse_args()
    args.dynamic = None if args.dynamic == "auto" else True
    if not 0 < args.compile_retry < 1:
        ap.error(f"--compile-retry must be between 0 and 1 (a share of the batch), got {args.compile_retry}")
    if args.report:
        print(report([json.loads(s) for f in args.report for s in Path(f).read_text().splitlines() if s], args.png))
        return
    start = time.time()
    policies = args.policies.split(",")
    if set(policies) - set(POLICIES):
        ap.error(f"unknown policies {sorted(set(policies) - set(POLICIES))}; choose from {list(POLICIES)}")
    contexts = [int(n) for n in args.contexts.split(",")]
    compiled = {int(n) for n in args.compiled_contexts.split(",") if n}
    skip = {p for p in args.skip.split(",") if p}
    bad = [p for p in skip if p.partition("@")[0] not in POLICIES or not p.partition("@")[2].isdigit()]
    if bad:
        ap.error(f"--skip takes policy@N points (policies {list(POLICIES)}), got {bad}")
    bench = Bench(args, policies, log_name="throughput.jsonl")
    bench.all_weight_bytes = sum(p.numel() * p.element_size() for p in bench.models[policies[0]].parameters())
    bench.cache_bytes = lambda cache: kv_nbytes(cache.layers)
    bench.host_done = False
    bench.emit({"part": "note", "text": "policies run one after another, each freeing all it holds before the next "
                "(at their largest batches they cannot share the card)", "compiled_contexts": sorted(compiled),
                "backend": args.backend})
    for n in contexts:  # the first context for every policy first: the compiles, and the targets, come first
        for policy in policies:
            if f"{policy}@{n}" in skip:
                continue
            if time.time() - start > args.budget_s:
                bench.emit({"part": "skipped", "policy": policy, "n": n, "why": "--budget-s"})
                continue
            try:
                Point(bench, policy, n, n in compiled, start + args.budget_s).run()
            except Exception as e:  # noqa: BLE001 - one GPU call: record the point's failure, go on to the next
                bench.emit({"part": "skipped", "policy": policy, "n": n, "why": f"{type(e).__name__}: {str(e)[:300]}",
                            "where": traceback.format_exc()[-600:]})
                bench.reset_compiled()
    out = Path(args.out)
    print(report([json.loads(s) for s in (out / "throughput.jsonl").read_text().splitlines() if s],
                 args.png or str(out / "throughput.png")))


if __name__ == "__main__":
    main()
