"""Runtime: attention kernels, the bounded KV cache, and patching."""

from .cache import MixedLayer, SinkWindowLayer, ZigzagCache
from .patch import cache_of, make_cache, patch, patched, plan_of, unpatch

__all__ = ["MixedLayer", "SinkWindowLayer", "ZigzagCache",
           "cache_of", "make_cache", "patch", "patched", "plan_of", "unpatch"]
