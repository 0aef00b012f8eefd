"""Calibration data for profiling: several task types on several genres, in wordings that evaluation never uses.

Tasks (answers teacher-forced, one forward scores every answer of a prompt):
  * "passkeys" - four pass keys ("The pass key for the red door is 12345.") at random depths, all four asked.
  * "ledger"   - one ledger with four entries at random depths; the answer lists them in order (multi-value).
  * "boxes"    - box chains ("Put 48213 in box QWERT." then "Copy box QWERT into box ASDFG."); the answer lists
                 the boxes holding the first chain's number, in order (multi-hop tracking).
Genres: `texts.CALIBRATION_SPLITS` (fiction and code). Evaluation uses RULER's wordings ("special magic number",
"VAR X = ...") on `texts.EVALUATION_SPLITS`, so a plan is never judged on what it was calibrated on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .passkey import COLORS, THINGS, Sample, passkey_samples
from .prompts import distinct_names, distinct_numbers, needle_prompt
from .texts import CALIBRATION_SPLITS, load_text

TASKS = ("passkeys", "ledger", "boxes")


def ledger(tokenizer, text: str, length: int, rng: random.Random, entries: int = 4) -> Sample:
    """One ledger (`entries` 5-digit entries at random depths); the answer lists the entries in order."""
    name = f"{rng.choice(COLORS)} {rng.choice(THINGS)}"
    nums = distinct_numbers(rng, entries, 5)
    depths = sorted(rng.uniform(0.05, 0.95) for _ in nums)
    needles = [(d, f" New entry in the ledger of the {name}: {v}. ") for d, v in zip(depths, nums, strict=True)]
    question = (f"\nQuestion: List the entries in the ledger of the {name}, oldest first. Answer: The entries in the "
                f"ledger of the {name} are")
    return needle_prompt(tokenizer, text, length, rng, needles, question, nums, depths, "")


def boxes(tokenizer, text: str, length: int, rng: random.Random, hops: int = 3, chains: int = 2) -> Sample:
    """`chains` box chains of `hops` copies each, interleaved at random depths; asks for the first chain's boxes."""
    names = distinct_names(rng, chains * (hops + 1))
    values = distinct_numbers(rng, chains, 5)
    needles, asked = [], ([], [])
    for c in range(chains):
        chain = names[c * (hops + 1):(c + 1) * (hops + 1)]
        depths = sorted(rng.uniform(0.05, 0.95) for _ in chain)
        needles.append((depths[0], f" Put {values[c]} in box {chain[0]}. "))
        needles += [(d, f" Copy box {a} into box {b}. ") for d, a, b in zip(depths[1:], chain, chain[1:], strict=False)]
        if c == 0:
            asked = (chain, depths)
    question = (f"\nQuestion: Which boxes end up holding {values[0]}, in the order they were filled? Answer: The "
                f"boxes holding {values[0]} are")
    return needle_prompt(tokenizer, text, length, rng, needles, question, asked[0], asked[1], "")


def calibration_groups(tokenizer, *, lengths: Sequence[int] = (2048,), samples: int = 4,
                       tasks: Sequence[str] = TASKS, splits: Sequence[str] = CALIBRATION_SPLITS,
                       text: str | None = None, seed: int = 0) -> dict[str, list[Sample]]:
    """`{task: samples}`: per task, `samples` prompts for each (length, genre), genres taken in turn.

    text: the user's own calibration text, used instead of the shipped `splits`.
    Deterministic given `seed`.
    """
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"calibration tasks must be among {', '.join(TASKS)}; got {list(tasks)!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1; got {samples!r}")
    texts = [text] if text is not None else [load_text(split=s) for s in splits]
    rng = random.Random(seed)
    out: dict[str, list[Sample]] = {t: [] for t in tasks}
    for task in tasks:
        for n in lengths:
            for i in range(samples):
                hay = texts[i % len(texts)]
                if task == "passkeys":
                    out[task] += passkey_samples(tokenizer, n=1, length=n, keys=4, text=hay,
                                                 seed=rng.randrange(2**31))
                else:
                    out[task].append((ledger if task == "ledger" else boxes)(tokenizer, hay, n, rng))
    return out
