"""`method="attention"`: training-free layer scores by ablation.

Each choosable layer in turn is made streaming alone; its score is how much that raises the answer-token loss on
the calibration samples (`measure`): the first round of the greedy search (`search.from_full_attention`) with
nothing eliminated after it. Where memory allows, full attention's inputs at every layer are held as its loss
is measured and each trial runs from its layer on; no gradients.
"""

from __future__ import annotations

import torch

from ..data.passkey import Sample
from .search import from_full_attention


def ablation_scores(model, samples: list[Sample], *, sink: int, window: int, batch_size: int = 1,
                    progress: bool = True) -> tuple[torch.Tensor, dict]:
    """`[num_layers]` loss increase per layer made streaming alone (0 for native sliding layers), and metadata."""
    full, found = from_full_attention(model, {"samples": samples}, keep=1.0, sink=sink, window=window,
                                      batch_size=batch_size, progress=progress)
    base = full["samples"]
    return found.prior, {"full_loss": base.loss, "full_accuracy": base.accuracy, "prefix_reuse": found.reused}
