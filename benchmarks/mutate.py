"""Mutation check, run by hand (not in CI, not collected by pytest): do the tests catch realistic one-line bugs?

Each mutant replaces one line of the library in a temporary copy of the repository, runs the tests that cover
that code, and is "killed" when they fail. A surviving mutant is a bug the suite cannot see. Results:
docs/mutation.md.

    PYTHONPATH=$PWD python benchmarks/mutate.py                  # every mutant (a few minutes on 2 cores)
    PYTHONPATH=$PWD python benchmarks/mutate.py --only keep-rule-extra-key --suite   # one mutant, whole suite
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file in the repository
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments: the tests covering this code
    what: str


# small selections, enough to kill what they can (the whole suite: --suite)
BEAM = ("tests/test_matrix.py", "-k", "beam or reorder")
FLEX = ("tests/test_properties.py", "-k", "flex")
BLOCKED = ("tests/test_properties.py", "-k", "blocked")
PADDED = ("tests/test_matrix.py", "-k", "left_padded_batch and llama")
ALIGNED = ("tests/test_matrix.py", "-k", "chunked and llama")

MUTANTS = [
    # three realistic slips
    Mutant("static-reorder-noop", "zigzag_attn/runtime/static_cache.py",
           "        super().reorder_cache(beam_idx)\n        if self.ring_pos",
           "        return\n        if self.ring_pos", BEAM,
           "ZigzagStaticCache.reorder_cache does nothing"),
    Mutant("keep-rule-extra-key", "zigzag_attn/runtime/step.py", "pos >= last - window + 2", "pos >= last - window + 1",
           PADDED, "padded rows keep one stale key"),
    Mutant("flex-mask-mod-window", "zigzag_attn/runtime/kernels.py", "(qq - kk < window)", "(qq - kk <= window)",
           FLEX, "FlexAttention's mask_mod window one too wide"),
    # siblings: other caches
    Mutant("mixed-stream-not-reordered", "zigzag_attn/runtime/cache.py",
           "        self.full.reorder_cache(beam_idx)\n        self.stream.reorder_cache(beam_idx)",
           "        self.full.reorder_cache(beam_idx)", BEAM,
           "mixed layers (both caches) reorder only their retrieval heads"),
    Mutant("dynamic-positions-not-reordered", "zigzag_attn/runtime/cache.py",
           "self.stream_pos = self.stream_pos.index_select(0, beam_idx.to(self.stream_pos.device))",
           "self.stream_pos = self.stream_pos", BEAM, "ZigzagCache reorders keys but not their positions"),
    Mutant("static-positions-not-reordered", "zigzag_attn/runtime/static_cache.py",
           "self.ring_pos.copy_(self.ring_pos.index_select(0, idx))", "self.ring_pos.copy_(self.ring_pos)", BEAM,
           "ZigzagStaticCache reorders ring keys but not ring positions"),
    Mutant("aligned-keep-extra-key", "zigzag_attn/runtime/cache.py", "tail=min(window - 1, total)",
           "tail=min(window, total)", ALIGNED, "unpadded rows keep one stale key"),
    Mutant("static-ring-too-long", "zigzag_attn/runtime/static_cache.py",
           "min(plan.sink + plan.window, max_cache_len) + 1", "plan.sink + plan.window + 1",
           ("tests/test_static.py", "-k", "no_longer"), "rings ignore max_cache_len"),
    Mutant("static-full-off-by-one", "zigzag_attn/runtime/static_cache.py", "bool((last >= scratch).any())",
           "bool((last > scratch).any())", ("tests/test_static.py", "-k", "no_longer"),
           "a ring cut to max_cache_len takes one token too many (into its scratch slot)"),
    Mutant("static-slot-formula", "zigzag_attn/runtime/static_cache.py", "sink + (query_pos - sink) % window",
           "sink + (query_pos - sink) % (window + 1)", ("tests/test_static.py", "-k", "matches_reference and llama"),
           "ring slots cycle over window + 1"),
    # siblings: other kernels
    Mutant("flex-mask-mod-causal", "zigzag_attn/runtime/kernels.py", "(kk <= qq)", "(kk < qq)", FLEX,
           "FlexAttention's mask_mod hides a query's own key"),
    Mutant("flex-mask-mod-padding", "zigzag_attn/runtime/kernels.py", "return (kk >= 0) & (kk <= qq)",
           "return (kk <= qq)", FLEX, "FlexAttention's mask_mod lets padding keys in"),
    Mutant("flex-full-block-window", "zigzag_attn/runtime/kernels.py", "(qhi - klo < window)",
           "(qhi - klo <= window)", FLEX, "a block with one forbidden pair is marked full"),
    Mutant("blocked-span-short", "zigzag_attn/runtime/kernels.py", "lo = min(a + block, n), max(0, a - window + 1)",
           "lo = min(a + block, n), max(0, a - window + 2)", BLOCKED, "blocked SDPA misses the oldest window key"),
    Mutant("blocked-sinks-twice", "zigzag_attn/runtime/kernels.py", "(0, cached + min(new_sinks, lo))",
           "(0, cached + new_sinks)", BLOCKED, "blocked SDPA lists new sink keys twice"),
    Mutant("sdpa-mask-window", "zigzag_attn/runtime/step.py", "((k < sink) | (q - k < window))",
           "((k < sink) | (q - k <= window))", ("tests/test_matrix.py", "-k", "one_pass and llama"),
           "the SDPA mask's window one too wide"),
]


def copy_repo(dest: Path) -> None:
    """Tracked and untracked (not ignored) files of the repository, as they are now."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    for name in filter(None, out.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run_tests(repo: Path, args: tuple[str, ...], timeout: int) -> tuple[str, str, float]:
    """(passed / failed / ..., the first failing test, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(repo), "ZIGZAG_SKIP_NOTEBOOK": "1"}
    start = time.time()
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rfE", "-p", "no:cacheprovider", *args],
                           cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.time() - start
    first = next((line.split()[1] for line in p.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))), "")
    return {0: "passed", 1: "failed"}.get(p.returncode, f"error (rc {p.returncode})"), first, time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", help="mutant names (default: all)")
    ap.add_argument("--suite", action="store_true", help="run the whole suite for each mutant, not its tests")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per test run")
    a = ap.parse_args()
    mutants = [m for m in MUTANTS if not a.only or m.name in a.only]
    if a.only and len(mutants) != len(a.only):
        sys.exit(f"unknown mutants; known: {', '.join(m.name for m in MUTANTS)}")
    with tempfile.TemporaryDirectory(prefix="zigzag-mutate-") as tmp:
        repo = Path(tmp)
        copy_repo(repo)
        rows, clean_runs = [], {}
        for m in mutants:
            path = repo / m.path
            original = path.read_text()
            if original.count(m.old) != 1:
                sys.exit(f"{m.name}: {m.old!r} occurs {original.count(m.old)} times in {m.path}, not once")
            args = () if a.suite else m.tests
            if args not in clean_runs:  # the same tests must pass unmutated
                clean_runs[args] = run_tests(repo, args, a.timeout)[0]
            clean = clean_runs[args]
            path.write_text(original.replace(m.old, m.new))
            try:
                result, first, seconds = run_tests(repo, args, a.timeout)
            finally:
                path.write_text(original)
            verdict = "SURVIVED" if result == "passed" else "killed" if result == "failed" else result
            if clean != "passed":
                verdict = f"unmutated tests {clean}"
            rows.append((m, " ".join(args) or "whole suite", verdict, first, seconds))
            print(f"{m.name}: {verdict} {first} ({seconds:.0f} s)", flush=True)
    print("\n| mutant | change | tests run | result | first failure | s |\n| --- | --- | --- | --- | --- | --- |")
    for m, tests, verdict, first, seconds in rows:
        print(f"| {m.name} | {m.what} (`{m.path}`) | `{tests}` | {verdict} | {first} | {seconds:.0f} |")
    survived = [m.name for m, _, v, _, _ in rows if v != "killed"]
    print(f"\n{len(rows) - len(survived)} of {len(rows)} killed" + (f"; not killed: {', '.join(survived)}"
                                                                    if survived else ""))


if __name__ == "__main__":
    main()
