"""Runtime: attention kernels, the bounded KV cache, and patching."""

from .cache import MixedLayer, SinkWindowLayer, ZigzagCache
from .patch import cache_of, make_cache, patch, patched, plan_of, unpatch
from .static_cache import RingLayer, StaticMixedLayer, ZigzagStaticCache

__all__ = ["MixedLayer", "RingLayer", "SinkWindowLayer", "StaticMixedLayer", "ZigzagCache", "ZigzagStaticCache",
           "cache_of", "make_cache", "patch", "patched", "plan_of", "unpatch"]
