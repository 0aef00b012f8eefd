"""`ModelInfo`, the attention shape of a model (pure data, JSON in and out), and reading it off a transformers model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import get_layer_types_and_kwargs


def need(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """`value` if it is of `kind` (a bool is not an int here); else a TypeError naming `what`."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise TypeError(f"{what} must be {names}; got {type(value).__name__} {value!r:.60}")
    return value


@dataclass(frozen=True)
class ModelInfo:
    """The shape of the model a plan was made for; compared with the model at patch time."""

    model_type: str | None
    num_layers: int
    num_kv_heads: int
    head_dim: int
    name: str | None = None
    native_sliding: dict[int, int] = field(default_factory=dict)  # layer -> its own sliding window

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["native_sliding"] = {str(k): v for k, v in self.native_sliding.items()}
        return d

    @classmethod
    def from_json(cls, d: Any) -> ModelInfo:
        """Strict: every field of the right JSON type (TypeError or ValueError naming it otherwise)."""
        need(d, dict, "model")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"model has unknown fields {unknown}")
        for key in ("num_layers", "num_kv_heads", "head_dim"):
            if need(d[key], int, f"model.{key}") < 1:
                raise ValueError(f"model.{key} must be >= 1; got {d[key]}")
        for key in ("model_type", "name"):
            need(d.get(key), (str, type(None)), f"model.{key}")
        native = {}
        for k, v in need(d.get("native_sliding") or {}, dict, "model.native_sliding").items():
            if not k.isdigit():
                raise ValueError(f"model.native_sliding keys are layer numbers; got {k!r}")
            native[int(k)] = need(v, int, f"model.native_sliding[{k}]")
            if v < 1:
                raise ValueError(f"model.native_sliding[{k}] must be >= 1 (the layer's own window in tokens); got {v}")
        return cls(**{**d, "native_sliding": native})

    def mismatch(self, other: ModelInfo, this: str = "this model", native: bool = False) -> str | None:
        """Why what was made for this model does not fit `other`, called `this` (None when it may): the model type
        (where both record one), head_dim and, with `native`, the layers that use their own sliding window. The
        words go after "... was" / "... were"."""
        if self.model_type and other.model_type and self.model_type != other.model_type:
            return f"made for a {self.model_type!r} model but {this} is {other.model_type!r}"
        if self.head_dim != other.head_dim:
            return f"made for head_dim {self.head_dim} but {this} has {other.head_dim}"
        if native and set(self.native_sliding) != set(other.native_sliding):
            return (f"made for a model whose own sliding-window layers are {sorted(self.native_sliding)} but {this} "
                    f"has {sorted(other.native_sliding) or 'none'}")
        return None


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
