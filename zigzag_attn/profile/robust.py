"""`method="robust"`: measured greedy elimination with a worst-task objective, checked on fresh prompts.

1. Full-attention answer loss per task group (`data.calibration`: pass keys, ledgers, box chains; fiction and code).
2. Solo ablation: each choosable layer made streaming alone; its score is the worst group's rise in loss.
3. Greedy elimination from full attention down to `keep` retrieval layers: each round makes streaming the layer
   (among the `candidates` with the lowest ablation score) whose removal raises the worst group's loss least.
   The elimination order ranks the layers, so `solve` at any size gives the nested greedy plan.
4. Validation: the greedy ranking and the plain ablation ranking are compared on fresh prompts (`valid`, other
   seeds and lengths) at the sizes of SIZES down to `keep`, and at `keep`; the one with the lower mean worst-group
   loss becomes the scores. A caller that needs one plan sets `keep` to its ratio: the search stops there.
The worst group, not the mean, is the objective, so a layer one task needs is not traded for small gains on the
others; docs/results.md measures how this generalizes to genres and wordings calibration never saw.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..data.passkey import Sample
from ..model_info import describe
from ..plan import RETRIEVAL, STREAMING, Plan
from ..runtime import patched
from .measure import measure
from .prefix_cache import PrefixCache
from .suffix import Suffix, usable

SIZES = (0.5, 1 / 3, 0.25)  # retrieval-layer ratios at which validation compares the rankings
AHEAD = 6  # layers at which each ablation trial that may become a greedy candidate holds its inputs, memory allowing


def group_losses(model, groups: Mapping[str, list[Sample]], plan: Plan | None, batch_size: int) -> dict[str, float]:
    """Mean answer loss of each group, the model patched with `plan` (None: full attention) once for all."""
    if plan is None:
        return {g: measure(model, s, batch_size=batch_size).loss for g, s in groups.items()}
    with patched(model, plan):
        return {g: measure(model, s, batch_size=batch_size).loss for g, s in groups.items()}


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
    stop = math.floor(keep * len(choosable) + 0.5)
    # layers that can be a greedy round's candidates: held inputs of other trials are never used
    reach = len(choosable) - stop + candidates - 1 if candidates else 0
    samples = [s for v in groups.values() for s in v]
    # held inputs per sample: full attention's at every layer, and up to AHEAD per ablation trial in `reach`
    ahead = next((k for k in range(AHEAD if reach else 0, -1, -1)
                  if usable(model, samples, info.num_layers + k * reach)), None)
    # greedy's first round repeats the ablation's plans: measured once
    base, worst, worst_from = _worst_rise(model, groups, batch_size, sink=sink, window=window, info=info,
                                          held=ahead is not None)

    full = [RETRIEVAL] * info.num_layers
    ablation = torch.zeros(info.num_layers)
    solo = {i: [STREAMING if j == i else m for j, m in enumerate(full)] for i in choosable}
    with tqdm(total=len(choosable) * len(groups), desc="ablating layers", disable=not progress) as bar:
        if ahead:
            # the last layer first, so that each trial can hold its inputs at the layers after it with the lowest
            # scores so far: the greedy's early rounds stream those, and a later round's trial of that layer then
            # starts there (the inputs of layers a round streams stay valid until one below them is streamed)
            for i in reversed(choosable):
                after = sorted((x for x in choosable if x > i), key=lambda x: (float(ablation[x]), x))
                worst_from(full, {i: solo[i]}, bar, hold=after[:ahead], keep=after[:reach])
                ablation[i] = worst(solo[i])
        else:
            worst_from(full, solo, bar)
    for i in choosable:
        ablation[i] = worst(solo[i])  # measured just above

    modes, kept, history = list(full), list(choosable), []
    bar = tqdm(total=len(choosable) - stop, desc="greedy elimination", disable=not progress)
    while len(kept) > stop:
        order = sorted(kept, key=lambda i: (float(ablation[i]), i))
        pool = order[:candidates]
        tried = {i: [STREAMING if j == i else m for j, m in enumerate(modes)] for i in pool}
        # the trials hold their inputs at the next round's candidates (whichever is chosen), so no base reruns
        # cut=True: a trial is measured on its next group only while no other could still be chosen before it
        worst_from(modes, tried, hold=order[:candidates + 2] if candidates else (), cut=True)
        trials = [worst(tried[i], bound=True) for i in pool]
        best = min(range(len(pool)), key=trials.__getitem__)
        layer = pool[best]
        modes[layer] = STREAMING
        kept.remove(layer)
        history.append({"streaming": layer, "worst_loss_rise": round(trials[best], 5)})
        bar.update()
        bar.set_postfix(layer=layer, rise=f"{trials[best]:.3f}")
    bar.close()
    del worst_from  # its held inputs (PrefixCache) are freed before validation runs
    greedy = _rank([h["streaming"] for h in history], kept, ablation, info.num_layers)
    ablation_rank = _rank([], choosable, ablation, info.num_layers)
    meta = {"groups": {g: len(s) for g, s in groups.items()}, "full_losses": base, "keep": keep,
            "candidates": candidates, "ablation": [round(float(x), 5) for x in ablation], "greedy": history}
    chosen, name = greedy, "greedy"
    if valid:
        scores = {"greedy": greedy, "ablation": ablation_rank}
        # the two rankings often keep the same layers at a size (and two sizes may round alike): measured once
        _, vworst, _ = _worst_rise(model, valid, batch_size, sink=sink, window=window, info=info)
        table = {}
        sizes = [r for r in SIZES if r >= keep - 1e-9]  # where the greedy ranking was searched, and `keep`
        if not sizes or abs(sizes[-1] - keep) > 1e-9:
            sizes.append(keep)
        for key, s in scores.items():
            rises = []
            for r in sizes:
                k = math.floor(r * len(choosable) + 0.5)
                top = set(sorted(choosable, key=lambda i: (-float(s[i]), i))[:k])
                rises.append(vworst([RETRIEVAL if i in top or i not in choosable else STREAMING
                                     for i in range(info.num_layers)]))
            table[key] = [round(x, 5) for x in rises]
        name = min(table, key=lambda k: sum(table[k]))  # greedy wins ties (listed first)
        chosen = scores[name]
        meta["validation"] = {"groups": {g: len(s) for g, s in valid.items()}, "sizes": sizes,
                              "worst_loss_rise": table, "chosen": name}
    meta.update(ranking=name, seconds=round(time.perf_counter() - start, 1))
    return chosen, meta


def _worst_rise(model, groups: Mapping[str, list[Sample]], batch_size: int, *, sink: int, window: int, info,
                held: bool = False):
    """Full attention's loss per group (measured here), and two functions of layer mode lists, each plan measured
    once however often it is asked for:
    - `worst(modes, bound=False)`: the worst group's rise in loss over full attention; with `bound`, a trial that
      `worst_from(..., cut=True)` cut short gives the lower bound that put it above the chosen trial instead;
    - `worst_from(base, trials, bar=None, hold=(), cut=False, keep=None)`: measures `trials` ({layer: modes}, each
      equal to `base` before its layer) for later `worst` calls. With `held` (the caller has checked that every
      group's held inputs fit in memory), full attention is measured holding its inputs at every layer, and a trial
      runs only the layers after the deepest held input (`prefix_cache.PrefixCache`, kept across calls; each trial
      holds its inputs at the layers of `hold` after its own; `keep`: only other trials of these layers keep
      theirs); else from each trial's layer on (`suffix.Suffix`, one group at a time) where a group fits, else
      whole forwards; `bar` (tqdm) advances once per trial and group.
      With `cut` (held inputs only), best first: the trial whose measured groups' worst rise is lowest (the first
      given among equals, as `min` picks) measures its next group, until that trial has measured them all; no other
      can then be below it. So each other trial stops at its first group whose rise exceeds the chosen trial's
      worst rise (or equals it, given later): the least measured for the same choice as with every group measured.
      The groups go in the order of the base's rises (the last round's chosen trial), largest first."""
    full = [RETRIEVAL] * info.num_layers
    seen: dict[tuple[str, ...], float] = {}
    cut_at: dict[tuple[str, ...], float] = {}  # trials cut short: a lower bound of their worst rise
    by_group: dict[tuple[str, ...], dict[str, float]] = {}  # the rise of each group, where all were measured
    caches: dict[str, PrefixCache] = {}  # per group, where all groups' held inputs fit (else `Suffix`, one group)
    suffix = {"checked": False, "exact": True}  # the first trial is checked against a whole forward, once

    def plan(modes: list[str]) -> Plan:
        return Plan.from_layers(modes, sink=sink, window=window, model=info)

    def plan_or_full(modes) -> Plan | None:  # None: full attention, the unpatched model
        return None if all(m == RETRIEVAL for m in modes) else plan(list(modes))

    if held:  # kept across calls: one round's trials are the next round's base
        caches.update({g: PrefixCache(model, s, plan_or_full, batch_size, check=k == 0)
                       for k, (g, s) in enumerate(groups.items())})
        base = {g: c.measure(full, range(1, info.num_layers)).loss for g, c in caches.items()}
    else:
        base = group_losses(model, groups, None, batch_size)

    def worst(modes: list[str], bound: bool = False) -> float:
        key = tuple(modes)
        if bound and key not in seen and key in cut_at:
            return cut_at[key]
        if key not in seen:
            losses = group_losses(model, groups, plan(modes), batch_size)
            seen[key] = max(losses[g] - base[g] for g in groups)
        return seen[key]

    def worst_from(base_modes: list[str], trials: Mapping[int, list[str]], bar=None, hold: Sequence[int] = (),
                   cut: bool = False, keep: Sequence[int] | None = None) -> None:
        todo = {i: m for i, m in trials.items() if tuple(m) not in seen}
        if todo and suffix["exact"] and caches:
            for cache in caches.values():
                cache.prune(base_modes, keep)
                cache.fill(base_modes, todo)
            rises: dict[int, dict[str, float]] = {i: {} for i in todo}
            known = by_group.get(tuple(base_modes), {})  # the groups where the base is worst rule trials out first
            order = sorted(groups, key=lambda g: -known.get(g, 0.0))

            def step(i: int) -> float:  # trial i on its next group: the worst rise of its groups so far
                g = next(g for g in order if g not in rises[i])
                rises[i][g] = caches[g].measure(todo[i], [x for x in hold if x > i]).loss - base[g]
                suffix["exact"] = suffix["exact"] and caches[g].exact  # a fall-back holds from here on
                if bar is not None:
                    bar.update()
                return max(rises[i].values())

            if cut:
                # (worst rise so far, place given): measured trials have every group, the others -inf until one
                heap = [(seen[tuple(m)] if tuple(m) in seen else -math.inf, k, i)
                        for k, (i, m) in enumerate(trials.items())]
                heapq.heapify(heap)
                while heap[0][2] in todo and len(rises[heap[0][2]]) < len(groups):
                    _, k, i = heap[0]
                    heapq.heapreplace(heap, (step(i), k, i))
            else:
                for i in todo:
                    while len(rises[i]) < len(groups):
                        step(i)
            for i, r in rises.items():
                if len(r) == len(groups):
                    seen[tuple(todo[i])], by_group[tuple(todo[i])] = max(r.values()), r
                elif r:
                    cut_at[tuple(todo[i])] = max(r.values())
            return
        if not todo or not suffix["exact"] or not all(usable(model, s, len(todo)) for s in groups.values()):
            for m in todo.values():  # whole forwards
                worst(m)
                if bar is not None:
                    bar.update(len(groups))
            return
        rises = {i: [] for i in todo}
        first = plan_or_full(base_modes)
        for g, samples in groups.items():  # one group's hidden states kept at a time
            run = Suffix(model, samples, batch_size, check=not suffix["checked"])
            run.base(first, todo)
            for i, m in todo.items():
                rises[i].append(run.trial(plan(m), i).loss - base[g])
                if bar is not None:
                    bar.update()
            run.release()
            suffix.update(checked=True, exact=suffix["exact"] and run.exact)  # a fall-back holds from here on
        for i, m in todo.items():
            seen[tuple(m)] = max(rises[i])
    return base, worst, worst_from


def _rank(order: Sequence[int], rest: Sequence[int], ablation: torch.Tensor, num_layers: int) -> torch.Tensor:
    """Scores from an elimination order: the first eliminated scores 1, the next 2, ...; the layers never
    eliminated (`rest`) score above all of them, ordered by ablation. Native sliding layers score 0."""
    scores = torch.zeros(num_layers)
    for r, layer in enumerate(order):
        scores[layer] = r + 1
    for r, layer in enumerate(sorted(rest, key=lambda i: (float(ablation[i]), i))):
        scores[layer] = len(order) + 1 + r
    return scores
