"""Prompt assembly shared by calibration data and evaluation tasks: needles at depths in a haystack, a question, and
a teacher-forced answer whose tokens alone carry labels (so one forward scores it; see `profile.measure`)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from .passkey import IGNORE, Sample, TextTooShort, boundary, haystack, label_spans

SEPARATOR = ", "


def needle_prompt(tok, text: str, length: int, rng: random.Random, needles: Sequence[tuple[float, str]],
                  question: str, items: Sequence[str], depths: Sequence[float], intro: str) -> Sample:
    """Haystack of about `length` tokens with each needle `(depth, sentence)` at a sentence end near its depth."""
    check_tokenizer(tok)
    check_length(length)
    budget = length - overhead(tok, intro, [s for _, s in needles], question, items)
    if budget < 16:
        raise ValueError(f"length {length} is too small: the needles and question alone take "
                         f"{length - budget} tokens")
    try:
        hay = haystack(tok, text, budget, rng)
    except TextTooShort as e:
        raise e.for_prompt(length, length - budget) from None
    body, cursor = [], 0
    for d, sentence in sorted(needles, key=lambda x: x[0]):
        cut = cursor if d <= 0 else boundary(hay, int(d * len(hay)), cursor)
        body += [hay[cursor:cut], sentence]
        cursor = cut
    body.append(hay[cursor:])
    return labelled(tok, intro + "".join(body).strip() + "\n" + question, items, depths)


def labelled(tok, prompt: str, items: Sequence[str], depths: Sequence[float]) -> Sample:
    """`prompt` + " item1, item2." with labels on the tokens of each item (not the spaces, commas or period).

    If the tokenizer merges a separator into an item's token (so two items' labels touch), the whole list is
    labelled as one answer instead.
    """
    spans = []
    for i, item in enumerate(items):
        prompt += (" " if i == 0 else SEPARATOR)
        spans.append((len(prompt), len(prompt) + len(item)))
        prompt += item
    prompt += "."
    input_ids, labels = label_spans(tok, prompt, spans)
    if _runs(labels) != len(items):
        input_ids, labels = label_spans(tok, prompt, [(spans[0][0], spans[-1][1])])
        return Sample(input_ids, labels, (SEPARATOR.join(items),), tuple(depths))
    return Sample(input_ids, labels, tuple(items), tuple(depths))


def _runs(labels: torch.Tensor) -> int:
    """Number of contiguous runs of labelled positions (how `measure` splits answers)."""
    on = (labels != IGNORE).int()
    return int((on[1:] > on[:-1]).sum()) + int(on[0]) if len(on) else 0


def overhead(tok, intro: str, needles: Sequence[str], question: str, items: Sequence[str]) -> int:
    """Tokens taken by everything but the haystack (a few spare for joins)."""
    special = len(tok("a").input_ids) - len(ids(tok, "a"))
    answer = " " + SEPARATOR.join(items) + "."
    return len(ids(tok, intro)) + sum(len(ids(tok, s)) for s in needles) + len(ids(tok, question + answer)) \
        + special + 4


def ids(tok, s: str) -> list[int]:
    """Token ids of `s` without special tokens."""
    return tok(s, add_special_tokens=False).input_ids if s else []


def distinct_numbers(rng: random.Random, k: int, digits: int) -> list[str]:
    """`k` distinct random `digits`-digit numbers, in the order drawn."""
    return _distinct(lambda: number(rng, digits), k)


def distinct_names(rng: random.Random, k: int) -> list[str]:
    """`k` distinct random five-letter upper-case names, in the order drawn."""
    return _distinct(lambda: "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)), k)


def _distinct(make, k: int) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        v = make()
        if v not in out:
            out.append(v)
    return out


def number(rng: random.Random, digits: int) -> str:
    """A random `digits`-digit number as text (no leading zero)."""
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def check_length(length) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer (tokens); got {length!r}")


def check_tokenizer(tok) -> None:
    if not getattr(tok, "is_fast", False):
        raise TypeError("prompts need a fast tokenizer (for character offsets)")
