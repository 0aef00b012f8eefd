"""Evaluation tasks: NIAH, passkey and RULER-style prompts, each a `Sample` scored by one teacher-forced forward.

Every generator is deterministic given `seed` and returns `n` prompts of about `length` tokens. The answer is
written after the question and only its tokens carry labels (the rest is -100), so an answer counts as right
exactly when greedy decoding would write it. Answers that list several items ("a, b, c.") label each item on its
own, so `measure` scores every item separately; the order is fixed and stated in the question.

The needle wording ("special magic number", RULER's) differs from the calibration passkeys ("pass key"), and the
haystack defaults to the held-out evaluation novels, so a plan is not evaluated on what it was profiled on.
"""

from __future__ import annotations

import math
import random
import re

from ..data.passkey import Sample, passkey_samples
from ..data.prompts import (
    check_length,
    check_tokenizer,
    distinct_names,
    distinct_numbers,
    ids,
    labelled,
    needle_prompt,
    number,
    overhead,
)
from ..data.texts import load_text

ADJECTIVES = ("amber", "brisk", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly", "keen", "lucky",
              "mellow", "noble", "odd", "proud", "quiet", "rapid", "shy", "tidy", "vast", "witty", "young", "zesty")
NOUNS = ("falcon", "meadow", "compass", "glacier", "harp", "island", "jasmine", "kettle", "lighthouse", "marble",
         "nectar", "otter", "pepper", "quarry", "saddle", "tulip", "umbrella", "valley", "walrus", "yacht", "anchor",
         "beacon", "canyon", "dolphin")
MAGIC_INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize them; "
               "I will quiz you about the numbers afterwards.\n\n")
VAR_INTRO = "Memorize and track the chains of variable assignments hidden in the following text.\n\n"
WORDS_INTRO = "Below is a list of words, one per line. Some of the words appear many times.\n\n"


def niah(tokenizer, length: int, depth: float = 0.5, n: int = 1, seed: int = 0, text: str | None = None
         ) -> list[Sample]:
    """Needle in a haystack: one "special magic number" (7 digits) at `depth` (0 = start, 1 = end of the haystack).

    Question at the end; the teacher-forced answer is the number.
    """
    _check_depth(depth)
    text, rng = _text(text), random.Random(seed)
    out = []
    for _ in range(_count(n)):
        key, value = rng.choice(_keys()), number(rng, 7)
        question = (f"\nQuestion: What is the special magic number for {key} mentioned in the provided text? "
                    f"Answer: The special magic number for {key} mentioned in the provided text is")
        out.append(needle_prompt(tokenizer, text, length, rng, [(depth, _magic(key, value))], question, [value],
                                 [depth], MAGIC_INTRO))
    return out


def passkey(tokenizer, length: int, depth: float | None = None, n: int = 1, seed: int = 0, text: str | None = None
            ) -> list[Sample]:
    """The classic passkey test: one 5-digit pass key (the calibration wording) on the evaluation split."""
    if depth is not None:
        _check_depth(depth)
    return passkey_samples(tokenizer, n=_count(n), length=length, keys=1, text=text, split="evaluation", seed=seed,
                           depths=None if depth is None else [depth])


def multikey_niah(tokenizer, length: int, n: int = 1, seed: int = 0, text: str | None = None, keys: int = 4
                  ) -> list[Sample]:
    """RULER multi-key NIAH: `keys` needles with distinct keys at random depths; the question asks for one."""
    def ask(rng, names, values, depths):
        i = rng.randrange(keys)
        return (f"\nQuestion: What is the special magic number for {names[i]} mentioned in the provided text? "
                f"Answer: The special magic number for {names[i]} mentioned in the provided text is"), [values[i]], \
            [depths[i]]
    return _keyed(tokenizer, length, n, seed, text, keys, ask)


def multiquery(tokenizer, length: int, n: int = 1, seed: int = 0, text: str | None = None, keys: int = 4
               ) -> list[Sample]:
    """RULER multi-query NIAH: `keys` needles with distinct keys at random depths; the question asks for every key's
    number, and the answer lists them in the order the keys are asked (a random order, not the text's)."""
    def ask(rng, names, values, depths):
        asked = ", ".join(names[:-1]) + f" and {names[-1]}" if keys > 1 else names[0]
        return (f"\nQuestion: What are the special magic numbers for {asked} mentioned in the provided text, in "
                f"that order? Answer: The special magic numbers for {asked} mentioned in the provided text are"), \
            values, depths
    return _keyed(tokenizer, length, n, seed, text, keys, ask)


