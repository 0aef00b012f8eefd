"""`patch` / `unpatch` / `patched`: attach a `Plan` to a transformers model through its extension points.

- attention: an `AttentionInterface` entry (`Dispatch`) named after what it runs, and a matching
  `AttentionMaskInterface` entry that builds the model's usual masks for its full layers;
- KV cache: a forward pre-hook on the decoder swaps in a `ZigzagCache` and passes the call's
  token positions (`zigzag_step`) down to the attention function; a forward hook ends the call's step.
Nothing is patched at import time. The patch state lives in the decoder's two hooks (hooks.py), so it
travels with the model through `copy.deepcopy` and pickle, and `unpatch` works on such copies too.
"""

from __future__ import annotations

import contextlib
import importlib

import torch
import transformers
from packaging.version import Version
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..model_info import describe
from ..plan import Plan
from .attention import DECODE_BACKENDS, FP8_BACKENDS, RETRIEVAL_BACKENDS, STREAMING_BACKENDS, resolve_fp8_backend
from .cache import ZigzagCache
from .hooks import PlanHook, add_hooks, cache_arg, hooks_of, remove_hooks
from .quant import fp8_problem
from .static_cache import ZigzagStaticCache
from .support import check_streaming_support

__all__ = ["cache_arg", "cache_of", "make_cache", "patch", "patched", "plan_of", "unpatch"]
MIN_TRANSFORMERS, MAX_TRANSFORMERS = Version("5.17"), Version("6")


def check_transformers_version(version: str | None = None) -> None:
    v = Version(version or transformers.__version__)
    if not (MIN_TRANSFORMERS <= v < MAX_TRANSFORMERS):
        raise RuntimeError(f"zigzag-attn supports transformers >= {MIN_TRANSFORMERS} and < {MAX_TRANSFORMERS}; "
                           f"this environment has {v}: pip install 'transformers>=5.17,<6'")


def patch(model, plan: Plan, *, streaming_backend: str = "auto", retrieval_backend: str = "auto",
          decode_backend: str = "auto", fp8_backend: str = "auto"):
    """Make `model` follow `plan` in place and return it. Re-patching replaces the previous plan.

    streaming_backend: "auto" (FlexAttention for CUDA prefill, SDPA otherwise), "sdpa" or "flex".
    retrieval_backend: "auto" or "native" (the model's own attention), or "flash" (flash-attn; never chosen by
    "auto", as it has not been run on a GPU against the SDPA path).
    decode_backend (one new token per row, every layer): "auto" (SDPA with grouped heads on CUDA, split-key
    torch matmuls elsewhere), "sdpa" or "split".
    fp8_backend (plans with kv_dtype "fp8"): how one-token attention reads the FP8 retrieval KV. "triton" (a fused
    kernel reading float8 directly; CUDA, bfloat16/float16 models), "dequantize" (a 16-bit copy, then the decode
    backend) or "auto" (the kernel on the GPUs of `attention.FP8_KERNEL_ARCHS`, none yet: "dequantize").
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
    if fp8_backend not in FP8_BACKENDS:
        raise ValueError(f"fp8_backend must be one of {FP8_BACKENDS}; got {fp8_backend!r}")
    if retrieval_backend == "flash" and not _flash_ok():
        raise ImportError("retrieval_backend='flash' needs the flash-attn package: pip install 'zigzag-attn[flash]'")
    info = describe(model)
    plan.check_model(info)
    decoder = _decoder(model)
    fp8 = _fp8_backend(model, plan, fp8_backend, info.head_dim)
    check_streaming_support(model, decoder, plan)
    unpatch(model)
    original = model.config._attn_implementation
    hook = PlanHook(plan, decoder, original, _attention_function(original, decoder),
                    (streaming_backend, retrieval_backend, decode_backend, fp8))
    model.set_attn_implementation(hook.name)
    if model.config._attn_implementation != hook.name:
        hook.release()
        raise RuntimeError(f"{type(model).__name__} does not allow changing its attention implementation, "
                           "so zigzag-attn cannot patch it")
    add_hooks(decoder, hook)
    return model


def unpatch(model):
    """Restore the model's own attention; outputs are bit-identical to before `patch`. Returns the model.

    Works on a copy of a patched model (`copy.deepcopy`, pickle) as on the original.
    """
    decoder = _decoder_or_none(model)
    hook = remove_hooks(decoder) if decoder is not None else None
    if hook is not None:
        model.set_attn_implementation(hook.original)
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
    decoder = _decoder_or_none(model)
    found = hooks_of(decoder) if decoder is not None else None
    return found[1].plan if found else None


def make_cache(model, max_cache_len: int | None = None) -> ZigzagCache | ZigzagStaticCache:
    """An empty cache for a patched model, for users who manage caches themselves.

    With `max_cache_len`, a static cache (for `torch.compile` / CUDA graphs) holding up to that many tokens.
    """
    plan = plan_of(model)
    if plan is None:
        raise ValueError("model is not patched: call zigzag_attn.patch(model, plan) first")
    if max_cache_len is None:
        return ZigzagCache(_decoder(model).config, plan)
    if not isinstance(max_cache_len, int) or max_cache_len < 1:
        raise ValueError(f"max_cache_len must be a positive int; got {max_cache_len!r}")
    return ZigzagStaticCache(_decoder(model).config, plan, max_cache_len)


def cache_of(output):
    """The cache a forward or generate returned (`.cache` from transformers 5.2x, `.past_key_values` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _fp8_backend(model, plan: Plan, backend: str, head_dim: int) -> str:
    """The resolved FP8 backend; ValueError (one sentence) when the plan stores FP8 KV where that cannot work."""
    if plan.kv_dtype != "fp8":
        return "dequantize"
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    if not dtype.is_floating_point:
        raise ValueError(f"a plan with FP8 retrieval KV needs a floating-point model; this one is {dtype}")
    why = fp8_problem(device)
    if why:
        raise ValueError(f"this plan stores retrieval KV in FP8, but {why}")
    return resolve_fp8_backend(backend, plan, device, dtype, head_dim)


def _flash_ok() -> bool:
    from .kernels import flash_attn_installed

    return flash_attn_installed()


def _decoder(model):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    if not hasattr(decoder, "layers"):
        raise TypeError(f"cannot find the decoder layers of {type(model).__name__}")
    return decoder


def _decoder_or_none(model):
    """The decoder, or None for a model zigzag-attn could never have patched."""
    try:
        return _decoder(model)
    except TypeError:
        return None


def _attention_function(name: str, decoder):
    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    if name == "eager":  # each modeling file has its own eager function
        attn = next(m for m in decoder.modules() if hasattr(m, "layer_idx") and hasattr(m, "o_proj"))
        return importlib.import_module(type(attn).__module__).eager_attention_forward
    raise ValueError(f"unknown attention implementation {name!r}")
