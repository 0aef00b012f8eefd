"""What the sections of experiments/report.py share: the repository's paths, readers of recorded files, markdown
tables and a context that says whether figures are drawn."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "results"
for _p in (ROOT / "experiments", ROOT / "benchmarks"):  # report_matrix, report_frontier; bench_report, ...
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


@dataclass
class Ctx:
    """figures: draw the PNGs a section embeds (off for --check: only the markdown is compared)."""

    figures: bool = False

    def figure(self, rel: str, alt: str, draw: Callable[[str], None], base: str = "docs") -> str:
        """Markdown embedding docs/results/`rel` (a link relative to `base`), drawn first when figures are on."""
        path = DATA / rel
        if self.figures:
            path.parent.mkdir(parents=True, exist_ok=True)
            draw(str(path))
            import matplotlib.pyplot as plt

            plt.close("all")
        return f"![{alt}]({path.relative_to(ROOT / base).as_posix()})"


def jsonl(rel: str | Path) -> list[dict]:
    """Rows of a JSON-lines file under docs/results/."""
    return [json.loads(x) for x in (DATA / rel).read_text().splitlines() if x.strip()]


def load_json(rel: str | Path) -> dict:
    return json.loads((DATA / rel).read_text())


def table(head: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A markdown table; cells are written as given (format numbers before)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def f(x, digits: int = 2, dash: str = "–") -> str:
    """x with `digits` decimals; `dash` for None."""
    return dash if x is None else f"{x:.{digits}f}"


def kib_gib(kib: float) -> str:
    return f"{kib * 1024 / 2**30:.1f} GiB"


def minutes(seconds: float) -> str:
    """123.4 -> '2 min 3 s'; under a minute '45 s'."""
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def length_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def demote(markdown: str, levels: int = 1) -> str:
    """Headings one level deeper: tables made for a page of their own, placed under a section."""
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown.splitlines())
