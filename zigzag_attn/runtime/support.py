"""What a plan's streaming layers need from a model's architecture, checked at `patch` time.

Each refusal is one sentence naming the reason; plans with only retrieval layers run the model's own
attention and are never refused here.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

from transformers.cache_utils import get_layer_types_and_kwargs

from ..plan import RETRIEVAL, Plan


def check_streaming_support(model, decoder, plan: Plan) -> None:
    """Raise ValueError if a layer the plan streams (all or some heads) cannot be a sink + window layer."""
    streamed = [i for i, mode in enumerate(plan.modes) if mode != RETRIEVAL]
    if not streamed:
        return
    config = model.config.get_text_config(decoder=True)
    kind = f"{type(model).__name__} ({config.model_type})"
    types = get_layer_types_and_kwargs(config)[0]
    other = [i for i in streamed if i < len(types) and types[i] != "full_attention"]
    if other:
        raise ValueError(f"layers {other} of {kind} are {types[other[0]]!r} layers, not softmax attention over a "
                         "KV cache, so they cannot stream: set them to 'retrieval' in the plan")
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise ValueError(f"{kind} soft-caps its attention logits (attn_logit_softcapping="
                         f"{config.attn_logit_softcapping}), which streaming layers do not support: use a plan "
                         "whose layers are all 'retrieval'")
    if not all(passes_kwargs_to_attention(decoder.layers[i]) for i in streamed):
        raise ValueError(f"the decoder layers of {kind} do not pass keyword arguments on to their attention, so "
                         "streaming layers cannot get their token positions: use a plan whose layers are all "
                         "'retrieval'")


def passes_kwargs_to_attention(layer) -> bool:
    """False when the layer's forward calls its attention module (a child with a `layer_idx`) without `**kwargs`.

    True when every such call passes `**...`, and when the source cannot be read or no call is found.
    """
    names = {name for name, child in layer.named_children() if hasattr(child, "layer_idx")}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(type(layer).forward)))
    except (OSError, TypeError, SyntaxError):
        return True
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "self" and node.func.attr in names]
    return all(any(k.arg is None for k in call.keywords) for call in calls)
