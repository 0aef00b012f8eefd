"""Measure a plan on passkey samples: the answer-token loss and which answers the model gets right.

Teacher forcing makes both one forward per batch: an answer counts as right when every one of its tokens is the
model's argmax, which is exactly when greedy decoding would write it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..data.passkey import IGNORE, Sample
from ..model_info import input_device
from ..plan import Plan
from ..runtime import patched


@dataclass(frozen=True)
class Measurement:
    loss: float  # mean negative log-likelihood per answer token
    correct: list[bool]  # one per answer, in sample order

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(1, len(self.correct))


@torch.no_grad()
def measure(model, samples: list[Sample], plan: Plan | None = None, *, batch_size: int = 1,
            **patch_options) -> Measurement:
    """Answer loss and per-answer correctness of `model` (patched with `plan` for the call, if given).

    patch_options: passed to `zigzag_attn.patch` (e.g. `streaming_backend="sdpa"`).
    """
    if plan is None:
        return _measure(model, samples, batch_size)
    with patched(model, plan, **patch_options):
        return _measure(model, samples, batch_size)


def measure_groups(model, groups: Mapping[str, list[Sample]], plan: Plan | None,
                   batch_size: int = 1) -> dict[str, Measurement]:
    """Each group's measurement, by whole forwards of `model` patched with `plan` (None: as it is) once for all."""
    with patched(model, plan) if plan is not None else contextlib.nullcontext():
        return {g: measure(model, s, batch_size=batch_size) for g, s in groups.items()}


def _measure(model, samples: list[Sample], batch_size: int) -> Measurement:
    return batched(samples, batch_size, input_device(model),  # also right for models dispatched by accelerate
                   lambda ids, mask, keep: model(input_ids=ids, attention_mask=mask, use_cache=False,
                                                 logits_to_keep=keep).logits)


def batched(samples: list[Sample], batch_size: int, device, forward) -> Measurement:
    """`measure`'s loop over the batches, with `forward(ids, mask, keep)` giving the logits `[batch, keep, vocab]`
    of the last `keep` positions of the left-padded `ids` / `mask` `[batch, seq]` (`prefix_cache.PrefixCache` runs
    part of the model in it)."""
    total, count = 0.0, 0
    right: list[list[bool]] = [[] for _ in samples]  # per sample, put back in sample order at the end
    for rows in _batches([len(s) for s in samples], batch_size):
        ids, labels, mask = batch([samples[i] for i in rows], device)
        keep = ids.shape[1] - int((labels != IGNORE).float().argmax(1).min()) + 1  # logits from the first answer on
        target = labels[:, -keep + 1:]
        logits = forward(ids, mask, keep).float()[:, :-1]
        valid = target != IGNORE
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp_min(0), reduction="none")
        total += float(nll[valid].sum())
        count += int(valid.sum())
        hit = (logits.argmax(-1) == target) | ~valid
        for r, i in enumerate(rows):
            right[i] = _answers_right(valid[r], hit[r])
    return Measurement(total / max(1, count), [c for per in right for c in per])


def _batches(lengths: list[int], batch_size: int, slack: float = 1.1) -> list[list[int]]:
    """Sample indices in batches of at most `batch_size`, shortest first, a batch's longest at most `slack` times
    its shortest: prompts of different lengths (calibration mixes 4k and 8k) are not padded to each other, and a
    batch of equal lengths has no padding (transformers then skips the mask)."""
    out: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if out and len(out[-1]) < batch_size and lengths[i] <= slack * lengths[out[-1][0]]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def batch(samples: list[Sample], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded `(input_ids, labels, attention_mask)`, each `(batch, seq)`."""
    n = max(len(s) for s in samples)
    ids = torch.zeros(len(samples), n, dtype=torch.long)
    labels = torch.full((len(samples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(samples), n, dtype=torch.long)
    for r, s in enumerate(samples):
        ids[r, n - len(s):], labels[r, n - len(s):], mask[r, n - len(s):] = s.input_ids, s.labels, 1
    return ids.to(device), labels.to(device), mask.to(device)


def _answers_right(valid: torch.Tensor, hit: torch.Tensor) -> list[bool]:
    """Split the labelled positions into answers (contiguous runs) and check each."""
    out, run = [], None
    for v, h in zip(valid.tolist(), hit.tolist(), strict=True):
        if v:
            run = h if run is None else (run and h)
        elif run is not None:
            out.append(run)
            run = None
    if run is not None:
        out.append(run)
    return out
