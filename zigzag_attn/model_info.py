"""Read a transformers model's attention shape into a `ModelInfo`."""

from __future__ import annotations

import torch
from transformers.cache_utils import get_layer_types_and_kwargs

from .plan import ModelInfo

NATIVE_LOCAL = ("sliding_attention", "chunked_attention")


def describe(model) -> ModelInfo:
    """Layers, KV heads, head_dim and the model's own sliding-window layers."""
    return config_info(model.config, type(model).__name__)


def config_info(model_config, owner: str | None = None) -> ModelInfo:
    """`describe` from a model's config alone (e.g. `AutoConfig.from_pretrained`), before any weights load."""
    config = model_config.get_text_config(decoder=True)
    if getattr(config, "num_attention_heads", None) is None:
        raise ValueError(f"{owner or 'the model'} ({config.model_type}) has no attention heads (it is not a "
                         "transformer decoder), so zigzag-attn has no attention layers to work on")
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    types = get_layer_types_and_kwargs(config)[0]
    window = getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None)
    native = {i: int(window) for i, t in enumerate(types[:layers]) if t in NATIVE_LOCAL}
    return ModelInfo(model_type=config.model_type, num_layers=layers, num_kv_heads=kv_heads, head_dim=head_dim,
                     name=getattr(model_config, "name_or_path", None) or None, native_sliding=native)


def input_device(model) -> torch.device:
    """Where a model's input ids must go: where its input embeddings run."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model
    return execution_device(embed)


def execution_device(module) -> torch.device:
    """Where `module` runs: accelerate's hook execution device when dispatched/offloaded, else its weights' device."""
    for m in module.modules():
        hook = getattr(m, "_hf_hook", None)
        for h in getattr(hook, "hooks", [hook]):
            if getattr(h, "execution_device", None) is not None:
                return torch.device(h.execution_device)
    return next(module.parameters()).device
