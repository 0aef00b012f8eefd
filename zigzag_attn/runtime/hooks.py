"""The two decoder hooks of a patched model. They hold all of its patch state, so that state travels with it.

- `PlanHook` (forward pre-hook): the plan, the attention name registered for it and what that name maps to;
  before each call it supplies a zigzag cache and the call's token positions.
- `EndStep` (forward hook, also on errors): ends the call's step, so that a cache used outside a patched call
  (after `unpatch`, say) is refused instead of followed.

`copy.deepcopy` and pickle copy both hooks with the model. A copied hook registers its attention name again
where it is made, and the name is derived from everything the name runs, so the same name means the same
attention in every process. A name is unregistered when the last live hook using it is removed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import weakref

import torch
from transformers import AttentionInterface, DynamicCache, StaticCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from ..plan import Plan
from .attention import Dispatch
from .cache import StepRouting, ZigzagCache
from .static_cache import ZigzagStaticCache, new_tokens_valid
from .step import Step, logical_positions

_users: dict[str, weakref.WeakSet] = {}  # attention name -> the live hooks that use it


def cache_arg(forward) -> str:
    """The cache keyword of a forward: `cache` from transformers 5.2x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def unregister(name: str) -> None:
    """Remove an attention name (and its mask entry) from transformers' registries."""
    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)


def attention_name(plan: Plan, original: str, function, backends: tuple[str, ...]) -> str:
    """`zigzag-<hash>` of what the registered attention runs: the plan's layout, the original attention, backends."""
    key = json.dumps([plan.modes, plan.heads, plan.sink, plan.window, plan.kv_dtype, original,
                      getattr(function, "__module__", None), getattr(function, "__qualname__", repr(function)),
                      backends])
    return "zigzag-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class PlanHook:
    """Runs before each decoder forward: supplies a `ZigzagCache` and this call's token positions.

    original: the model's attention implementation before patching, `function` its attention function;
    backends: (streaming, retrieval, decode, fp8) as `patch` resolves them.
    """

    def __init__(self, plan: Plan, decoder, original: str, function, backends: tuple[str, ...]):
        self.plan, self.original, self.function, self.backends = plan, original, function, backends
        self.name = attention_name(plan, original, function, backends)
        params = inspect.signature(decoder.forward).parameters
        self.positional = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.cache_arg = cache_arg(decoder.forward)
        self.config = decoder.config
        self.register()

    def register(self) -> None:
        """Make `self.name` resolve to this plan's attention in this process."""
        if self.name not in AttentionInterface._global_mapping:
            AttentionInterface.register(self.name, Dispatch(self.plan, self.function, *self.backends))
            AttentionMaskInterface.register(self.name, ALL_MASK_ATTENTION_FUNCTIONS[self.original])
        _users.setdefault(self.name, weakref.WeakSet()).add(self)

    def release(self) -> None:
        """This hook is removed from its model: unregister the name if no other live hook uses it."""
        users = _users.get(self.name, weakref.WeakSet())
        users.discard(self)
        if not users:
            _users.pop(self.name, None)
            unregister(self.name)

    def __setstate__(self, state: dict) -> None:  # a deepcopy or an unpickled model: its name must resolve here
        self.__dict__.update(state)
        self.register()

    def __call__(self, module, args, kwargs):
        if self.config._attn_implementation != self.name:
            raise RuntimeError(f"the model's attention implementation was set to {self.config._attn_implementation!r} "
                               "after zigzag_attn.patch, so it no longer runs its plan: call "
                               "zigzag_attn.unpatch(model) first (then patch again to use a plan)")
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


class EndStep:
    """Runs after each decoder forward, also one that raised: the cache's step ends with the call."""

    def __init__(self, cache_arg: str):
        self.cache_arg = cache_arg

    def __call__(self, module, args, kwargs, output):
        cache = kwargs.get(self.cache_arg)
        if isinstance(cache, StepRouting):
            cache.step = None


def hooks_of(decoder) -> tuple[int, PlanHook, int] | None:
    """(pre-hook id, the `PlanHook`, forward-hook id) found on `decoder`, or None when it is not patched."""
    pre = [(i, h) for i, h in decoder._forward_pre_hooks.items() if isinstance(h, PlanHook)]
    if not pre:
        return None
    post = [i for i, h in decoder._forward_hooks.items() if isinstance(h, EndStep)]
    return pre[0][0], pre[0][1], post[0] if post else None


def add_hooks(decoder, hook: PlanHook) -> None:
    decoder.register_forward_pre_hook(hook, with_kwargs=True)
    decoder.register_forward_hook(EndStep(hook.cache_arg), with_kwargs=True, always_call=True)


def remove_hooks(decoder) -> PlanHook | None:
    """Take both hooks off `decoder` (an original or a copy alike); return the `PlanHook`, or None if none."""
    found = hooks_of(decoder)
    if found is None:
        return None
    pre_id, hook, post_id = found
    for hooks in (decoder._forward_pre_hooks, decoder._forward_pre_hooks_with_kwargs):
        hooks.pop(pre_id, None)
    for hooks in (decoder._forward_hooks, decoder._forward_hooks_with_kwargs, decoder._forward_hooks_always_called):
        hooks.pop(post_id, None)
    hook.release()
    return hook
