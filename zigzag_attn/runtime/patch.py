"""`patch` / `unpatch` / `patched`: attach a `Plan` to a transformers model through its extension points.

- attention: a per-model `AttentionInterface` entry (`Dispatch`) and a matching `AttentionMaskInterface`
  entry that builds the model's usual masks for its full layers;
- KV cache: a forward pre-hook on the decoder swaps in a `ZigzagCache` and passes the call's
  token positions (`zigzag_step`) down to the attention function.
Nothing is patched at import time and no state is stored on the model's modules.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
import weakref
from dataclasses import dataclass

import torch
import transformers
from packaging.version import Version
from transformers import AttentionInterface, DynamicCache, StaticCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..model_info import describe
from ..plan import Plan
from .attention import DECODE_BACKENDS, RETRIEVAL_BACKENDS, STREAMING_BACKENDS, Dispatch
from .cache import ZigzagCache
from .static_cache import ZigzagStaticCache, new_tokens_valid
from .step import Step, logical_positions

MIN_TRANSFORMERS, MAX_TRANSFORMERS = Version("5.17"), Version("6")
_names = itertools.count()


@dataclass
class _Patch:
    name: str
    original: str
    plan: Plan
    hook: torch.utils.hooks.RemovableHandle


_patches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Patch


def check_transformers_version(version: str | None = None) -> None:
    v = Version(version or transformers.__version__)
    if not (MIN_TRANSFORMERS <= v < MAX_TRANSFORMERS):
        raise RuntimeError(f"zigzag-attn supports transformers >= {MIN_TRANSFORMERS} and < {MAX_TRANSFORMERS}; "
                           f"this environment has {v}: pip install 'transformers>=5.17,<6'")


def patch(model, plan: Plan, *, streaming_backend: str = "auto", retrieval_backend: str = "auto",
          decode_backend: str = "auto"):
    """Make `model` follow `plan` in place and return it. Re-patching replaces the previous plan.

    streaming_backend: "auto" (FlexAttention for CUDA prefill, SDPA otherwise), "sdpa" or "flex".
    retrieval_backend: "auto" or "native" (the model's own attention), or "flash" (flash-attn; never chosen by
    "auto", as it has not been run on a GPU against the SDPA path).
    decode_backend (one new token per row, every layer): "auto" (SDPA with grouped heads on CUDA, split-key
    torch matmuls elsewhere), "sdpa" or "split".
    """
    check_transformers_version()
    if not isinstance(plan, Plan):
        raise TypeError(f"patch needs a zigzag_attn.Plan; got {type(plan).__name__}")
    if streaming_backend not in STREAMING_BACKENDS:
        raise ValueError(f"streaming_backend must be one of {STREAMING_BACKENDS}; got {streaming_backend!r}")
    if retrieval_backend not in RETRIEVAL_BACKENDS:
        raise ValueError(f"retrieval_backend must be one of {RETRIEVAL_BACKENDS}; got {retrieval_backend!r}")
    if decode_backend not in DECODE_BACKENDS:
        raise ValueError(f"decode_backend must be one of {DECODE_BACKENDS}; got {decode_backend!r}")
    if retrieval_backend == "flash" and not _flash_ok():
        raise ImportError("retrieval_backend='flash' needs the flash-attn package: pip install 'zigzag-attn[flash]'")
    plan.check_model(describe(model))
    unpatch(model)
    decoder = _decoder(model)
    original = model.config._attn_implementation
    name = f"zigzag-{next(_names)}"
    AttentionInterface.register(name, Dispatch(plan, _attention_function(original, decoder), streaming_backend,
                                               retrieval_backend, decode_backend))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:
        _unregister(name)
        raise RuntimeError(f"{type(model).__name__} does not allow changing its attention implementation, "
                           "so zigzag-attn cannot patch it")
    hook = decoder.register_forward_pre_hook(_PreHook(plan, decoder), with_kwargs=True)
    _patches[model] = _Patch(name, original, plan, hook)
    return model


def unpatch(model):
    """Restore the model's own attention; outputs are bit-identical to before `patch`. Returns the model."""
    p = _patches.pop(model, None)
    if p is not None:
        p.hook.remove()
        model.set_attn_implementation(p.original)
        _unregister(p.name)
    return model


@contextlib.contextmanager
def patched(model, plan: Plan, **kwargs):
    """`with patched(model, plan): ...` patches for the block only."""
    patch(model, plan, **kwargs)
    try:
        yield model
    finally:
        unpatch(model)