def _keyed(tokenizer, length: int, n, seed: int, text: str | None, keys: int, ask) -> list[Sample]:
    """`n` prompts of `keys` needles with distinct keys and 7-digit numbers at random depths; `ask(rng, names,
    values, depths)` gives the question, the answers it asks for and their depths."""
    if not 1 <= keys <= len(_keys()):
        raise ValueError(f"keys must be in [1, {len(_keys())}]; got {keys!r}")
    text, rng = _text(text), random.Random(seed)
    out = []
    for _ in range(_count(n)):
        names = rng.sample(_keys(), keys)
        values = distinct_numbers(rng, keys, 7)
        depths = [rng.uniform(0.05, 0.95) for _ in names]
        question, items, at = ask(rng, names, values, depths)
        needles = [(d, _magic(k, v)) for d, k, v in zip(depths, names, values, strict=True)]
        out.append(needle_prompt(tokenizer, text, length, rng, needles, question, items, at, MAGIC_INTRO))
    return out


def multivalue(tokenizer, length: int, n: int = 1, seed: int = 0, text: str | None = None, values: int = 4
               ) -> list[Sample]:
    """RULER multi-value NIAH: one key with `values` numbers at random depths; the answer lists them all, in order."""
    if values < 1:
        raise ValueError(f"values must be >= 1; got {values!r}")
    text, rng = _text(text), random.Random(seed)
    out = []
    for _ in range(_count(n)):
        key = rng.choice(_keys())
        nums = distinct_numbers(rng, values, 7)
        depths = sorted(rng.uniform(0.05, 0.95) for _ in nums)
        question = (f"\nQuestion: What are all the special magic numbers for {key} mentioned in the provided text, "
                    f"in the order they appear? Answer: The special magic numbers for {key} mentioned in the "
                    "provided text are")
        needles = [(d, _magic(key, v)) for d, v in zip(depths, nums, strict=True)]
        out.append(needle_prompt(tokenizer, text, length, rng, needles, question, nums, depths, MAGIC_INTRO))
    return out


def variable_tracking(tokenizer, length: int, n: int = 1, seed: int = 0, text: str | None = None, hops: int = 4,
                      chains: int = 2) -> list[Sample]:
    """RULER variable tracking: `chains` chains "VAR A = 12345." then "VAR B = VAR A." ... (`hops` links each).

    The statements of a chain appear in order at random depths, the chains interleaved. The question asks which
    variables are assigned the first chain's value; the answer lists its `hops + 1` names in assignment order.
    """
    if hops < 0 or chains < 1:
        raise ValueError(f"need hops >= 0 and chains >= 1; got hops={hops!r}, chains={chains!r}")
    text, rng = _text(text), random.Random(seed)
    out = []
    for _ in range(_count(n)):
        names = distinct_names(rng, chains * (hops + 1))
        values = distinct_numbers(rng, chains, 5)
        needles, asked = [], []
        for c in range(chains):
            chain = names[c * (hops + 1):(c + 1) * (hops + 1)]
            depths = sorted(rng.uniform(0.05, 0.95) for _ in chain)
            needles.append((depths[0], f" VAR {chain[0]} = {values[c]}. "))
            needles += [(d, f" VAR {b} = VAR {a}. ") for d, a, b in zip(depths[1:], chain[:-1], chain[1:], strict=True)]
            if c == 0:
                asked = (chain, depths)
        question = (f"\nQuestion: Find all variables that are assigned the value {values[0]} in the text above, in "
                    f"the order they are assigned. Answer: The variables assigned the value {values[0]} are")
        out.append(needle_prompt(tokenizer, text, length, rng, needles, question, asked[0], asked[1], VAR_INTRO))
    return out


