"""`profile`: score how retrieval-critical each layer (and KV head) of a model is.

Methods:
  * "gates"     - DuoAttention-style: one trainable gate per layer (or per KV head) mixes full and streaming
                  attention; distilled against the frozen full-attention model on passkey data (`gates.py`).
  * "attention" - training-free ablation: each layer made streaming alone; the rise in answer loss (`ablation.py`).
  * "robust"    - measured greedy elimination on several tasks and genres with a worst-task objective, its ranking
                  checked against plain ablation on fresh prompts (`robust.py`).
Then `zz.solve` turns the scores into a plan and `zz.refine` can improve it by measurement (`refine.py`).
The ablation, `refine` and "robust" are one greedy search with a pluggable objective (`search.py`), measured by
`trials.py` from hidden states held where plans share a prefix (`prefix_cache.py`).
"""

from __future__ import annotations

import time

import torch

from .. import defaults
from ..data.calibration import calibration_groups
from ..data.passkey import Sample, passkey_samples
from ..model_info import describe, input_device
from ..plan import check_sink_window
from ..scores import Scores
from .ablation import ablation_scores
from .measure import Measurement, measure
from .refine import refine
from .robust import robust_scores

METHODS = ("gates", "attention", "robust")


def profile(model, tokenizer=None, *, method: str | None = None, data: list[Sample] | None = None, sink: int = 64,
            window: int = 256, length: int | None = None, samples: int | None = None, keys: int | None = None,
            text: str | None = None, seed: int = 0, batch_size: int | None = None, progress: bool = True,
            **gate_options) -> Scores:
    """Scores (`heads` `[num_layers, num_kv_heads]`, `layers` `[num_layers]`) for `model`.

    method, length, samples, keys, batch_size: None takes the defaults for the device the model runs on
        (`zigzag_attn.defaults`, the same ones `zigzag-attn calibrate` uses).
    data: calibration samples (`zigzag_attn.data.passkey_samples`); by default `samples` prompts of `length`
        tokens with `keys` passkeys each, built with `tokenizer` from `text` or the shipped calibration novels.
    method="robust": `data` may be `{task: samples}` (default: `data.calibration.calibration_groups` at
        `length // 2` and `length` tokens, `samples` prompts per task, length and genre; validated on as many fresh
        prompts at `length`); `keys` is unused.
    gate_options: passed to `gates.train_gates` (steps, lr, granularity, ...), method="gates" only; for
        method="robust", `keep` and `candidates` go to `robust.robust_scores`. The default
        granularity here is "layer" (one gate per layer): for layer-exclusive plans it ranked layers far better than
        per-head gates averaged over a layer (docs/results.md). Use granularity="head" for `solve_heads`.
    """
    preset = defaults.calibration(input_device(model))
    method = preset["method"] if method is None else method
    batch_size = preset["batch"] if batch_size is None else batch_size
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    check_sink_window(sink, window)
    allowed = {"gates": None, "robust": {"keep", "candidates"}, "attention": set()}[method]
    if allowed is not None and set(gate_options) - allowed:
        raise TypeError(f"unexpected options for method={method!r}: {', '.join(sorted(set(gate_options) - allowed))}")
    length = preset["length"] if length is None else length
    samples = preset["samples"] if samples is None else samples
    if data is None and tokenizer is None:
        raise ValueError("profile needs a tokenizer to build calibration data (or pass data=)")
    info = describe(model)
    if method == "robust":
        return _robust(model, tokenizer, info, data, sink, window, length, samples, text, seed, batch_size, progress,
                       gate_options)
    if data is None:
        data = passkey_samples(tokenizer, n=samples, length=length, keys=preset["keys"] if keys is None else keys,
                               text=text, seed=seed)
    if not data:
        raise ValueError("profile needs at least one calibration sample")
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


def _robust(model, tokenizer, info, data, sink, window, length, samples, text, seed, batch_size, progress,
            options) -> Scores:
    start = time.perf_counter()
    if isinstance(data, list):
        data = {"data": data}
    valid = None
    if data is None:
        data = calibration_groups(tokenizer, lengths=sorted({length // 2, length}), samples=samples, text=text,
                                  seed=seed)
        valid = calibration_groups(tokenizer, lengths=(length,), samples=samples, text=text, seed=seed + 1)
    layers, extra = robust_scores(model, data, valid, sink=sink, window=window, batch_size=batch_size,
                                  progress=progress, **options)
    meta = {"sink": sink, "window": window, "samples": sum(len(s) for s in data.values()),
            "tokens": max(len(x) for s in data.values() for x in s), "seed": seed, **extra,
            "seconds": round(time.perf_counter() - start, 1)}
    heads = layers[:, None].expand(info.num_layers, info.num_kv_heads)
    return Scores(heads, layers, model=info, method="robust", meta=meta)


__all__ = ["METHODS", "Measurement", "measure", "profile", "refine"]