def plan_of(model) -> Plan | None:
    """The plan a model is patched with, or None."""
    p = _patches.get(model)
    return p.plan if p else None


def make_cache(model, max_cache_len: int | None = None) -> ZigzagCache | ZigzagStaticCache:
    """An empty cache for a patched model, for users who manage caches themselves.

    With `max_cache_len`, a static cache (for `torch.compile` / CUDA graphs) holding up to that many tokens.
    """
    p = _patches.get(model)
    if p is None:
        raise ValueError("model is not patched: call zigzag_attn.patch(model, plan) first")
    if max_cache_len is None:
        return ZigzagCache(_decoder(model).config, p.plan)
    if not isinstance(max_cache_len, int) or max_cache_len < 1:
        raise ValueError(f"max_cache_len must be a positive int; got {max_cache_len!r}")
    return ZigzagStaticCache(_decoder(model).config, p.plan, max_cache_len)


def cache_of(output):
    """The cache a forward or generate returned (`.cache` from transformers 5.2x, `.past_key_values` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def cache_arg(forward) -> str:
    """The cache keyword of a forward: `cache` from transformers 5.2x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _unregister(name: str) -> None:
    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)


def _flash_ok() -> bool:
    from .kernels import flash_attn_installed

    return flash_attn_installed()


def _decoder(model):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    if not hasattr(decoder, "layers"):
        raise TypeError(f"cannot find the decoder layers of {type(model).__name__}")
    return decoder


def _attention_function(name: str, decoder):
    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    if name == "eager":  # each modeling file has its own eager function
        attn = next(m for m in decoder.modules() if hasattr(m, "layer_idx") and hasattr(m, "o_proj"))
        return importlib.import_module(type(attn).__module__).eager_attention_forward
    raise ValueError(f"unknown attention implementation {name!r}")


class _PreHook:
    """Runs before each decoder forward: supplies a `ZigzagCache` and this call's token positions."""

    def __init__(self, plan: Plan, decoder):
        self.plan = plan
        params = inspect.signature(decoder.forward).parameters
        self.positional = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.cache_arg = cache_arg(decoder.forward)
        self.config = decoder.config

    def __call__(self, module, args, kwargs):
        kwargs = {**dict(zip(self.positional, args, strict=False)), **kwargs}
        cache = kwargs.pop("cache", None)
        legacy = kwargs.pop("past_key_values", None)
        if cache is not None and legacy is not None:
            raise ValueError("pass either cache= or past_key_values=, not both")
        cache = cache if cache is not None else legacy
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if x is None:
            raise ValueError("a patched model needs input_ids or inputs_embeds")
        batch, q_len = x.shape[:2]
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(self.config, "use_cache", True)
        cache = self._cache(cache, use_cache)
        past = cache.get_seq_length() if cache is not None else 0
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            mask = mask.to(x.device)
        if isinstance(cache, ZigzagStaticCache):  # no host syncs: this runs inside compiled decode steps
            kwargs[self.cache_arg] = cache
            kwargs["zigzag_step"] = cache.begin(new_tokens_valid(mask, q_len, past), batch, q_len, x.device)
            return (), kwargs
        query_pos = logical_positions(mask, batch, past, q_len, x.device)
        aligned = mask is None or bool(mask.all())
        if cache is None:
            step = Step(query_pos, query_pos, self.plan.sink, self.plan.window, aligned)
        else:
            step = cache.begin(query_pos, aligned)
        kwargs[self.cache_arg] = cache
        kwargs["zigzag_step"] = step
        return (), kwargs

    def _cache(self, cache, use_cache: bool):
        if cache is None:
            return ZigzagCache(self.config, self.plan) if use_cache else None
        if isinstance(cache, (ZigzagCache, ZigzagStaticCache)):
            if cache.plan is not self.plan and cache.plan != self.plan:
                raise ValueError("this cache was made for another plan; start a new one (or pass none)")
            return cache
        if type(cache) is DynamicCache and cache.get_seq_length() == 0:
            return ZigzagCache(self.config, self.plan)  # e.g. the empty cache generate() makes
        fresh = not any(layer.is_initialized for layer in getattr(cache, "layers", ()))
        if type(cache) is StaticCache and fresh:  # generate(cache_implementation="static")
            return ZigzagStaticCache(self.config, self.plan, max(layer.max_cache_len for layer in cache.layers))
        raise ValueError(f"a patched model keeps its own cache; got a {type(cache).__name__} "
                         f"{'' if fresh else 'with tokens in it'}. Pass no cache, or one from "
                         "zigzag_attn.make_cache(model[, max_cache_len])")


