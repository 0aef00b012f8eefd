"""Calibration defaults per device: the one place both `zz.profile` and `zigzag-attn calibrate` read them from.

Chosen by measurement (docs/results.md): on a GPU, the ablation scores then measured greedy elimination on 4k
prompts is the best layer-exclusive method; on CPU, the ablation alone at 1k tokens beats random layer sets by far
and finishes in minutes on two cores.

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
    "cuda": {"method": "attention", "length": 4096, "samples": 4, "keys": 4, "refine": True, "candidates": None,
             "batch": 8},
}


def calibration(device) -> dict:
    """The defaults for `device` (a torch.device or a name such as "cuda:1"); devices other than CUDA get CPU's."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return dict(CALIBRATION["cuda" if kind == "cuda" else "cpu"])
