"""The one greedy search behind the measured profiles: eliminate retrieval layers one at a time by an objective.

`Search(model, groups, modes, kept, stop, ...)` starts from the layer modes `modes` with the retrieval layers `kept`
choosable and, while more than `stop` remain, makes streaming the one whose trial plan (that layer streaming on top
of the plan so far) has the lowest objective value, the first of equal values. `candidates` limits each round to
that many layers with the lowest prior scores (`prior`), trading search for time. With `prior="ablation"` the
search first measures every layer of `kept` streaming alone on top of `modes` (the solo ablation, from full
attention); those values are the prior, and the first greedy round is already measured. `from_full_attention` is
that search by the worst group's rise: the ablation (stopping at once) and `robust`'s greedy.

The objective maps a plan's loss on each group to one number, lower is better:
  * `MeanLoss()`     - the mean answer loss over the groups (`refine`: one group, its loss);
  * `WorstRise(base)` - the worst group's rise over `base` ({group: loss}, the start plan's: `Search.measure()`);
                       `robust` (several groups) and the ablation (one group: its rise).
Measuring is `trials.Trials`: each plan once, from held inputs where memory allows (`prefix_cache.PrefixCache`),
whole forwards (over model copies, `replicas`) where not; a trial that can no longer be chosen is cut short when the
objective is `bounded`. None of this changes a choice or a value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..data.passkey import Sample
from ..model_info import describe
from ..plan import RETRIEVAL, STREAMING, Plan
from .measure import Measurement
from .prefix_cache import usable
from .trials import Trials

AHEAD = 6  # layers at which each ablation trial that may become a greedy candidate holds its inputs, memory allowing


class MeanLoss:
    """The mean answer loss over the groups. A mean over some groups bounds nothing: no trial is cut short."""

    name, bounded = "loss", False

    def __call__(self, losses: Mapping[str, float]) -> float:
        return sum(losses.values()) / len(losses)


@dataclass(frozen=True)
class WorstRise:
    """The worst group's rise in loss over `base` ({group: loss}). More groups can only raise it (`bounded`)."""

    base: Mapping[str, float]
    name, bounded = "rise", True

    def __call__(self, losses: Mapping[str, float]) -> float:
        return max(loss - self.base[g] for g, loss in losses.items())


@dataclass
class Found:
    """What a search found: `history` [(layer made streaming, its trial's value)] per round; `prior` `[num_layers]`
    (the ablation's values with `prior="ablation"`, 0 for layers not in `kept`); `reused`: held inputs were used."""

    history: list[tuple[int, float]] = field(default_factory=list)
    prior: torch.Tensor | None = None
    reused: bool = False


def from_full_attention(model, groups: Mapping[str, list[Sample]], *, keep: float, sink: int, window: int,
                        candidates: int | None = None, batch_size: int = 1,
                        progress: bool = True) -> tuple[dict[str, Measurement], Found]:
    """Full attention's measurement per group, and the search from it by `WorstRise` over it: the solo ablation of
    every layer that is not natively sliding, then greedy elimination (among the `candidates` with the lowest
    ablation values) down to `floor(keep * layers + 0.5)` retrieval layers, as `solve` rounds a ratio."""
    info = describe(model)
    layers = [i for i in range(info.num_layers) if i not in info.native_sliding]
    search = Search(model, groups, [RETRIEVAL] * info.num_layers, layers, math.floor(keep * len(layers) + 0.5),
                    sink=sink, window=window, prior="ablation", candidates=candidates, batch_size=batch_size)
    full = search.measure()
    return full, search.run(WorstRise({g: m.loss for g, m in full.items()}), progress=progress)


