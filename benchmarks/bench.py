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
            positions are marked filled (values do not change the work);
  maxctx    the largest N whose static cache and one decode step fit on the card, per policy.
Times are CUDA-event medians after warm-up. Bounds: decode bytes = weights read + KV read per step, divided by
the measured copy bandwidth; prefill FLOPs = 2 x weights x tokens + attention pairs x 4 x head_dim x heads.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, StaticCache
from transformers.generation.configuration_utils import CompileConfig

import zigzag_attn as zz
from zigzag_attn.runtime.cache import kv_nbytes
from zigzag_attn.runtime.patch import cache_arg
from zigzag_attn.runtime.static_cache import RingLayer, StaticMixedLayer, ZigzagStaticCache

SINK, WINDOW = 64, 256
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
POLICIES = ("full", "fullk", "mixed", "zigzag")


def llama3_8b(layers: int = 32, smoke: bool = False) -> LlamaConfig:
    size = dict(vocab_size=1000, hidden_size=256, intermediate_size=512) if smoke else \
        dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336)
    return LlamaConfig(**size, num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=1 << 21, rope_theta=500000.0, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=None)


def plans(model) -> dict[str, zz.Plan | None]:
    info = zz.describe(model)
    half = info.num_kv_heads // 2
    mixed = [[h < half for h in range(info.num_kv_heads)] for _ in range(info.num_layers)]
    zigzag = ["streaming" if i % 2 else "retrieval" for i in range(info.num_layers)]
    return {"full": None,
            "fullk": zz.Plan.from_layers(["retrieval"] * info.num_layers, sink=SINK, window=WINDOW, model=info),
            "mixed": zz.Plan.from_heads(mixed, sink=SINK, window=WINDOW, model=info),
            "zigzag": zz.Plan.from_layers(zigzag, sink=SINK, window=WINDOW, model=info)}


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


