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
    # greedy's first round repeats the ablation's plans: measured once
    base, worst, worst_from = _worst_rise(model, groups, batch_size, sink=sink, window=window, info=info)

    full = [RETRIEVAL] * info.num_layers
    ablation = torch.zeros(info.num_layers)
    solo = {i: [STREAMING if j == i else m for j, m in enumerate(full)] for i in choosable}
    with tqdm(total=len(choosable) * len(groups), desc="ablating layers", disable=not progress) as bar:
        worst_from(full, solo, bar)
    for i in choosable:
        ablation[i] = worst(solo[i])  # measured just above

    stop = math.floor(keep * len(choosable) + 0.5)
    modes, kept, history = list(full), list(choosable), []
    bar = tqdm(total=len(choosable) - stop, desc="greedy elimination", disable=not progress)
    while len(kept) > stop:
        order = sorted(kept, key=lambda i: (float(ablation[i]), i))
        pool = order[:candidates]
        tried = {i: [STREAMING if j == i else m for j, m in enumerate(modes)] for i in pool}
        # the trials hold their inputs at the next round's candidates (whichever is chosen), so no base reruns
        # cut=True: a trial already worse than the best one in some group is not measured on the others
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


def _worst_rise(model, groups: Mapping[str, list[Sample]], batch_size: int, *, sink: int, window: int, info):
    """Full attention's loss per group (measured here), and two functions of layer mode lists, each plan measured
    once however often it is asked for:
    - `worst(modes, bound=False)`: the worst group's rise in loss over full attention; with `bound`, a trial that
      `worst_from(..., cut=True)` cut short gives the lower bound that put it above the best trial instead;
    - `worst_from(base, trials, bar=None, hold=(), cut=False)`: measures `trials` ({layer: modes}, each equal to
      `base` before its layer; in the order given) for later `worst` calls, running only the layers after the
      deepest held input (`prefix_cache.PrefixCache`, kept across calls; each trial holds its inputs at the layers
      of `hold` after its own) where every group's held inputs fit in memory, else from each trial's layer on
      (`suffix.Suffix`, one group at a time), else whole forwards; `bar` (tqdm) advances once per trial and group.
      With `cut` (held inputs only), a trial stops at the first group whose rise exceeds the worst rise of the
      best trial so far, as that trial can no longer be chosen; the groups go in the order of the first complete
      trial's rises, largest first. The choice among the trials is the same as with every group measured."""
    base = group_losses(model, groups, None, batch_size)
    seen: dict[tuple[str, ...], float] = {}
    cut_at: dict[tuple[str, ...], float] = {}  # trials cut short: a lower bound of their worst rise
    order_of: dict[str, list[str]] = {"groups": []}  # groups by the last call's first complete trial's rises
    caches: dict[str, PrefixCache] = {}  # per group, where all groups' held inputs fit (else `Suffix`, one group)
    suffix = {"checked": False, "exact": True}  # the first trial is checked against a whole forward, once

    def plan(modes: list[str]) -> Plan:
        return Plan.from_layers(modes, sink=sink, window=window, model=info)

    def plan_or_full(modes) -> Plan | None:  # None: full attention, the unpatched model
        return None if all(m == RETRIEVAL for m in modes) else plan(list(modes))

    def worst(modes: list[str], bound: bool = False) -> float:
        key = tuple(modes)
        if bound and key not in seen and key in cut_at:
            return cut_at[key]
        if key not in seen:
            losses = group_losses(model, groups, plan(modes), batch_size)
            seen[key] = max(losses[g] - base[g] for g in groups)
        return seen[key]

    def worst_from(base_modes: list[str], trials: Mapping[int, list[str]], bar=None, hold: Sequence[int] = (),
                   cut: bool = False) -> None:
        todo = {i: m for i, m in trials.items() if tuple(m) not in seen}
        if todo and suffix["exact"] and (caches or usable(model, [s for v in groups.values() for s in v],
                                                          info.num_layers + len(todo) * len(hold))):
            if not caches:  # kept across calls: one round's trials are the next round's base
                caches.update({g: PrefixCache(model, s, plan_or_full, batch_size, check=k == 0)
                               for k, (g, s) in enumerate(groups.items())})
            for cache in caches.values():
                cache.prune(base_modes)
                cache.fill(base_modes, todo)
            best = min((seen[tuple(m)] for m in trials.values() if tuple(m) in seen), default=math.inf)
            order, first = order_of["groups"] or list(caches), True
            for i, m in todo.items():
                rises: dict[str, float] = {}
                for g in order:
                    rises[g] = caches[g].measure(m, [x for x in hold if x > i]).loss - base[g]
                    suffix["exact"] = suffix["exact"] and caches[g].exact  # a fall-back holds from here on
                    if bar is not None:
                        bar.update()
                    if cut and rises[g] > best:
                        break
                if len(rises) < len(order):
                    cut_at[tuple(m)] = max(rises.values())
                    continue
                seen[tuple(m)] = max(rises.values())
                if first:  # the groups most likely to cut the next trials short go first
                    order = order_of["groups"] = sorted(caches, key=lambda g: -rises[g])
                    first = False
                best = min(best, seen[tuple(m)])
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
