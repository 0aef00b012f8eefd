"""`evaluate`: every policy on the same task prompts, cell by cell (task x length x depth); `Results` holds the rows.

The prompts of a cell are built once and shared by all policies, so policies differ only in attention. Each
policy is patched once and scored on every cell by `measure` (one teacher-forced forward per batch of prompts of
the same length, left-padded).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import jsonfile
from ..data.passkey import IGNORE, Sample
from ..model_info import describe
from ..profile.measure import measure
from ..runtime import patched, plan_of
from .policies import FULL, Policy
from .ppl import Perplexity, ppl
from .tasks import DEPTH_TASKS, TASKS, make

FORMAT, VERSION = "zigzag-attn/eval", 1

__all__ = ["Perplexity", "Results", "Row", "evaluate", "ppl"]


@dataclass(frozen=True)
class Row:
    """One policy on one cell: `n` prompts of one task at one nominal length (and needle depth)."""

    task: str
    policy: str
    family: str
    length: int  # nominal prompt length in tokens
    depth: float | None  # needle depth as a fraction of the haystack; None where needles sit at random
    n: int  # prompts
    answers: int  # answers scored (a prompt may ask several items)
    correct: int
    loss: float  # mean negative log-likelihood per answer token
    answer_tokens: int
    kv_fraction: float  # KV cache relative to full attention at `length` tokens
    tokens: float  # mean actual prompt length

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.answers)


@dataclass
class Results:
    """Rows of an evaluation, with `meta` (tasks, lengths, depths, seed, the plans) for reproducibility."""

    rows: list[Row]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.rows))

    @property
    def lengths(self) -> list[int]:
        return sorted({r.length for r in self.rows})

    @property
    def policies(self) -> list[tuple[str, str]]:
        """(name, family) in evaluation order."""
        return list(dict.fromkeys((r.policy, r.family) for r in self.rows))

    def aggregate(self, by: Sequence[str] = ("policy",), **where) -> list[dict[str, Any]]:
        """Rows pooled over everything not in `by` (Row field names), keeping only rows matching `where`.

        Each dict has the `by` keys and n, answers, correct, accuracy (pooled over answers), loss (per answer
        token), kv_fraction (mean over the pooled rows) and tokens (mean prompt length).
        """
        groups: dict[tuple, list[Row]] = {}
        for r in self.rows:
            if all(getattr(r, k) == v for k, v in where.items()):
                groups.setdefault(tuple(getattr(r, k) for k in by), []).append(r)
        out = []
        for key, rows in groups.items():
            answers, tokens = sum(r.answers for r in rows), sum(r.answer_tokens for r in rows)
            out.append({**dict(zip(by, key, strict=True)), "n": sum(r.n for r in rows), "answers": answers,
                        "correct": sum(r.correct for r in rows),
                        "accuracy": sum(r.correct for r in rows) / max(1, answers),
                        "loss": sum(r.loss * r.answer_tokens for r in rows) / max(1, tokens),
                        "kv_fraction": sum(r.kv_fraction for r in rows) / len(rows),
                        "tokens": sum(r.tokens * r.n for r in rows) / max(1, sum(r.n for r in rows))})
        return out

    def accuracy(self, policy: str, **where) -> float:
        agg = self.aggregate((), policy=policy, **where)
        if not agg:
            raise KeyError(f"no rows for policy {policy!r} with {where}")
        return agg[0]["accuracy"]

    def table(self) -> str:
        """Plain text: per task, accuracy (%) per policy per length, pooled over depths and samples."""
        return "\n\n".join(self._task_table(t) for t in self.tasks)

    def _task_table(self, task: str) -> str:
        lengths = sorted({r.length for r in self.rows if r.task == task})
        cells = {(a["policy"], a["length"]): a for a in self.aggregate(("policy", "length"), task=task)}
        means = {a["policy"]: a for a in self.aggregate(("policy",), task=task)}
        longest = {a["policy"]: a["kv_fraction"] for a in self.aggregate(("policy",), task=task, length=lengths[-1])}
        full = next((means[p]["accuracy"] for p, f in self.policies if f == FULL and p in means), None)
        depths = sorted({r.depth for r in self.rows if r.task == task and r.depth is not None})
        counts: dict[int, int] = {}  # prompts per cell at each length (the same for every policy)
        for (_, n), a in cells.items():
            counts.setdefault(n, a["n"])
        head = ["policy", "family"] + [f"{n} (n={counts[n]})" for n in lengths]
        head += ["mean", "loss", f"KV@{lengths[-1]}", "share of full"]
        body = []
        for p, fam in self.policies:
            if p not in means:
                continue
            share = f"{means[p]['accuracy'] / full:.2f}" if full else "-"
            body.append([p, fam] + [_pct(cells[p, n]["accuracy"]) if (p, n) in cells else "-" for n in lengths]
                        + [_pct(means[p]["accuracy"]), f"{means[p]['loss']:.3f}", f"{longest.get(p, 1.0):.3f}", share])
        widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]

        def fmt(row: list) -> str:
            return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

        title = f"{task}: accuracy (%) by context length; n = prompts per cell"
        if depths:
            title += f" ({len(depths)} depths x {counts[lengths[0]] // len(depths)} samples)"
        return "\n".join([title, fmt(head), *map(fmt, body)])

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "meta": self.meta,
                "rows": [{**asdict(r), "accuracy": r.accuracy} for r in self.rows]}

    @classmethod
    def from_json(cls, d: Any, *, source: str = "<dict>") -> Results:
        jsonfile.check_header(d, source, "evaluation", FORMAT, VERSION)
        try:
            names = Row.__dataclass_fields__
            rows = [Row(**{k: v for k, v in r.items() if k in names}) for r in d["rows"]]
            return cls(rows, dict(d.get("meta") or {}))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source} is a damaged evaluation file: {e}") from None

    def save(self, path: str | Path) -> Path:
        return jsonfile.write(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Results:
        path = Path(path)
        return cls.from_json(jsonfile.read(path, "evaluation"), source=str(path))

    def __add__(self, other: Results) -> Results:
        return Results(self.rows + other.rows, {**self.meta, **other.meta})


@torch.no_grad()
def evaluate(model, tokenizer, policies: Sequence[Policy | tuple], *, task: str | Sequence[str] = "niah",
             lengths: Sequence[int] = (2048, 4096, 8000), depths: int | Sequence[float] = 10, samples_per_cell: int = 2,
             batch_size: int = 1, seed: int = 0, text: str | None = None, progress: bool = True) -> Results:
    """Score every policy on the same prompts of `task` (one name of `tasks.TASKS`, or several).

    lengths: nominal prompt lengths in tokens.
    depths: for "niah" and "passkey", a number of needle depths evenly spaced over [0, 1] or the depths
        themselves; other tasks place their needles at random, one cell per length.
    samples_per_cell: prompts per (task, length, depth) cell; the prompts depend only on `seed` and the cell.
    text: haystack text (default: the shipped evaluation novels).
    The model must be unpatched; each policy is patched for its turn only.
    """
    policies = [Policy(*p) for p in policies]
    task_list = [task] if isinstance(task, str) else list(task)
    depth_list = _depths(depths)
    lengths = _lengths(lengths)
    if not policies:
        raise ValueError("evaluate needs at least one policy")
    if len({p.name for p in policies}) != len(policies):
        raise ValueError(f"policy names must be distinct; got {[p.name for p in policies]}")
    bad = [t for t in task_list if t not in TASKS]
    if bad or not task_list:
        raise ValueError(f"unknown task {bad[0] if bad else None!r}; expected one of {', '.join(TASKS)}")
    if isinstance(samples_per_cell, bool) or not isinstance(samples_per_cell, int) or samples_per_cell < 1:
        raise ValueError(f"samples_per_cell must be an integer >= 1; got {samples_per_cell!r}")
    if plan_of(model) is not None:
        raise ValueError("evaluate needs an unpatched model (each policy patches it in turn): call zz.unpatch(model)")
    info = describe(model)
    for p in policies:
        if p.plan is not None:
            try:
                p.plan.check_model(info)
            except ValueError as e:
                raise ValueError(f"policy {p.name!r}: {e}") from None

    cells = [(t, n, d) for t in task_list for n in lengths for d in (depth_list if t in DEPTH_TASKS else [None])]
    prompts: dict[tuple, list[Sample]] = {}
    for t, n, d in tqdm(cells, desc="building prompts", disable=not progress):
        cell_seed = random.Random(f"{seed}/{t}/{n}/{d}").randrange(2**31)
        prompts[t, n, d] = make(t, tokenizer, n, depth=d, n=samples_per_cell, seed=cell_seed, text=text)

    rows = []
    bar = tqdm(total=len(policies) * len(cells), desc="evaluating", disable=not progress)
    for p in policies:
        bar.set_postfix_str(p.name)
        with patched(model, p.plan) if p.plan is not None else contextlib.nullcontext():
            for t, n, d in cells:
                samples = prompts[t, n, d]
                m = measure(model, samples, batch_size=batch_size)
                rows.append(Row(t, p.name, p.family, n, d, len(samples), len(m.correct), sum(m.correct), m.loss,
                                sum(int((s.labels != IGNORE).sum()) for s in samples),
                                1.0 if p.plan is None else p.plan.kv_fraction(n),
                                sum(len(s) for s in samples) / len(samples)))
                bar.update()
    bar.close()
    meta = {"tasks": task_list, "lengths": lengths, "depths": depth_list, "samples_per_cell": samples_per_cell,
            "seed": seed, "model": info.name, "text": "evaluation novels" if text is None else "user text",
            "plans": {p.name: None if p.plan is None else p.plan.to_json() for p in policies}}
    return Results(rows, meta)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _depths(depths: int | Sequence[float]) -> list[float]:
    if isinstance(depths, int) and not isinstance(depths, bool):
        if depths < 1:
            raise ValueError(f"depths must be >= 1; got {depths}")
        return [0.5] if depths == 1 else [round(i / (depths - 1), 4) for i in range(depths)]
    out = [float(d) for d in depths]
    if not out or not all(0 <= d <= 1 for d in out):
        raise ValueError(f"depths must be a count >= 1 or numbers in [0, 1]; got {depths!r}")
    return out


def _lengths(lengths: Sequence[int]) -> list[int]:
    out = list(lengths) if not isinstance(lengths, int) else [lengths]
    if not out or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in out):
        raise ValueError(f"lengths must be positive integers (tokens); got {lengths!r}")
    return sorted(set(out))
