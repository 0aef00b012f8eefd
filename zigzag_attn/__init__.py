"""zigzag-attn: layer-exclusive retrieval/streaming attention for HuggingFace transformers.

Flow: profile -> Scores -> solve -> Plan -> patch (runtime: attention kernels + bounded KV cache).
"""

from .model_info import describe
from .plan import ModelInfo, Plan
from .runtime import ZigzagCache, make_cache, patch, patched, plan_of, unpatch

__version__ = "0.1.0"
__all__ = ["ModelInfo", "Plan", "ZigzagCache", "describe", "make_cache", "patch", "patched", "plan_of", "unpatch"]