class Search:
    """See the module docstring. groups: `{name: samples}`; modes: the start plan's layer modes; kept: its retrieval
    layers that may be made streaming; prior: `[num_layers]` scores, "ablation" or None; replicas: model copies that
    share whole forwards (then nothing is held). `measure` (optional) then `run` (once)."""

    def __init__(self, model, groups: Mapping[str, list[Sample]], modes: Sequence[str], kept: Sequence[int],
                 stop: int, *, sink: int, window: int, prior=None, candidates: int | None = None,
                 batch_size: int = 1, replicas: Sequence = ()):
        self.info = describe(model)
        self.modes, self.kept, self.stop, self.prior, self.candidates = list(modes), list(kept), stop, prior, candidates
        self.ablate = isinstance(prior, str)
        if self.ablate and prior != "ablation":
            raise ValueError(f"prior must be scores, None or 'ablation'; got {prior!r}")
        # layers at which each greedy trial holds its inputs: the next round's candidates, whichever is chosen
        self.hold = candidates + 2 if candidates and prior is not None else 0
        # layers that can be a greedy round's candidates: held inputs of other ablation trials are never used
        self.reach = len(kept) - stop + candidates - 1 if candidates and self.ablate else 0
        samples = [s for v in groups.values() for s in v]
        # held inputs per sample: the start plan's at every layer, up to AHEAD per ablation trial in `reach`, and
        # those of a round's trials
        n, trials = self.info.num_layers, (candidates or 0) * self.hold
        self.ahead = None if replicas else next((k for k in range(AHEAD if self.reach else 0, -1, -1)
                                                 if usable(model, samples, n + k * self.reach + trials)), None)
        self.trials = Trials(model, groups, layer_plans(self.info, sink, window), batch_size=batch_size,
                             held=self.ahead is not None, replicas=replicas)

    def measure(self) -> dict[str, Measurement]:
        """The start plan on every group; held, its inputs at every layer are kept for the trials."""
        return self.trials.measure(self.modes, range(1, self.info.num_layers) if self.ahead is not None else ())

    def run(self, objective, *, desc: str = "greedy elimination", progress: bool = True) -> Found:
        """The search by `objective` (see the module docstring); the held inputs are dropped at the end."""
        self.trials.objective = objective
        try:
            prior = self._ablate(progress) if self.ablate else self.prior
            modes, kept, found = list(self.modes), list(self.kept), Found(prior=prior)
            with tqdm(total=len(kept) - self.stop, desc=desc, disable=not progress or len(kept) <= self.stop) as bar:
                while len(kept) > self.stop:
                    order = kept if prior is None else sorted(kept, key=lambda i: (float(prior[i]), i))
                    pool = order if prior is None else order[:self.candidates]
                    tried = {i: _streaming(modes, i) for i in pool}
                    self.trials.round(modes, tried, hold=order[:self.hold], cut=True)  # no base reruns
                    values = [self.trials.value(tried[i], bound=True) for i in pool]
                    best = min(range(len(pool)), key=values.__getitem__)  # the first of equal values
                    layer = pool[best]
                    modes[layer] = STREAMING
                    kept.remove(layer)
                    found.history.append((layer, values[best]))
                    bar.update()
                    bar.set_postfix({"layer": layer, objective.name: f"{values[best]:.3f}"})
            found.reused = self.trials.reused
            return found
        finally:
            self.trials.release()

    def _ablate(self, progress: bool) -> torch.Tensor:
        """`[num_layers]` value of each layer of `kept` streaming alone on top of the start plan (0 elsewhere)."""
        start, scores = self.modes, torch.zeros(self.info.num_layers)
        solo = {i: _streaming(start, i) for i in self.kept}
        groups = len(self.trials.groups)
        with tqdm(total=len(solo) * groups, desc="ablating layers", disable=not progress) as bar:
            if self.ahead:
                # the last layer first, so that each trial can hold its inputs at the layers after it with the lowest
                # scores so far: the greedy's early rounds stream those, and a later round's trial of that layer then
                # starts there (the inputs of layers a round streams stay valid until one below them is streamed)
                for i in reversed(self.kept):
                    after = sorted((x for x in self.kept if x > i), key=lambda x: (float(scores[x]), x))
                    self.trials.round(start, {i: solo[i]}, hold=after[:self.ahead], keep=after[:self.reach], bar=bar)
                    scores[i] = self.trials.value(solo[i])
            else:
                self.trials.round(start, solo, bar=bar)
        for i in self.kept:
            scores[i] = self.trials.value(solo[i])  # measured just above
        return scores


def layer_plans(info, sink: int, window: int) -> Callable[[Sequence[str]], Plan | None]:
    """The plan of a list of layer modes of the model `info` describes; None (the unpatched model) for full
    attention."""
    def plan_for(modes: Sequence[str]) -> Plan | None:
        return None if all(m == RETRIEVAL for m in modes) else Plan.from_layers(list(modes), sink=sink,
                                                                                 window=window, model=info)
    return plan_for


def _streaming(modes: Sequence[str], layer: int) -> list[str]:
    return [STREAMING if j == layer else m for j, m in enumerate(modes)]