class Bench:
    def __init__(self, args):
        self.args = args
        self.policy, self.step = None, None  # patched for, compiled call
        cfg = llama3_8b(args.layers, args.smoke)
        t = time.time()
        with torch.device(DEVICE):
            self.model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
        self.cfg, self.plans = cfg, plans(self.model)
        self.weight_bytes = sum(p.numel() * p.element_size() for n, p in self.model.named_parameters()
                                if "embed_tokens" not in n)  # decode reads every weight but the embedding rows
        self.params = self.weight_bytes // 2
        self.bw = copy_bandwidth() if DEVICE == "cuda" else 1e11
        self.flops = matmul_tflops() if DEVICE == "cuda" else 1e11
        self.cache_kw = cache_arg(self.model.forward)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = (self.out / "bench.jsonl").open("a")
        gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
        self.emit({"part": "machine", "gpu": gpu, "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__, "copy_TBps": self.bw / 1e12,
                   "matmul_TFLOPs": self.flops / 1e12, "weights_GB": self.weight_bytes / 1e9,
                   "load_s": time.time() - t, "argv": sys.argv})

    def emit(self, row: dict) -> None:
        print(json.dumps(row), flush=True)
        self.log.write(json.dumps(row) + "\n")
        self.log.flush()

    def use(self, policy: str):
        """Patch for `policy` (kept as is when already so: a new patch would recompile the compiled step)."""
        if getattr(self, "policy", None) == policy:
            return
        self.reset_compiled()
        zz.unpatch(self.model)
        if self.plans[policy] is not None:
            zz.patch(self.model, self.plans[policy], decode_backend=self.args.decode_backend)
        self.policy = policy

    def reset_compiled(self) -> None:
        """Drop compiled code and its CUDA graphs, which keep every cache they ran on alive."""
        self.step = None
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        if DEVICE == "cuda":
            from torch._inductor.cudagraph_trees import reset_cudagraph_trees

            reset_cudagraph_trees()
        reset_peak()

    def kv_bytes_full(self, n: int, batch: int) -> int:
        c = self.cfg
        per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 2
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
        self.use(policy)
        x = torch.randint(10, 1000, (batch, n), device=DEVICE)
        small = n * batch <= 32768
        reps = 3 if n * batch <= 65536 else 2
        times, cache = [], None
        for r in range(reps + (1 if small else 0)):
            cache = None
            base = reset_peak()
            outputs = []
            ms = cuda_ms(lambda out=outputs: out.append(self.model(input_ids=x, use_cache=True, logits_to_keep=1)))
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
                ms = cuda_ms(lambda c=cache: self.model(input_ids=tok, use_cache=True, **{self.cache_kw: c}))
                if i >= 3:
                    steps.append(ms)
            self.emit(self.decode_row("eager", policy, n, batch, steps))
        del cache

    def decode_row(self, part: str, policy: str, n: int, batch: int, steps: list[float]) -> dict:
        ms = statistics.median(steps)
        nbytes = self.weight_bytes + self.kv_read(policy, n, batch)
        return {"part": part, "policy": policy, "n": n, "batch": batch, "ms": ms, "steps": len(steps),
                "p10": sorted(steps)[len(steps) // 10], "p90": sorted(steps)[(9 * len(steps)) // 10],
                "bytes": nbytes, "bound_ms": nbytes / self.bw * 1e3, "TBps": nbytes / ms / 1e9}

    @torch.no_grad()
    def compiled(self, policy: str, n: int, batch: int) -> None:
        self.use(policy)
        warm, steps = 3, self.args.steps
        max_len = n + warm + steps + 8
        need = self.kv_read(policy, max_len, batch) * 1.05
        if DEVICE == "cuda" and need > torch.cuda.mem_get_info()[0]:
            self.reset_compiled()  # earlier lengths' CUDA graphs hold their caches
        if DEVICE == "cuda" and need > torch.cuda.mem_get_info()[0]:
            self.emit({"part": "compiled", "policy": policy, "n": n, "batch": batch, "skipped": "memory"})
            return
        cache = (StaticCache(config=self.cfg, max_cache_len=max_len) if self.plans[policy] is None
                 else zz.make_cache(self.model, max_cache_len=max_len))
        tok = torch.randint(10, 1000, (batch, 1), device=DEVICE)
        self.model(input_ids=tok, use_cache=True, **{self.cache_kw: cache})  # allocates the cache, eagerly
        mark_filled(cache, n)
        if self.step is None:  # one compiled call per policy: a new cache length reuses or re-records it
            self.step = self.model.get_compiled_call(CompileConfig(dynamic=self.args.dynamic))
        step = self.step
        t = time.time()
        times = []
        for i in range(warm + steps):
            ms = cuda_ms(lambda c=cache, f=step: f(input_ids=tok, use_cache=True, **{self.cache_kw: c}))
            if i == 0:
                first = time.time() - t
            if i >= warm:
                times.append(ms)
        row = self.decode_row("compiled", policy, n, batch, times)
        row["first_call_s"] = first  # compile (or a new CUDA graph) + one step
        stats = torch._dynamo.utils.counters
        row["graphs"] = stats["stats"]["unique_graphs"]  # since the last reset: 1 = no recompiles
        row["graph_breaks"] = sum(stats["graph_break"].values())
        row["cache_bytes"] = kv_nbytes(cache.layers)
        self.emit(row)
        if self.args.profile:
            top = top_kernels(lambda c=cache, f=step: f(input_ids=tok, use_cache=True, **{self.cache_kw: c}))
            self.emit({"part": "profile", "policy": policy, "n": n, "batch": batch, "top": top})
        del cache, step

    @torch.no_grad()
    def max_context(self, policy: str) -> None:
        self.use(policy)
        tok = torch.randint(10, 1000, (1, 1), device=DEVICE)

        def fits(n: int) -> bool:
            cache = None
            try:
                cache = (StaticCache(config=self.cfg, max_cache_len=n + 8) if self.plans[policy] is None
                         else zz.make_cache(self.model, max_cache_len=n + 8))
                self.model(input_ids=tok, use_cache=True, **{self.cache_kw: cache})
                mark_filled(cache, n)
                self.model(input_ids=tok, use_cache=True, **{self.cache_kw: cache})
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


def reset_peak() -> int:
    """Free cached blocks, restart the peak count; bytes allocated now (0 on CPU)."""
    if DEVICE != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def mark_filled(cache, n: int) -> None:
    """Make a static cache look as if `n` tokens had been seen (its contents stay as they are).

    Decode work does not depend on key values: static layers attend over their whole buffer under a mask,
    rings over their slots. Positions matter for masks only, so they are set as a real prefill would.
    """
    for layer in cache.layers:
        for sub in (layer.full, layer.stream) if isinstance(layer, StaticMixedLayer) else (layer,):
            sub.cumulative_length.fill_(n)
    if isinstance(cache, ZigzagStaticCache) and cache.ring_pos is not None:
        ring = [layer for layer in cache.layers if isinstance(layer, (RingLayer, StaticMixedLayer))]
        if ring:
            pos = torch.cat([torch.arange(SINK), torch.arange(n - WINDOW, n)]).to(cache.ring_pos.device)
            slot = torch.where(pos < SINK, pos, SINK + (pos - SINK) % WINDOW)
            cache.ring_pos.fill_(-1)
            cache.ring_pos[:, slot] = pos
            cache.next_pos.fill_(n)


def top_kernels(fn, steps: int = 5, top: int = 40) -> list[dict]:
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


# --- report ---------------------------------------------------------------------------------------------------

def load_rows(paths: list[str]) -> list[dict]:
    """Rows of bench.jsonl files, each tagged with its file's name (`run`)."""
    rows = []
    for p in paths:
        rows += [{**json.loads(line), "run": Path(p).stem} for line in Path(p).read_text().splitlines()
                 if line.strip()]
    return rows


def repeats(rows: list[dict]) -> list[str]:
    """Compiled decode points measured in several runs: ms per run, spread, and zigzag's same-run speed-ups."""
    runs = list(dict.fromkeys(r["run"] for r in rows if r["part"] == "compiled" and "ms" in r))
    ms = {(r["policy"], r["batch"], r["n"], r["run"]): r["ms"] for r in rows if r["part"] == "compiled" and "ms" in r}
    points = sorted({k[:3] for k in ms}, key=lambda k: (POLICIES.index(k[0]), k[1], k[2]))
    points = [p for p in points if sum(p + (run,) in ms for run in runs) > 1]
    if not points:
        return []
    out = ["\n### Repeat runs, compiled decode (ms per run; spread = slowest / fastest - 1)\n",
           "| policy | B | N | " + " | ".join(runs) + " | spread |", "|---|---|---|" + "---|" * (len(runs) + 1)]
    for p in points:
        got = [ms.get(p + (run,)) for run in runs]
        vals = [v for v in got if v is not None]
        out.append(f"| {p[0]} | {p[1]} | {p[2]} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in got)
                   + f" | {max(vals) / min(vals) - 1:.0%} |")
    same = [(run, b, n, ms[(other, b, n, run)] / ms[("zigzag", b, n, run)], other)
            for (pol, b, n, run) in ms if pol == "zigzag" for other in ("mixed", "full", "fullk")
            if (other, b, n, run) in ms]
    if same:
        out += ["\n### Zigzag's speed-up measured within one run (compiled decode)\n",
                "| run | B | N | vs | speed-up |", "|---|---|---|---|---|"]
        out += [f"| {run} | {b} | {n} | {o} | {x:.2f}× |" for run, b, n, x, o in sorted(same)]
    return out


def report(rows: list[dict], png: str | None) -> str:
    """Tables (markdown) of the latest row per (part, policy, n, batch), with bounds and ratios."""
    latest = {}
    for r in rows:  # a later row for the same point replaces an earlier one
        if r["part"] in ("prefill", "eager", "compiled", "maxctx"):
            latest[(r["part"], r["policy"], r.get("n") if r["part"] != "maxctx" else None, r.get("batch"))] = r
    out = []
    machine = [r for r in rows if r["part"] == "machine"]
    if machine:
        m = machine[-1]
        out.append(f"{m['gpu']}, torch {m['torch']}, transformers {m['transformers']}; copy bandwidth "
                   f"{m['copy_TBps']:.2f} TB/s, bf16 matmul {m['matmul_TFLOPs']:.0f} TFLOP/s, weights read per "
                   f"step {m['weights_GB']:.2f} GB\n")
    for part in ("compiled", "eager"):
        keys = sorted({(k[3], k[2]) for k in latest if k[0] == part})
        if not keys:
            continue
        out.append(f"\n### Decode step, {part} (ms; ratios are speed-ups of zigzag)\n")
        out.append("| B | N | full | fullk | mixed | zigzag | vs full | vs fullk | bytes bound | share of bound "
                   "| vs mixed | zigzag / HBM bound | zigzag TB/s |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for b, n in keys:
            r = {p: latest.get((part, p, n, b), {}) for p in POLICIES}
            z, k = r["zigzag"], r["fullk"]
            if "ms" not in z:
                continue
            ms = " | ".join(f"{r[p]['ms']:.2f}" if "ms" in r[p] else r[p].get("skipped", "–") for p in POLICIES)
            ratio = {p: f"{r[p]['ms'] / z['ms']:.2f}×" if "ms" in r[p] else "–" for p in POLICIES}
            bound = self_bound(r, z)
            share = f"{k['ms'] / z['ms'] / bound:.0%}" if "ms" in k else "–"
            out.append(f"| {b} | {n} | {ms} | {ratio['full']} | {ratio['fullk']} | {bound:.2f}× | {share} | "
                       f"{ratio['mixed']} | {z['ms'] / z['bound_ms']:.2f}× | {z['TBps']:.2f} |")
    keys = sorted({(k[3], k[2]) for k in latest if k[0] == "prefill"})
    if keys:
        out.append("\n### Prefill (ms; ratios are speed-ups of zigzag)\n")
        out.append("| B | N | full | fullk | mixed | zigzag | vs full | vs fullk | FLOP bound | share of bound | "
                   "vs mixed | zigzag TFLOP/s | KV bytes / theory | peak GB full / zigzag |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for b, n in keys:
            r = {p: latest.get(("prefill", p, n, b), {}) for p in POLICIES}
            z, f = r["zigzag"], r["full"]
            if "ms" not in z or "ms" not in f:
                continue
            ms = " | ".join(f"{r[p]['ms']:.1f}" if "ms" in r[p] else r[p].get("skipped", "–") for p in POLICIES)
            ratio = {p: f"{r[p]['ms'] / z['ms']:.2f}×" if "ms" in r[p] else "–" for p in POLICIES}
            bound = f["tflop"] / z["tflop"]
            out.append(f"| {b} | {n} | {ms} | {ratio['full']} | {ratio['fullk']} | {bound:.2f}× | "
                       f"{f['ms'] / z['ms'] / bound:.0%} | {ratio['mixed']} | {z['tflops']:.0f} | "
                       f"{z['kv_bytes'] / z['kv_theory']:.4f} | "
                       f"{f['peak_bytes'] / 1e9:.1f} / {z['peak_bytes'] / 1e9:.1f} |")
    maxctx = {k[1]: r for k, r in latest.items() if k[0] == "maxctx"}
    if maxctx:
        out.append("\n### Largest context that fits (B=1, static cache + one decode step)\n")
        out.append("| policy | tokens | vs full |")
        out.append("|---|---|---|")
        for p in POLICIES:
            if p in maxctx:
                ratio = maxctx[p]["n"] / maxctx["full"]["n"] if "full" in maxctx else math.nan
                out.append(f"| {p} | {maxctx[p]['n']:,} | {ratio:.2f}× |")
    out += repeats(rows)
    profiles = [r for r in rows if r["part"] == "profile"]
    if profiles:
        wall = {(r["run"], r["policy"], r["n"], r["batch"]): r["ms"] for r in rows
                if r["part"] == "compiled" and "ms" in r}
        out.append("\n### Device time inside a compiled step (torch profiler) against its wall time\n")
        out.append("| run | policy | B | N | wall ms | kernel ms | kernels | wall - kernels ms |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in profiles:
            w, k = wall.get((r["run"], r["policy"], r["n"], r["batch"])), r["top"][0]
            if w is not None and k["name"] == "(all kernels)":
                kms = k["us_per_step"] / 1e3
                out.append(f"| {r['run']} | {r['policy']} | {r['batch']} | {r['n']} | {w:.2f} | {kms:.2f} | "
                           f"{k['calls_per_step']:g} | {w - kms:.2f} |")
    for r in (r for r in profiles if r["n"] == 32768 and r["batch"] == 1):
        out.append(f"\n### Top kernels of one compiled step: {r['policy']}, N={r['n']}, B={r['batch']} ({r['run']})\n")
        out.append("| kernel | µs per step | calls per step |")
        out.append("|---|---|---|")
        out += [f"| `{k['name']}` | {k['us_per_step']:.1f} | {k['calls_per_step']:g} |" for k in r["top"][:12]]
    if png:
        plot(latest, png)
    return "\n".join(out)


def self_bound(r: dict, z: dict) -> float:
    """Bandwidth-bound speed-up of zigzag over full attention: bytes read per step, full / zigzag."""
    full = r["fullk"] if "bytes" in r["fullk"] else r["full"]
    return full["bytes"] / z["bytes"] if "bytes" in full else float("nan")


def plot(latest: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("prefill", 1, "prefill ms"), ("compiled", 1, "compiled decode ms/step, B=1"),
              ("compiled", 8, "compiled decode ms/step, B=8"), ("eager", 1, "eager decode ms/step, B=1")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (part, b, title) in zip(axes, panels, strict=True):
        for p, style in zip(POLICIES, ("k-o", "k--x", "C1-s", "C0-^"), strict=True):
            pts = sorted((k[2], r["ms"]) for k, r in latest.items() if k[:2] == (part, p) and k[3] == b and "ms" in r)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=p)
        if part != "prefill":
            pts = sorted((k[2], r["bound_ms"]) for k, r in latest.items()
                         if k[:2] == (part, "zigzag") and k[3] == b and "ms" in r)
            if pts:
                ax.plot(*zip(*pts, strict=True), "C0:", label="zigzag HBM bound")
        ax.set(xscale="log", yscale="log", xlabel="context tokens", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="prefill,eager,compiled,maxctx")
    ap.add_argument("--contexts", default="4096,8192,16384,32768,65536,131072")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prefill-max-tokens", type=int, default=131072, help="skip prefill where batch x N exceeds this")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--steps", type=int, default=20, help="timed decode steps per point")
    ap.add_argument("--dynamic", choices=("auto", "true"), default="auto",
                    help="compile with dynamic shapes: auto = transformers' default (specialise, then generalise on "
                         "the first new shape); true = one graph for every length and batch (fewer compiles)")
    ap.add_argument("--decode-backend", choices=("auto", "sdpa", "split"), default="auto",
                    help="zigzag's decode kernel for patched policies (auto: sdpa on CUDA, split elsewhere)")
    ap.add_argument("--layers", type=int, default=32, help="fewer layers for a quick run")
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
    bench = Bench(args)

    def in_budget() -> bool:
        return time.time() - start < args.budget_s

    parts = args.parts.split(",")
    contexts = [int(n) for n in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    policies = args.policies.split(",")
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
        for p in policies:
            for b in batches:
                for n in filter(lambda _: in_budget(), contexts):
                    try:
                        bench.compiled(p, n, b)
                    except torch.OutOfMemoryError:  # earlier lengths' graphs hold their caches: free, try again
                        bench.reset_compiled()
                        try:
                            bench.compiled(p, n, b)
                        except torch.OutOfMemoryError:
                            bench.emit({"part": "compiled", "policy": p, "n": n, "batch": b, "skipped": "OOM"})
                            bench.reset_compiled()
                bench.reset_compiled()
    if "maxctx" in parts and DEVICE == "cuda":
        for p in (p for p in policies if p != "fullk" and in_budget()):  # fullk holds what full holds
            bench.max_context(p)
    zz.unpatch(bench.model)
    print(report(load_rows([str(bench.out / "bench.jsonl")]), args.png or str(bench.out / "bench.png")))


if __name__ == "__main__":
    main()
