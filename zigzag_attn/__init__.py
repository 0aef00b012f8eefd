"""zigzag-attn: layer-exclusive retrieval/streaming attention for HuggingFace transformers.

Flow: profile -> Scores -> solve -> Plan -> patch (runtime: attention kernels + bounded KV cache).
"""

from .choose import candidates, choose
from .cost import CostModel
from .model_info import describe
from .plan import ModelInfo, Plan
from .profile import measure, profile, refine
from .runtime import ZigzagCache, ZigzagStaticCache, cache_of, make_cache, patch, patched, plan_of, unpatch
from .scores import Scores, split_layer_scores
from .solve import solve, solve_heads
from .solve_hybrid import solve_hybrid

__version__ = "0.1.0"
__all__ = ["CostModel", "ModelInfo", "Plan", "Scores", "ZigzagCache", "ZigzagStaticCache", "cache_of", "candidates",
           "choose", "describe",
           "make_cache", "measure", "patch", "patched", "plan_of", "profile", "refine", "solve", "solve_heads",
           "solve_hybrid", "split_layer_scores", "unpatch"]
