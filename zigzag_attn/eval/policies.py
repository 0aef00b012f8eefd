"""The attention policies one evaluation compares: full, all-streaming, random layer sets, given plans, DuoAttention.

A policy is `(name, family, plan)`; `plan` is None for full attention. Families (used to group results and plots):
"full", "streaming", "random", "plan", "duo".
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ..model_info import describe
from ..plan import RETRIEVAL, STREAMING, ModelInfo, Plan
from ..scores import Scores
from ..solve import solve_heads

FULL, STREAMING_FAMILY, RANDOM, PLAN, DUO = "full", "streaming", "random", "plan", "duo"
FAMILIES = (FULL, STREAMING_FAMILY, RANDOM, PLAN, DUO)
DEFAULT_SINK, DEFAULT_WINDOW = 64, 256


class Policy(NamedTuple):
    name: str
    family: str
    plan: Plan | None  # None: the unpatched model (full attention)


def full() -> Policy:
    return Policy("full", FULL, None)


def all_streaming(info: ModelInfo, *, sink: int = DEFAULT_SINK, window: int = DEFAULT_WINDOW) -> Policy:
    """StreamingLLM: every choosable layer streaming (native sliding-window layers keep their own attention)."""
    modes = [RETRIEVAL if i in info.native_sliding else STREAMING for i in range(info.num_layers)]
    return Policy("streaming", STREAMING_FAMILY, Plan.from_layers(modes, sink=sink, window=window, model=info,
                                                                  provenance={"policy": "all-streaming"}))


def random_sets(info: ModelInfo, count: int, ratio: float, *, seed: int = 0, sink: int = DEFAULT_SINK,
                window: int = DEFAULT_WINDOW) -> list[Policy]:
    """`count` distinct random layer-exclusive plans, each with `floor(ratio * n + 0.5)` of the `n` choosable
    layers retrieval (the rounding `zz.solve` uses). Fewer when fewer distinct sets exist. Deterministic in `seed`.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"the number of random sets must be an integer >= 0; got {count!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be a number in [0, 1] (the share of layers kept retrieval); got {ratio!r}")
    choosable = [i for i in range(info.num_layers) if i not in info.native_sliding]
    k = math.floor(ratio * len(choosable) + 0.5)
    rng, seen, out = random.Random(seed), set(), []
    count = min(count, math.comb(len(choosable), k))
    while len(out) < count:
        chosen = frozenset(rng.sample(choosable, k))
        if chosen in seen:
            continue
        seen.add(chosen)
        modes = [RETRIEVAL if i in chosen or i in info.native_sliding else STREAMING for i in range(info.num_layers)]
        plan = Plan.from_layers(modes, sink=sink, window=window, model=info,
                                provenance={"policy": "random", "ratio": ratio, "seed": seed, "index": len(out)})
        out.append(Policy(f"random-{len(out) + 1}", RANDOM, plan))
    return out


def given(plans: Mapping[str, Plan] | Sequence[Plan]) -> list[Policy]:
    """User plans; a sequence is named plan-1, plan-2, ..."""
    items = plans.items() if isinstance(plans, Mapping) else ((f"plan-{i + 1}", p) for i, p in enumerate(plans))
    out = []
    for name, plan in items:
        if not isinstance(plan, Plan):
            raise TypeError(f"policy {name!r}: expected a zigzag_attn.Plan; got {type(plan).__name__}")
        out.append(Policy(str(name), PLAN, plan))
    return out


def duo(plan: Plan, context_length: int, scores: Scores | None = None, *, name: str | None = None) -> Policy:
    """DuoAttention-style head-level plan at the KV budget `plan` has at `context_length` tokens (`zz.solve_heads`).

    `scores.heads` (`[num_layers, num_kv_heads]`) must rank heads, e.g. per-head gates from
    `zz.profile(model, tok, method="gates", granularity="head")` or `calibrate --granularity head --scores-out`.
    A baseline must never quietly be the plan it is compared with, so this raises ValueError, saying why, when there
    are no scores, when every head of each layer scores the same (the head plan could only pick whole layers), or
    when the head plan equals `plan`.
    With the same number of retrieval heads at every length, the budget is equal at every length.
    """
    problem = head_scores_problem(scores)
    if problem:
        raise ValueError(problem)
    head_plan = solve_heads(scores, kv_budget=plan.kv_fraction(context_length), context_length=context_length,
                            sink=plan.sink, window=plan.window)
    if head_plan.head_mask(scores.num_kv_heads) == plan.head_mask(scores.num_kv_heads):
        raise ValueError("the head plan these scores give keeps exactly the plan's own heads")
    return Policy(name or "duo", DUO, head_plan)


def head_scores_problem(scores: Scores | None) -> str | None:
    """Why `scores` cannot rank KV heads for a DuoAttention baseline, or None when they can."""
    how = ("per-head scores come from `zigzag-attn calibrate MODEL --method gates --granularity head --scores-out "
           'S.json` or zz.profile(model, tok, method="gates", granularity="head")')
    if scores is None:
        return f"no head scores were given ({how})"
    heads = scores.heads.float()
    if bool((heads == heads[:, :1]).all()):
        return (f"the scores give every KV head of a layer the same value, so a head-level plan could only keep "
                f"whole layers ({how})")
    return None


def policies(model, plans: Mapping[str, Plan] | Sequence[Plan] = (), *, streaming: bool = True, n_random: int = 0,
             ratio: float | None = None, duo_scores: Scores | None = None, with_duo: bool = False,
             context_length: int = 8192, seed: int = 0, sink: int | None = None, window: int | None = None
             ) -> list[Policy]:
    """The usual comparison: full, all-streaming, the given plans, `n_random` random sets, DuoAttention baselines.

    sink/window for the streaming and random policies default to the first plan's, else 64/256.
    ratio for the random sets defaults to the first plan's share of retrieval layers.
    with_duo: add a head-level plan from `duo_scores` at each given plan's KV budget (at `context_length`); where
    `duo` finds no honest baseline the plan gets none, with a warning saying why.
    """
    info = describe(model)
    named = given(plans)
    first = named[0].plan if named else None
    sink = sink if sink is not None else first.sink if first else DEFAULT_SINK
    window = window if window is not None else first.window if first else DEFAULT_WINDOW
    for p in named:
        p.plan.check_model(info)
    out = [full()]
    if streaming:
        out.append(all_streaming(info, sink=sink, window=window))
    out += named
    if n_random:
        if ratio is None:
            if first is None:
                raise ValueError("random sets need a ratio (share of layers kept retrieval) or a plan to copy it from")
            ratio = retrieval_ratio(first, info)
        out += random_sets(info, n_random, ratio, seed=seed, sink=sink, window=window)
    if with_duo:
        for p in named:
            try:
                out.append(duo(p.plan, context_length, duo_scores, name=f"duo@{p.name}"))
            except ValueError as e:
                warnings.warn(f"no DuoAttention baseline for plan {p.name!r}: {e}", stacklevel=2)
    return out


def retrieval_ratio(plan: Plan, info: ModelInfo) -> float:
    """Share of the choosable (not natively sliding) layers that `plan` keeps retrieval."""
    choosable = [i for i in range(info.num_layers) if i not in info.native_sliding]
    return sum(plan.modes[i] == RETRIEVAL for i in choosable) / max(1, len(choosable))
