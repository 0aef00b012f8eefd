"""Synthetic multi-passkey prompts: passkeys hidden at random depths in a haystack, questions at the end.

Each answer is teacher-forced after its question, so one forward scores every passkey of a prompt:
the answer tokens carry labels, everything else is -100. With `keys=1` this is the classic passkey test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .texts import load_text

COLORS = ("red", "blue", "green", "yellow", "silver", "golden", "purple", "orange", "black", "white", "grey", "pink")
THINGS = ("door", "lantern", "river", "garden", "tower", "carriage", "letter", "violin", "bridge", "harbour", "mill",
          "orchard")
IGNORE = -100


@dataclass(frozen=True)
class Sample:
    """One prompt. `input_ids`, `labels`: `(seq,)` long; labels are -100 except on answer tokens."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    answers: tuple[str, ...]
    depths: tuple[float, ...]  # where each passkey sits, as a fraction of the haystack

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def passkey_samples(tokenizer, *, n: int = 4, length: int = 2048, keys: int = 4, text: str | None = None,
                    split: str = "calibration", seed: int = 0, depths: list[float] | None = None) -> list[Sample]:
    """`n` prompts of about `length` tokens, each with `keys` passkeys (5-digit numbers) at random depths.

    text: haystack text (default: the shipped `split`, see `zigzag_attn.data.texts`).
    depths: fixed depths in [0, 1] for the keys of every prompt (default: uniform at random).
    Deterministic given `seed`. Needs a fast tokenizer (for character offsets).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("passkey_samples needs a fast tokenizer (for character offsets)")
    if isinstance(length, bool) or not isinstance(length, int) or length < 64 * max(1, keys):
        raise ValueError(f"length must be an integer >= {64 * max(1, keys)} for {keys} keys; got {length!r}")
    if keys < 1 or keys > len(COLORS) * len(THINGS):
        raise ValueError(f"keys must be in [1, {len(COLORS) * len(THINGS)}]; got {keys}")
    if depths is not None and (len(depths) != keys or not all(0 <= d <= 1 for d in depths)):
        raise ValueError(f"depths must be {keys} numbers in [0, 1]; got {depths!r}")
    text = load_text(split=split) if text is None else text
    rng = random.Random(seed)
    return [_sample(tokenizer, text, length, keys, rng, depths) for _ in range(n)]


def _sample(tok, text: str, length: int, keys: int, rng: random.Random, depths) -> Sample:
    names = rng.sample([f"{c} {t}" for c in COLORS for t in THINGS], keys)
    nums = [str(rng.randint(10000, 99999)) for _ in names]
    where = sorted(depths if depths is not None else [rng.uniform(0.05, 0.95) for _ in names])
    needles = [f" The pass key for the {name} is {num}. Remember it. " for name, num in zip(names, nums, strict=True)]
    order = rng.sample(range(keys), keys)
    questions = [(f"\nQuestion: What is the pass key for the {names[i]}? Answer: The pass key for the {names[i]} is",
                  f" {nums[i]}.") for i in order]
    special = len(tok("a").input_ids) - len(tok("a", add_special_tokens=False).input_ids)
    overhead = sum(len(tok(s, add_special_tokens=False).input_ids) for s in needles)
    overhead += sum(len(tok(q + a, add_special_tokens=False).input_ids) for q, a in questions) + special + 4
    try:
        hay = haystack(tok, text, length - overhead, rng)
    except TextTooShort as e:
        raise e.for_prompt(length, overhead) from None
    body, cursor = [], 0
    for d, needle in zip(where, needles, strict=True):
        cut = boundary(hay, int(d * len(hay)), cursor)
        body += [hay[cursor:cut], needle]
        cursor = cut
    body.append(hay[cursor:])
    prompt = "".join(body).strip() + "\n"
    spans = []
    for q, a in questions:
        prompt += q
        spans.append((len(prompt) + 1, len(prompt) + len(a) - 1))  # the digits, not the space or the period
        prompt += a
    ids, labels = label_spans(tok, prompt, spans)
    return Sample(ids, labels, tuple(nums[i] for i in order), tuple(where[i] for i in order))


def label_spans(tok, prompt: str, spans: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, labels)`, each `(seq,)` long; labels are the ids of tokens overlapping a character span."""
    enc = tok(prompt, return_offsets_mapping=True)
    ids = torch.tensor(enc.input_ids, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    for i, (s, e) in enumerate(enc.offset_mapping):
        if e > s and any(s < b and e > a for a, b in spans):
            labels[i] = ids[i]
    return ids, labels


def haystack(tok, text: str, tokens: int, rng: random.Random) -> str:
    """About `tokens` tokens of `text` from a random paragraph on; wraps around the end."""
    if tokens < 16:
        raise ValueError("length is too small for the passkeys and questions")
    start = text.find("\n\n", rng.randrange(len(text)))
    chunk = ""
    start = 0 if start < 0 else start + 2
    source = text[start:] + ("\n\n" + text) * 3  # the text may repeat, at most four times over
    while True:
        size = len(chunk)
        chunk = source[: max(size * 2, tokens * 8)]
        enc = tok(chunk, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc.input_ids) > tokens:
            return chunk[: enc.offset_mapping[tokens][0]]
        if len(chunk) == size:
            raise TextTooShort(tokens, len(enc.input_ids))


class TextTooShort(ValueError):
    """The haystack text gives `available` tokens (repeated at most four times over), fewer than `asked`."""

    def __init__(self, asked: int, available: int):
        super().__init__(f"the haystack text is too short for {asked} tokens; it gives at most {available}")
        self.asked, self.available = asked, available

    def for_prompt(self, length: int, overhead: int) -> ValueError:
        """The same failure told in prompt tokens: `length` asked for, of which `overhead` are not haystack."""
        return ValueError(f"length {length} is longer than the haystack text allows: at most "
                          f"{self.available + overhead} tokens (the text repeated at most four times over)")


def boundary(hay: str, pos: int, lo: int) -> int:
    """A sentence end near `pos` (not before `lo`), so passkeys do not split words."""
    pos = max(pos, lo)
    for end in (". ", ".\n", "\n"):
        j = hay.find(end, pos, pos + 400)
        if j >= 0:
            return j + len(end)
    j = hay.find(" ", pos)
    return len(hay) if j < 0 else j + 1
