"""Full vs mixed (DuoAttention-style) vs zigzag, side by side: prefill, decode (eager and compiled), KV bytes, memory.

    python benchmarks/bench.py --parts prefill,eager,compiled,maxctx --out DIR
    python benchmarks/bench.py --report DIR/bench.jsonl [DIR2/bench.jsonl ...] --png perf.png

Llama-3-8B shape (32 layers, 32 q / 8 kv heads, head_dim 128) with random bf16 weights: speed does not depend
on weight values, and nothing is downloaded. Sink 64, window 256. Policies (mixed and zigzag at one KV budget):
  full    unpatched model (transformers' own attention);
  fullk   full attention through zigzag's kernels (a plan with every layer retrieval): the fair baseline;
  mixed   every layer keeps 4 of its 8 KV heads full, streams the other 4 (two attention calls per layer);
  zigzag  half the layers (odd ones) stream, the other half keep full attention.
Parts:
  prefill   one forward over N tokens (logits for the last only), dynamic cache; KV bytes and peak memory;
  eager     decode steps with `model(...)` and the dynamic cache left by prefill (plain `generate` does this);
  compiled  decode steps through transformers' own compiled call (`model.get_compiled_call`, the one `generate`
            uses with `cache_implementation="static"`: inductor + CUDA graphs) on a static cache, whose first N
            positions are marked filled (values do not change the work). Every policy has its own model (all
            sharing one copy of the weights) and compiled call, and the policies are timed in interleaved rounds
            in one process, so their ratios are free of drift and of the order they run in. Each row also
            has `host_ms`: how long the call takes to return (the device idles meanwhile);
  maxctx    the largest N whose static cache and one decode step fit on the card, per policy.
Times are CUDA-event medians after warm-up. Bounds: decode bytes = weights read + KV read per step, divided by
the measured copy bandwidth; prefill FLOPs = 2 x weights x tokens + attention pairs x 4 x head_dim x heads.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, StaticCache
from transformers.generation.configuration_utils import CompileConfig

import zigzag_attn as zz
from zigzag_attn.runtime.cache import kv_nbytes
from zigzag_attn.runtime.patch import cache_arg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import SINK, WINDOW, llama3_8b, plans, policy_models  # noqa: E402
from bench_report import POLICIES, load_rows, report  # noqa: E402
from timing import (  # noqa: E402
    DEVICE,
    HOST_STEPS,
    copy_bandwidth,
    cuda_ms,
    host_ms,
    mark_filled,
    matmul_tflops,
    reset_peak,
    run_step,
    top_kernels,
)


class Bench:
    def __init__(self, args, policies: list[str], log_name: str = "bench.jsonl",
                 extra_plans: dict[str, zz.Plan | None] | None = None):
        """`extra_plans`: more named plans (None: unpatched), beside and overriding the built-in ones."""
        self.args = args
        t = time.time()
        if args.model:  # real weights: an alias, a GGUF file or a local directory
            from zigzag_attn.models import load

            base = load(args.model, dtype=torch.bfloat16, device=DEVICE)[0]
            cfg = base.config
        else:
            cfg = llama3_8b(args.layers, args.smoke)
            with torch.device(DEVICE):
                base = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
        self.cfg, self.plans = cfg, {**plans(base, args.zigzag_plan), **(extra_plans or {})}
        self.models = policy_models(base, {p: self.plans[p] for p in policies}, args.decode_backend)
        self.weight_bytes = sum(p.numel() * p.element_size() for n, p in base.named_parameters()
                                if "embed_tokens" not in n)  # decode reads every weight but the embedding rows
        self.params = self.weight_bytes // 2
        self.bw = copy_bandwidth() if DEVICE == "cuda" else 1e11
        self.flops = matmul_tflops() if DEVICE == "cuda" else 1e11
        self.cache_kw = cache_arg(base.forward)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = (self.out / log_name).open("a")
        gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
        self.emit({"part": "machine", "gpu": gpu, "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__, "copy_TBps": self.bw / 1e12,
                   "matmul_TFLOPs": self.flops / 1e12, "weights_GB": self.weight_bytes / 1e9,
                   "load_s": time.time() - t, "argv": sys.argv})

    def emit(self, row: dict) -> None:
        print(json.dumps(row), flush=True)
        self.log.write(json.dumps(row) + "\n")
        self.log.flush()

    def reset_compiled(self) -> None:
        """Drop all compiled code and CUDA graphs (they keep the caches they ran on alive); the next compiled
        call of each policy compiles again."""
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        if DEVICE == "cuda":
            from torch._inductor.cudagraph_trees import reset_cudagraph_trees

            reset_cudagraph_trees()
        reset_peak()

    def new_cache(self, policy: str, max_len: int):
        """The static cache `generate(cache_implementation="static")` would give this policy's model."""
        if self.plans[policy] is None:
            return StaticCache(config=self.cfg, max_cache_len=max_len)
        return zz.make_cache(self.models[policy], max_cache_len=max_len)

    def kv_bytes_full(self, n: int, batch: int) -> int:
        c = self.cfg
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 2
        return per_token * n * batch

    def kv_read(self, policy: str, n: int, batch: int) -> float:
        """KV bytes one decode step reads at context n."""
        full = self.kv_bytes_full(n, batch)
        plan = self.plans[policy]
        return full if plan is None else full * plan.kv_fraction(n)

    def prefill_flops(self, policy: str, n: int, batch: int) -> float:
        c = self.cfg
        lm_head = c.vocab_size * c.hidden_size
        linear = 2 * (self.params - lm_head) * n * batch
        causal = n * (n + 1) / 2
        w = SINK + WINDOW
        window = sum(min(i + 1, w) for i in range(min(n, w))) + max(0, n - w) * w  # keys seen, summed over queries
        plan = self.plans[policy]
        share = 0.0 if plan is None else 1 - plan.kv_fraction(10 ** 12)  # streaming share of heads
        pairs = causal * (1 - share) + window * share
        return linear + 4 * pairs * c.hidden_size * c.num_hidden_layers * batch  # heads x head_dim = hidden

    # --- parts -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill_and_eager(self, policy: str, n: int, batch: int, eager: bool) -> None:
        model = self.models[policy]
        x = torch.randint(10, 1000, (batch, n), device=DEVICE)
        small = n * batch <= 32768
        reps = 3 if n * batch <= 65536 else 2
        times, cache = [], None
        for r in range(reps + (1 if small else 0)):
            cache = None
            base = reset_peak()
            outputs = []
            ms = cuda_ms(lambda out=outputs: out.append(model(input_ids=x, use_cache=True, logits_to_keep=1)))
            cache = zz.cache_of(outputs.pop())
            if not small or r > 0:
                times.append(ms)
        peak = (torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0) - base
        kv = kv_nbytes(cache.layers)
        theory = self.kv_bytes_full(n, batch) * (1 if self.plans[policy] is None else
                                                 0.5 + 0.5 * (SINK + WINDOW) / n)
        ms = statistics.median(times)
        flops = self.prefill_flops(policy, n, batch)
        self.emit({"part": "prefill", "policy": policy, "n": n, "batch": batch, "ms": ms, "runs": times,
                   "tflop": flops / 1e12, "tflops": flops / ms / 1e9, "kv_bytes": kv, "kv_theory": theory,
                   "peak_bytes": peak})
        if eager:
            steps = []
            tok = x[:, -1:]
            for i in range(3 + self.args.steps):
                ms = cuda_ms(lambda c=cache: model(input_ids=tok, use_cache=True, **{self.cache_kw: c}))
                if i >= 3:
                    steps.append(ms)
            self.emit(self.decode_row("eager", policy, n, batch, steps))
        del cache

    def decode_row(self, part: str, policy: str, n: int, batch: int, steps: list[float]) -> dict:
        ms = statistics.median(steps)
        nbytes = self.weight_bytes + self.kv_read(policy, n, batch)
        return {"part": part, "policy": policy, "n": n, "batch": batch, "ms": ms, "steps": len(steps),
                "p10": sorted(steps)[len(steps) // 10], "p90": sorted(steps)[(9 * len(steps)) // 10],
                "bytes": nbytes, "bytes_full": self.weight_bytes + self.kv_bytes_full(n, batch),
                "bound_ms": nbytes / self.bw * 1e3, "TBps": nbytes / ms / 1e9}

    @torch.no_grad()
    def compiled(self, policies: list[str], n: int, batch: int) -> None:
        """Compiled decode at context `n`, every policy in one process, interleaved.

        Each policy gets its own static cache and its model's compiled call (compiled once, at its first point).
        Then `rounds` rounds each run every policy once, in a shuffled order: one untimed step, then the timed
        ones. A policy's time is the median of all its timed steps; zigzag's speed-up over another policy is the
        median over rounds of the ratio of their round medians.
        """
        rounds, warm = self.args.rounds, 3
        per_round = max(1, -(-self.args.steps // rounds))
        max_len = n + warm + rounds * (per_round + 1) + HOST_STEPS + (5 if self.args.profile else 0) + 8
        fit, free = [], torch.cuda.mem_get_info()[0] if DEVICE == "cuda" else float("inf")
        if sum(self.kv_read(p, max_len, batch) for p in policies) * 1.05 > free:
            self.reset_compiled()  # earlier points' CUDA graphs hold their caches
            free = torch.cuda.mem_get_info()[0]
        for p in policies:
            need = self.kv_read(p, max_len, batch) * 1.05
            if need > free:
                self.emit({"part": "compiled", "policy": p, "n": n, "batch": batch, "skipped": "memory"})
            else:
                fit.append(p)
                free -= need
        tok = torch.randint(10, 1000, (batch, 1), device=DEVICE)
        calls, caches, first = {}, {}, {}
        for p in fit:
            model, cache = self.models[p], self.new_cache(p, max_len)
            caches[p] = cache
            model(input_ids=tok, use_cache=True, **{self.cache_kw: cache})  # allocates the cache, eagerly
            mark_filled(cache, n)
            step = model.get_compiled_call(CompileConfig(dynamic=self.args.dynamic))
            calls[p] = lambda f=step, c=cache: f(input_ids=tok, use_cache=True, **{self.cache_kw: c})
            t = time.time()
            for _ in range(warm):
                run_step(calls[p])
            first[p] = time.time() - t  # the compile (first point) or a new CUDA graph, and the warm-up steps
        times = {p: [] for p in fit}
        by_round = {p: [] for p in fit}
        order, rng = list(fit), random.Random(n + 7919 * batch)
        for _ in range(rounds):
            rng.shuffle(order)
            for p in order:
                run_step(calls[p])  # untimed: the previous policy's graph ran last
                got = [cuda_ms(lambda c=calls[p]: run_step(c)) for _ in range(per_round)]
                times[p] += got
                by_round[p].append(statistics.median(got))
        host = {p: host_ms(calls[p]) for p in fit}
        stats = torch._dynamo.utils.counters
        for p in fit:
            row = self.decode_row("compiled", p, n, batch, times[p])
            row.update(first_call_s=first[p], round_ms=by_round[p], rounds=rounds, host_ms=host[p],
                       graphs=stats["stats"]["unique_graphs"],  # since the last reset, all policies together
                       graph_breaks=sum(stats["graph_break"].values()),
                       cache_bytes=kv_nbytes(caches[p].layers))
            self.emit(row)
        if "zigzag" in fit:
            for p in (p for p in fit if p != "zigzag"):
                ratio = [o / z for o, z in zip(by_round[p], by_round["zigzag"], strict=True)]
                self.emit({"part": "ratio", "n": n, "batch": batch, "vs": p, "median": statistics.median(ratio),
                           "min": min(ratio), "max": max(ratio), "rounds": ratio})
        if self.args.profile:  # after the timing, so the profiler cannot slow any policy's timed steps
            for p in fit:
                self.emit({"part": "profile", "policy": p, "n": n, "batch": batch,
                           "top": top_kernels(lambda c=calls[p]: run_step(c))})
        del calls, caches

    @torch.no_grad()
    def max_context(self, policy: str) -> None:
        model = self.models[policy]
        tok = torch.randint(10, 1000, (1, 1), device=DEVICE)

        def fits(n: int) -> bool:
            cache = None
            try:
                cache = self.new_cache(policy, n + 8)
                model(input_ids=tok, use_cache=True, **{self.cache_kw: cache})
                mark_filled(cache, n)
                model(input_ids=tok, use_cache=True, **{self.cache_kw: cache})
                torch.cuda.synchronize()
                return True
            except torch.OutOfMemoryError:
                return False
            finally:
                del cache
                torch.cuda.empty_cache()

        lo, hi, step = 0, 1 << 13, 1 << 13
        while fits(hi):
            lo, hi = hi, hi * 2
        while hi - lo > step:
            mid = (lo + hi) // 2 // step * step
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        self.emit({"part": "maxctx", "policy": policy, "n": lo, "step": step,
                   "free_GB_after_weights": torch.cuda.mem_get_info()[0] / 1e9})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="prefill,eager,compiled,maxctx")
    ap.add_argument("--contexts", default="4096,8192,16384,32768,65536,131072")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prefill-max-tokens", type=int, default=131072, help="skip prefill where batch x N exceeds this")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--steps", type=int, default=20, help="timed decode steps per point")
    ap.add_argument("--rounds", type=int, default=5,
                    help="compiled decode: rounds that each time every policy once, in a shuffled order")
    ap.add_argument("--dynamic", choices=("auto", "true"), default="auto",
                    help="compile with dynamic shapes: auto = transformers' default (specialise, then generalise on "
                         "the first new shape); true = one graph for every length and batch (fewer compiles)")
    ap.add_argument("--decode-backend", choices=("auto", "sdpa", "split"), default="auto",
                    help="zigzag's decode kernel for patched policies (auto: sdpa on CUDA, split elsewhere)")
    ap.add_argument("--layers", type=int, default=32, help="fewer layers for a quick run")
    ap.add_argument("--model", help="real weights (an alias, a .gguf file or a local directory) instead of the random "
                    "8B shape")
    ap.add_argument("--zigzag-plan", help="with --model: the 50%% layer plan to time as zigzag (default: odd layers)")
    ap.add_argument("--smoke", action="store_true", help="a tiny model of the same head shape (checks logic on CPU)")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--profile", action="store_true", help="after each compiled point, the top kernels of a step")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no new point after this many seconds")
    ap.add_argument("--report", nargs="*", help="only print tables (and --png) from these bench.jsonl files")
    ap.add_argument("--png")
    args = ap.parse_args()
    args.dynamic = None if args.dynamic == "auto" else True
    if args.report:
        print(report(load_rows(args.report), args.png))
        return
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.cache_size_limit = 64
    start = time.time()
    policies = args.policies.split(",")
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        ap.error(f"unknown policies {unknown}; choose from {list(POLICIES)}")
    bench = Bench(args, policies)

    def in_budget() -> bool:
        return time.time() - start < args.budget_s

    parts = args.parts.split(",")
    contexts = [int(n) for n in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:
        for n in contexts:
            if ("prefill" in parts or "eager" in parts) and n * b <= args.prefill_max_tokens:
                for p in filter(lambda _: in_budget(), policies):
                    try:
                        bench.prefill_and_eager(p, n, b, eager="eager" in parts)
                    except torch.OutOfMemoryError:
                        bench.emit({"part": "prefill", "policy": p, "n": n, "batch": b, "skipped": "OOM"})
                        reset_peak()
    if "compiled" in parts:
        for b in batches:
            for n in filter(lambda _: in_budget(), contexts):
                try:
                    bench.compiled(policies, n, b)
                except torch.OutOfMemoryError:  # earlier points' graphs hold their caches: free, try again
                    bench.reset_compiled()
                    try:
                        bench.compiled(policies, n, b)
                    except torch.OutOfMemoryError:
                        for p in policies:
                            bench.emit({"part": "compiled", "policy": p, "n": n, "batch": b, "skipped": "OOM"})
                        bench.reset_compiled()
    if "maxctx" in parts and DEVICE == "cuda":
        for p in (p for p in policies if p != "fullk" and in_budget()):  # fullk holds what full holds
            bench.max_context(p)
    print(report(load_rows([str(bench.out / "bench.jsonl")]), args.png or str(bench.out / "bench.png")))


if __name__ == "__main__":
    main()
