"""`method="attention"`: training-free layer scores by ablation.

Each choosable layer in turn is made streaming alone; its score is how much that raises the answer-token loss on
the calibration samples (`measure`). One forward per layer per batch, each from its layer on (`suffix.Suffix`:
the layers before it are full attention's, kept from one whole forward); no gradients.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data.passkey import Sample
from ..model_info import describe
from ..plan import RETRIEVAL, STREAMING, Plan
from .measure import measure
from .suffix import Suffix, usable


def ablation_scores(model, samples: list[Sample], *, sink: int, window: int, batch_size: int = 1,
                    progress: bool = True) -> tuple[torch.Tensor, dict]:
    """`[num_layers]` loss increase per layer made streaming alone (0 for native sliding layers), and metadata."""
    info = describe(model)
    scores = torch.zeros(info.num_layers)
    layers = [i for i in range(info.num_layers) if i not in info.native_sliding]
    run = Suffix(model, samples, batch_size) if usable(model, samples, len(layers)) else None
    # layers before i compute what full attention computes: with `run`, a trial runs layers i.. only
    base = run.base(None, layers) if run else measure(model, samples, batch_size=batch_size)
    for i in tqdm(layers, desc="ablating layers", disable=not progress):
        modes = [STREAMING if j == i else RETRIEVAL for j in range(info.num_layers)]
        plan = Plan.from_layers(modes, sink=sink, window=window, model=info)
        loss = run.trial(plan, i).loss if run else measure(model, samples, plan, batch_size=batch_size).loss
        scores[i] = loss - base.loss
    return scores, {"full_loss": base.loss, "full_accuracy": base.accuracy, "prefix_reuse": run is not None}
