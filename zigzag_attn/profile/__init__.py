"""`profile`: score how retrieval-critical each layer (and KV head) of a model is.

Methods:
  * "gates"     - DuoAttention-style: one trainable gate per layer (or per KV head) mixes full and streaming
                  attention; distilled against the frozen full-attention model on passkey data (`gates.py`).
  * "attention" - training-free ablation: each layer made streaming alone; the rise in answer loss (`ablation.py`).
Then `zz.solve` turns the scores into a plan and `zz.refine` can improve it by measurement (`refine.py`).
"""

from __future__ import annotations

import time

import torch

from .. import defaults
from ..data.passkey import Sample, passkey_samples
from ..model_info import describe, input_device
from ..plan import check_sink_window
from ..scores import Scores
from .ablation import ablation_scores
from .measure import Measurement, measure
from .refine import refine

METHODS = ("gates", "attention")


def profile(model, tokenizer=None, *, method: str | None = None, data: list[Sample] | None = None, sink: int = 64,
            window: int = 256, length: int | None = None, samples: int | None = None, keys: int | None = None,
            text: str | None = None, seed: int = 0, batch_size: int | None = None, progress: bool = True,
            **gate_options) -> Scores:
    """Scores (`heads` `[num_layers, num_kv_heads]`, `layers` `[num_layers]`) for `model`.

    method, length, samples, keys, batch_size: None takes the defaults for the device the model runs on
        (`zigzag_attn.defaults`, the same ones `zigzag-attn calibrate` uses).
    data: calibration samples (`zigzag_attn.data.passkey_samples`); by default `samples` prompts of `length`
        tokens with `keys` passkeys each, built with `tokenizer` from `text` or the shipped calibration novels.
    gate_options: passed to `gates.train_gates` (steps, lr, granularity, ...), method="gates" only. The default
        granularity here is "layer" (one gate per layer): for layer-exclusive plans it ranked layers far better than
        per-head gates averaged over a layer (docs/results.md). Use granularity="head" for `solve_heads`.
    """
    preset = defaults.calibration(input_device(model))
    method = preset["method"] if method is None else method
    batch_size = preset["batch"] if batch_size is None else batch_size
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    check_sink_window(sink, window)
    if gate_options and method != "gates":
        raise TypeError(f"unexpected options for method={method!r}: {', '.join(gate_options)}")
    if data is None:
        if tokenizer is None:
            raise ValueError("profile needs a tokenizer to build calibration data (or pass data=)")
        data = passkey_samples(tokenizer, n=preset["samples"] if samples is None else samples,
                               length=preset["length"] if length is None else length,
                               keys=preset["keys"] if keys is None else keys, text=text, seed=seed)
    if not data:
        raise ValueError("profile needs at least one calibration sample")
    info = describe(model)
    start = time.perf_counter()
    meta = {"sink": sink, "window": window, "samples": len(data), "tokens": max(len(s) for s in data),
            "seed": seed}
    if method == "attention":
        layers, extra = ablation_scores(model, data, sink=sink, window=window, batch_size=batch_size,
                                        progress=progress)
        heads = layers[:, None].expand(info.num_layers, info.num_kv_heads)
    else:
        from .gates import train_gates

        gate_options.setdefault("granularity", "layer")  # per-layer gates rank layers best (docs/results.md)
        heads, layers, extra = train_gates(model, data, sink=sink, window=window, seed=seed, progress=progress,
                                           **gate_options)
    meta.update(extra, seconds=round(time.perf_counter() - start, 1))
    return Scores(torch.as_tensor(heads), torch.as_tensor(layers), model=info, method=method, meta=meta)


__all__ = ["METHODS", "Measurement", "measure", "profile", "refine"]
