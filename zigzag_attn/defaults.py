"""Calibration defaults per device: the one place both `zz.profile` and `zigzag-attn calibrate` read them from.

Chosen by measurement (docs/calibration.md, docs/results.md): on a GPU, `robust` (greedy elimination with a
worst-task objective on three task types, 8k prompts) is the one layer ranking that held up at every budget on both
Qwen models: layer gates beat it by one to two standard errors at 50% on the 1.5B, but plain ablation falls far
behind it at 25% of KV on the 0.5B, and ranking by the largest head gate collapses to the all-streaming floor at 25%
on the 1.5B. On CPU, where `robust` takes about
12 minutes for SmolLM2 on two cores, the default is the ablation alone at 1k tokens, which beats random layer sets
by far and finishes in minutes; `--method robust` is the better plan there too.

    method      profiling method ("attention": ablation, training-free; "gates": DuoAttention-style training)
    length      tokens per calibration prompt
    samples     calibration prompts
    keys        passkeys per prompt
    refine      improve the solved plan by measured greedy elimination (`zz.refine`)
    candidates  with refine: try only the N lowest-scored layers each round (None: all)
    batch       prompts per forward while profiling and refining
"""

from __future__ import annotations

CALIBRATION = {
    "cpu": {"method": "attention", "length": 1024, "samples": 2, "keys": 4, "refine": False, "candidates": None,
            "batch": 1},
    "cuda": {"method": "robust", "length": 8192, "samples": 4, "keys": 4, "refine": False, "candidates": None,
             "batch": 8},
}


def calibration(device) -> dict:
    """The defaults for `device` (a torch.device or a name such as "cuda:1"); devices other than CUDA get CPU's."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return dict(CALIBRATION["cuda" if kind == "cuda" else "cpu"])
