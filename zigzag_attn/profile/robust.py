"""`method="robust"`: measured greedy elimination with a worst-task objective, checked on fresh prompts.

1. Full-attention answer loss per task group (`data.calibration`: pass keys, ledgers, box chains; fiction and code).
2. Solo ablation: each choosable layer made streaming alone; its score is the worst group's rise in loss.
3. Greedy elimination from full attention down to `keep` retrieval layers: each round makes streaming the layer
   (among the `candidates` with the lowest ablation score) whose removal raises the worst group's loss least.
   The elimination order ranks the layers, so `solve` at any size gives the nested greedy plan.
4. Validation: the greedy ranking and the plain ablation ranking are compared on fresh prompts (`valid`, other
   seeds and lengths) at the sizes of SIZES down to `keep`, and at `keep`; the one with the lower mean worst-group
   loss becomes the scores. A caller that needs one plan sets `keep` to its ratio: the search stops there.
Steps 1 to 3 are one search (`search.from_full_attention`: the `WorstRise` objective, the ablation its first
round). The worst group, not the mean, is the objective, so a layer one task needs is not traded for small gains on
the others; docs/results.md measures how this generalizes to genres and wordings calibration never saw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import torch

from ..data.passkey import Sample
from ..model_info import describe
from ..plan import RETRIEVAL, STREAMING
from .search import WorstRise, from_full_attention, layer_plans
from .trials import Trials

SIZES = (0.5, 1 / 3, 0.25)  # retrieval-layer ratios at which validation compares the rankings


def robust_scores(model, groups: Mapping[str, list[Sample]], valid: Mapping[str, list[Sample]] | None = None, *,
                  sink: int, window: int, keep: float = 0.25, candidates: int | None = 6, batch_size: int = 1,
                  progress: bool = True) -> tuple[torch.Tensor, dict]:
    """`[num_layers]` layer scores (higher = keep retrieval longer) and metadata; see the module docstring.

    groups / valid: `{task: samples}` for profiling and for validation (no validation when None).
    keep: greedy stops at this share of the choosable layers; below it layers are ordered by ablation.
    candidates: layers tried per greedy round (None: all remaining).
    """
    if not groups or any(not s for s in groups.values()):
        raise ValueError("robust profiling needs at least one non-empty group of calibration samples")
    if not 0 <= keep <= 1:
        raise ValueError(f"keep must be in [0, 1]; got {keep!r}")
    if candidates is not None and candidates < 1:
        raise ValueError(f"candidates must be >= 1 or None; got {candidates!r}")
    info = describe(model)
    choosable = [i for i in range(info.num_layers) if i not in info.native_sliding]
    start = time.perf_counter()
    # its held inputs are freed before validation runs
    full, found = from_full_attention(model, groups, keep=keep, sink=sink, window=window, candidates=candidates,
                                      batch_size=batch_size, progress=progress)
    base = {g: m.loss for g, m in full.items()}
    ablation, order = found.prior, [layer for layer, _ in found.history]
    greedy = _rank(order, [i for i in choosable if i not in order], ablation, info.num_layers)
    ablation_rank = _rank([], choosable, ablation, info.num_layers)
    meta = {"groups": {g: len(s) for g, s in groups.items()}, "full_losses": base, "keep": keep,
            "candidates": candidates, "ablation": [round(float(x), 5) for x in ablation],
            "greedy": [{"streaming": layer, "worst_loss_rise": round(v, 5)} for layer, v in found.history]}
    chosen, name = greedy, "greedy"
    if valid:
        scores = {"greedy": greedy, "ablation": ablation_rank}
        # the two rankings often keep the same layers at a size (and two sizes may round alike): measured once
        fresh = Trials(model, valid, layer_plans(info, sink, window), batch_size=batch_size)
        fresh.objective = WorstRise({g: m.loss for g, m in fresh.measure([RETRIEVAL] * info.num_layers).items()})
        table = {}
        sizes = [r for r in SIZES if r >= keep - 1e-9]  # where the greedy ranking was searched, and `keep`
        if not sizes or abs(sizes[-1] - keep) > 1e-9:
            sizes.append(keep)
        for key, s in scores.items():
            rises = []
            for r in sizes:
                k = math.floor(r * len(choosable) + 0.5)
                top = set(sorted(choosable, key=lambda i: (-float(s[i]), i))[:k])
                rises.append(fresh.value([RETRIEVAL if i in top or i not in choosable else STREAMING
                                          for i in range(info.num_layers)]))
            table[key] = [round(x, 5) for x in rises]
        name = min(table, key=lambda k: sum(table[k]))  # greedy wins ties (listed first)
        chosen = scores[name]
        meta["validation"] = {"groups": {g: len(s) for g, s in valid.items()}, "sizes": sizes,
                              "worst_loss_rise": table, "chosen": name}
    meta.update(ranking=name, seconds=round(time.perf_counter() - start, 1))
    return chosen, meta


def _rank(order: Sequence[int], rest: Sequence[int], ablation: torch.Tensor, num_layers: int) -> torch.Tensor:
    """Scores from an elimination order: the first eliminated scores 1, the next 2, ...; the layers never
    eliminated (`rest`) score above all of them, ordered by ablation. Native sliding layers score 0."""
    scores = torch.zeros(num_layers)
    for r, layer in enumerate(order):
        scores[layer] = r + 1
    for r, layer in enumerate(sorted(rest, key=lambda i: (float(ablation[i]), i))):
        scores[layer] = len(order) + 1 + r
    return scores
