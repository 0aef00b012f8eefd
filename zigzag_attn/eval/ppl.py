"""Perplexity over long documents, fed in chunks with the returned cache passed back, so memory stays bounded.

Patched with a plan, the model keeps its own bounded `ZigzagCache` (streaming layers hold sink + window - 1
tokens); unpatched, it grows a plain `DynamicCache`. Either way the logits held at once are one chunk's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import texts
from ..model_info import input_device
from ..plan import Plan
from ..runtime import cache_of, patched
from ..runtime.patch import cache_arg


@dataclass(frozen=True)
class Perplexity:
    ppl: float  # exp(nll)
    nll: float  # mean negative log-likelihood per predicted token
    tokens: int  # predicted tokens (each document's length minus one, after truncation)
    documents: int
    cache_tokens: list[int]  # tokens each layer's cache held after the longest document


@torch.no_grad()
def ppl(model, tokenizer, plan: Plan | None, texts: str | Sequence[str], *, chunk: int = 512, max_tokens: int = 8192,
        progress: bool = False) -> Perplexity:
    """Perplexity of `model` (patched with `plan` for the call, if given) over `texts`, each its own document.

    Each document is tokenized (with the tokenizer's special tokens), cut to `max_tokens`, and fed `chunk` tokens
    at a time; the cache a forward returns (`zz.cache_of`) goes into the next one. The logit of a chunk's last
    token scores the next chunk's first, so the result does not depend on `chunk` (up to float rounding).
    """
    for name, v, lo in (("chunk", chunk, 1), ("max_tokens", max_tokens, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    docs = [texts] if isinstance(texts, str) else list(texts)
    if not docs:
        raise ValueError("ppl needs at least one text")
    device = input_device(model)
    cache_kw = cache_arg(model.forward)
    total, count, longest, cache_tokens = 0.0, 0, -1, []
    with patched(model, plan) if plan is not None else contextlib.nullcontext():
        for doc in tqdm(docs, desc="perplexity", disable=not progress):
            ids = torch.tensor(tokenizer(doc).input_ids[:max_tokens], dtype=torch.long, device=device)
            if len(ids) < 2:
                continue
            cache, carry = None, None  # carry: `(vocab,)` logit of the previous chunk's last token
            for start in range(0, len(ids), chunk):
                x = ids[start:start + chunk]
                out = model(input_ids=x[None], use_cache=True, **{cache_kw: cache})
                cache = cache_of(out)
                logits = out.logits[0].float()  # (len(x), vocab)
                pred = logits[:-1] if carry is None else torch.cat([carry[None], logits[:-1]])
                target = x[1:] if carry is None else x
                total += float(torch.nn.functional.cross_entropy(pred, target, reduction="sum"))
                count += len(target)
                carry = logits[-1]
            if len(ids) > longest:
                longest, cache_tokens = len(ids), _stored(cache)
    if count == 0:
        raise ValueError("the texts hold no document of two or more tokens")
    nll = total / count
    return Perplexity(math.exp(nll), nll, count, len(docs), cache_tokens)


def documents(source: str | Path | Iterable[str | Path] | None = None, *, split: str = "evaluation") -> list[str]:
    """Texts for `ppl`: each shipped novel of `split` (held-out by default) or each of the user's files."""
    return texts.documents(source, split=split)


def _stored(cache) -> list[int]:
    if cache is None:
        return []
    if hasattr(cache, "stored_tokens"):
        return list(cache.stored_tokens())
    return [layer.get_seq_length() for layer in cache.layers]