def common_words(tokenizer, length: int, n: int = 1, seed: int = 0, text: str | None = None, top: int = 3
                 ) -> list[Sample]:
    """RULER common-words extraction: a list of words where `top` words appear many times (10, 8, 6, ... times)
    and the rest 1-3 times; the answer lists the `top` most common words, most frequent first.

    Words are drawn from `text` (default: the evaluation novels); the list replaces the haystack. Where the text
    has too few distinct words to fill `length` that way, fillers repeat up to R > 3 times and the common words
    R + 3, R + 5, ... times, so the most common words stay unambiguous.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1; got {top!r}")
    check_tokenizer(tokenizer)
    check_length(length)
    pool = sorted({w for w in re.findall(r"[a-z]+", _text(text).lower()) if 4 <= len(w) <= 12})
    rng = random.Random(seed)
    question = (f"\nQuestion: What are the {top} most common words in the list above, most frequent first? "
                f"Answer: The {top} most common words in the list are")
    out = []
    if len(pool) <= top:
        raise ValueError(f"the text has too few distinct words ({len(pool)}) for {top} common words")
    probe = pool[:: max(1, len(pool) // 200)]  # about 200 words: tokens per list entry
    per = len(ids(tokenizer, "\n".join(probe))) / len(probe)
    for _ in range(_count(n)):
        words = rng.sample(pool, len(pool))
        common = words[:top]
        budget = length - overhead(tokenizer, WORDS_INTRO, [], question, common)
        # fillers appear (R + 1) / 2 times on average; 3 unless the pool is too small for the list
        most = max(3, math.ceil(2 * 1.15 * (budget / per) / (len(pool) - top) - 1))
        while True:  # the estimate can fall short for one draw: allow more repetitions and build it again
            try:
                order = _word_list(tokenizer, common, iter(words[top:]), budget, rng, most)
                break
            except _TooFewWords:
                if most >= budget:
                    raise ValueError(f"the text has too few distinct words for a {budget}-token word list") from None
                most += 2
        out.append(labelled(tokenizer, WORDS_INTRO + "\n".join(order) + "\n" + question, common, ()))
    return out


class _TooFewWords(Exception):
    """The fillers ran out before the list was full."""


def _word_list(tok, common: list[str], fillers, budget: int, rng: random.Random, most: int = 3) -> list[str]:
    """Shuffled list: `common[i]` `most + 3 + 2 * (len(common) - 1 - i)` times, fillers 1 to `most` times each,
    filled to just under `budget` tokens (joined by newlines)."""
    order = [w for i, w in enumerate(common) for _ in range(most + 3 + 2 * (len(common) - 1 - i))]
    rng.shuffle(order)
    if len(ids(tok, "\n".join(order))) > budget:
        raise ValueError(f"length is too small for a list of {len(common)} common words")
    for _ in range(50):  # grow from below: each round adds ~90% of the words that still fit
        size = len(ids(tok, "\n".join(order)))
        per = size / len(order)  # tokens per entry
        if budget - size < 2 * per + 2:
            break
        for _ in range(max(1, int(0.9 * (budget - size) / per / ((most + 1) / 2)))):  # (most + 1) / 2 on average
            word = next(fillers, None)
            if word is None:
                raise _TooFewWords
            for _ in range(rng.randint(1, most)):
                order.insert(rng.randrange(len(order) + 1), word)
    while True:  # drop filler entries from the end (never a common word) until the list fits
        extra = len(ids(tok, "\n".join(order))) - budget
        if extra <= 0:
            return order
        cut = set([i for i in range(len(order) - 1, -1, -1) if order[i] not in common][:int(extra / per) + 1])
        order = [w for i, w in enumerate(order) if i not in cut]


TASKS = {"niah": niah, "passkey": passkey, "multikey": multikey_niah, "multivalue": multivalue,
         "multiquery": multiquery, "vartrack": variable_tracking, "commonwords": common_words}
DEPTH_TASKS = ("niah", "passkey")  # tasks whose needle sits at a chosen depth; the others place it at random


def make(task: str, tokenizer, length: int, *, depth: float | None = None, n: int = 1, seed: int = 0,
         text: str | None = None) -> list[Sample]:
    """`n` samples of `task` (a key of `TASKS`); `depth` only for `DEPTH_TASKS`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if task in DEPTH_TASKS:
        return TASKS[task](tokenizer, length, depth=0.5 if depth is None else depth, n=n, seed=seed, text=text)
    return TASKS[task](tokenizer, length, n=n, seed=seed, text=text)


def _magic(key: str, value: str) -> str:
    return f" One of the special magic numbers for {key} is: {value}. "


def _keys() -> list[str]:
    return [f"{a}-{b}" for a in ADJECTIVES for b in NOUNS]


def _text(text: str | None) -> str:
    return load_text(split="evaluation") if text is None else text


def _count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}")
    return n


def _check_depth(depth) -> None:
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 1:
        raise ValueError(f"depth must be a number in [0, 1] (0 = start of the haystack, 1 = end); got {depth!r}")
