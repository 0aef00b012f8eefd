"""Measure a plan on passkey samples: the answer-token loss and which answers the model gets right.

Teacher forcing makes both one forward per batch: an answer counts as right when every one of its tokens is the
model's argmax, which is exactly when greedy decoding would write it.
"""

from __future__ import annotations

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


def _measure(model, samples: list[Sample], batch_size: int) -> Measurement:
    device = input_device(model)  # also right for models dispatched by accelerate
    total, count = 0.0, 0
    right: list[list[bool]] = [[] for _ in samples]  # per sample, put back in sample order at the end
    for rows in _batches([len(s) for s in samples], batch_size):
        ids, labels, mask = batch([samples[i] for i in rows], device)
        keep = ids.shape[1] - int((labels != IGNORE).float().argmax(1).min()) + 1  # logits from the first answer on
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
        nll, n, answers = _score(logits, labels, keep)
        total, count = total + nll, count + n
        for r, i in enumerate(rows):
            right[i] = answers[r]
    return Measurement(total / max(1, count), [c for per in right for c in per])


def _score(logits: torch.Tensor, labels: torch.Tensor, keep: int) -> tuple[float, int, list[list[bool]]]:
    """(summed answer-token NLL, answer tokens, per row whether each answer is the argmax) from the last `keep`
    positions' logits `[batch, keep, vocab]` and the labels `[batch, seq]`."""
    target = labels[:, -keep + 1:]
    logits = logits.float()[:, :-1]
    valid = target != IGNORE
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp_min(0), reduction="none")
    hit = (logits.argmax(-1) == target) | ~valid
    return float(nll[valid].sum()), int(valid.sum()), [_answers_right(valid[r], hit[r]) for r in range(len(valid))]


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
