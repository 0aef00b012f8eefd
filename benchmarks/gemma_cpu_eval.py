"""Evaluate a Gemma-3-270M plan on CPU against every choice of one kept full-attention layer.

    python benchmarks/gemma_cpu_eval.py PLAN.json [--length 2048]

Gemma-3-270M has 3 full-attention layers (5, 11, 17); a plan keeping one of them can be compared with all three
choices, which is exhaustive. NIAH over 5 depths x 2 prompts and 8 pass-key prompts, held-out text.
"""

from __future__ import annotations

import argparse

import torch

import zigzag_attn as zz
from zigzag_attn.data import passkey_samples
from zigzag_attn.eval.tasks import niah
from zigzag_attn.models import load
from zigzag_attn.plan import RETRIEVAL, STREAMING


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan")
    ap.add_argument("--length", type=int, default=2048)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load("gemma3-270m")
    info = zz.describe(model)
    plan = zz.Plan.load(args.plan)
    full_layers = [i for i in range(info.num_layers) if i not in info.native_sliding]
    policies = {"full": None}
    for keep in full_layers:
        modes = [STREAMING if i in full_layers and i != keep else RETRIEVAL for i in range(info.num_layers)]
        policies[f"keep layer {keep}"] = zz.Plan.from_layers(modes, sink=plan.sink, window=plan.window, model=info)
    data = {"niah": [s for i in range(5) for s in niah(tok, args.length, depth=i / 4, n=2, seed=10 * i)],
            "passkey": passkey_samples(tok, n=8, length=args.length, keys=1, split="evaluation", seed=5)}
    print(f"plan keeps {[i for i in full_layers if plan.modes[i] == RETRIEVAL]}")
    for name, p in policies.items():
        row = {task: zz.measure(model, d, p) for task, d in data.items()}
        print(f"{name:14}", "  ".join(f"{t} {m.accuracy:.2f} (n={len(m.correct)})" for t, m in row.items()),
              flush=True)


if __name__ == "__main__":
    main()
