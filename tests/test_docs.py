"""The documentation against its data and its house rules.

- Every generated page and block (docs/results.md, docs/performance.md; the marked blocks of README.md,
  docs/calibration.md and docs/hybrid.md) equals what `python experiments/report.py` writes from the recorded data,
  so no number can drift from its file (figures are not compared).
- The README stays short, and the pages' relative links (and their #anchors) lead somewhere.
- No page or script speaks of how the work was organised (sessions, leases, loans, issue numbers) or of paths outside
  the repository; the raw data under docs/results/ may keep its provenance.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SELF = "tests/test_docs.py"  # states the patterns below, so it is not scanned for them
README_MAX_LINES = 170
SUFFIXES = (".md", ".py", ".sh", ".ipynb")
RAW_DATA = "docs/results/"


FORBIDDEN = {
    "a session": r"\bsessions?\b",
    "a lease": r"\blease[sd]?\b",
    "a loan": r"\bloans?\b",
    "a transfer folder": r"\.device-xfer",
    "a path outside the repository": r"\.\./shared",
    "the GPU machine's paths": r"/root/zz-",
    "an issue number": r"\bissues? #\d+|(?<![\w/])#\d+'s\b",
}
ALLOWED = (r'scope="session"',)  # pytest's fixture scope, not a work session
DATE = r"\b20\d\d-\d\d-\d\d\b|\b\d\d:\d\d UTC\b"


def tracked() -> list[str]:
    """The repository's files (git's list; without git, the tree less hidden and build folders)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if (ROOT / line).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {"__pycache__", "build", "dist"}
        return [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()
                and not any(part.startswith(".") or part in skip or part.endswith(".egg-info")
                            for part in p.relative_to(ROOT).parts)]


def scanned() -> list[str]:
    return [p for p in tracked() if p.endswith(SUFFIXES) and not p.startswith(RAW_DATA) and p != SELF]


def hits(path: str) -> list[str]:
    """'path:line: what' for each forbidden word in the file."""
    out = []
    for i, line in enumerate((ROOT / path).read_text(errors="replace").splitlines(), 1):
        for allowed in ALLOWED:
            line = re.sub(allowed, "", line)
        out += [f"{path}:{i}: {what}: {line.strip()[:120]}" for what, pattern in FORBIDDEN.items()
                if re.search(pattern, line, re.IGNORECASE)]
    return out


def test_generated_docs_equal_their_data():
    sys.path.insert(0, str(ROOT / "experiments"))
    import report

    problems = report.check()
    assert not problems, "\n".join(problems + ["run `python experiments/report.py` and commit the result"])


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it to {README_MAX_LINES}"


def test_no_page_or_script_speaks_of_how_the_work_was_organised():
    bad = [h for path in scanned() for h in hits(path)]
    assert not bad, "\n".join(bad[:30])


def test_pages_carry_no_dates_or_clock_times():
    pages = [p for p in scanned() if p.endswith(".md") and (p == "README.md" or p.startswith("docs/"))]
    bad = [f"{p}:{i}: {line.strip()[:120]}" for p in pages
           for i, line in enumerate((ROOT / p).read_text().splitlines(), 1) if re.search(DATE, line)]
    assert not bad, "\n".join(bad)


def slug(heading: str) -> str:
    """A markdown heading's anchor, as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_resolve():
    pages = [p for p in scanned() if p.endswith(".md") and not p.startswith(("zigzag_attn/", "benchmarks/"))]
    bad = []
    for page in pages:
        text = (ROOT / page).read_text()
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path = (ROOT / page).parent / target if target else ROOT / page
            if not path.exists():
                bad.append(f"{page}: {target} does not exist")
            elif anchor and path.suffix == ".md" and anchor not in {
                    slug(h) for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)}:
                bad.append(f"{page}: no heading #{anchor} in {target or page}")
    assert not bad, "\n".join(bad)
