"""Quickstart: patch SmolLM2-135M-Instruct with a plan and find a pass key hidden in held-out text.

    python examples/quickstart.py [--plan plan.json | --plan smollm2-135m@0.5] [--tokens 3000]

Runs on CPU in about a minute. The plan is a file made by `zigzag-attn calibrate`, or a shipped plan by name.
It prints what full attention and the patched model answer, and the KV cache each one keeps.

This demonstrates the mechanics on a tiny model with one short prompt; it does not measure accuracy. The shipped
`smollm2-135m@*` plans were judged only on held-out books of the calibration genre; plans judged on genres
calibration never read, and how to check your own, are in the README and docs/results.md.
"""

from __future__ import annotations

import argparse
import time

import torch

import zigzag_attn as zz
from zigzag_attn.data import IGNORE, passkey_samples
from zigzag_attn.models import load


@torch.no_grad()
def answer(model, tok, ids: torch.Tensor) -> tuple[str, object, float]:
    t = time.perf_counter()
    out = model.generate(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], max_new_tokens=8,
                         do_sample=False, return_dict_in_generate=True)
    text = tok.decode(out.sequences[0, len(ids):], skip_special_tokens=True)
    return text.strip(), zz.cache_of(out), time.perf_counter() - t


def cache_bytes(cache) -> int:
    if isinstance(cache, zz.ZigzagCache):
        return cache.nbytes()
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default="smollm2-135m@0.5", help="plan file or shipped plan name")
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    model, tok = load("smollm2-135m")
    plan = zz.Plan.load(args.plan)
    print(f"plan {args.plan}: {plan.describe()}")
    sample = passkey_samples(tok, n=1, length=args.tokens, keys=1, split="evaluation", seed=args.seed)[0]
    first_answer = int((sample.labels != IGNORE).nonzero()[0])
    prompt = sample.input_ids[:first_answer]  # ends with "... The pass key for the <name> is"
    key, depth = sample.answers[0], sample.depths[0]
    print(f"prompt: {len(prompt)} tokens of Jane Austen with pass key {key} hidden at {depth:.0%} depth")
    full_text, full_cache, full_s = answer(model, tok, prompt)
    with zz.patched(model, plan):
        zz_text, zz_cache, zz_s = answer(model, tok, prompt)
    n = full_cache.get_seq_length()
    print(f"full attention : {full_text!r:20} {full_s:5.1f} s   KV cache {cache_bytes(full_cache) / 2**20:6.2f} MiB")
    print(f"zigzag plan    : {zz_text!r:20} {zz_s:5.1f} s   KV cache {cache_bytes(zz_cache) / 2**20:6.2f} MiB "
          f"(theory: {plan.kv_fraction(n):.2f} of full at {n} tokens)")
    print(f"pass key found - full attention: {key in full_text}, zigzag plan: {key in zz_text}")


if __name__ == "__main__":
    main()
