"""`method="attention"`: training-free layer scores by ablation.

Each choosable layer in turn is made streaming alone; its score is how much that raises the answer-token loss on
the calibration samples (`measure`): the first round of the greedy search (`search.Search`, `prior="ablation"`)
with nothing eliminated after it. Where memory allows, full attention's inputs at every layer are held as its loss
is measured and each trial runs from its layer on; no gradients.
"""

from __future__ import annotations

import torch

from ..data.passkey import Sample
from ..model_info import describe
from ..plan import RETRIEVAL
from .search import Search, WorstRise


def ablation_scores(model, samples: list[Sample], *, sink: int, window: int, batch_size: int = 1,
                    progress: bool = True) -> tuple[torch.Tensor, dict]:
    """`[num_layers]` loss increase per layer made streaming alone (0 for native sliding layers), and metadata."""
    info = describe(model)
    layers = [i for i in range(info.num_layers) if i not in info.native_sliding]
    search = Search(model, {"samples": samples}, [RETRIEVAL] * info.num_layers, layers, len(layers), sink=sink,
                    window=window, prior="ablation", batch_size=batch_size)
    base = search.measure()["samples"]
    found = search.run(WorstRise({"samples": base.loss}), progress=progress)
    return found.prior, {"full_loss": base.loss, "full_accuracy": base.accuracy, "prefix_reuse": found.reused}
