"""Builds the shipped non-fiction haystack texts in zigzag_attn/data/texts/ from material any Debian/Ubuntu machine
with Python has offline. Produced: technical.txt.gz, legal.txt.gz, code.txt.gz (see that folder's SOURCE.md).

    python experiments/build_texts.py            # run once; the outputs are committed

- technical: GNU manuals in Info format (/usr/share/info: coreutils, grep, find, diffutils, gzip, sed; GFDL),
  Info control lines and menus removed. An evaluation genre: calibration never uses it.
- legal: the licence texts in /usr/share/common-licenses (each allows verbatim copies). An evaluation genre.
- code: Python standard-library modules (PSF licence) from this interpreter. A calibration genre.
"""

from __future__ import annotations

import gzip
import inspect
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "zigzag_attn" / "data" / "texts"
INFO = ["coreutils.info.gz", "grep.info.gz", "find.info-1.gz", "find.info-2.gz", "diffutils.info.gz",
        "gzip.info.gz", "sed.info.gz"]
LICENSES = ["Apache-2.0", "Artistic", "CC0-1.0", "GFDL-1.2", "GFDL-1.3", "GPL-1", "GPL-2", "GPL-3", "LGPL-2",
            "LGPL-2.1", "LGPL-3", "MPL-1.1", "MPL-2.0"]
MODULES = ["argparse", "calendar", "csv", "dataclasses", "difflib", "fractions", "heapq", "shlex", "statistics",
           "string", "textwrap", "pprint", "bisect", "graphlib", "json.decoder", "json.encoder", "configparser",
           "ipaddress", "tokenize", "ast"]


def info_prose(raw: str) -> str:
    """Info file -> prose: drop node separators and headers, menus and index entries, squeeze blank lines."""
    out, in_menu = [], False
    for line in raw.splitlines():
        if "\x1f" in line or line.startswith(("File: ", "Tag Table:", "End Tag Table", "\x7f")):
            in_menu = False
            continue
        if line.startswith("* Menu:"):
            in_menu = True
            continue
        if in_menu:
            if line.startswith("* ") or not line.strip() or line.startswith(" "):
                continue
            in_menu = False
        if re.match(r"^\s*\* .*::", line):  # stray menu or index entry
            continue
        out.append(line.replace("\x00", "").rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def main() -> None:
    docs = [info_prose(gzip.decompress(Path("/usr/share/info", f).read_bytes()).decode("utf-8", "replace"))
            for f in INFO]
    legal = [Path("/usr/share/common-licenses", f).read_text(encoding="utf-8") for f in LICENSES]
    code = []
    for name in MODULES:
        module = __import__(name, fromlist=["_"])
        code.append(f"# ---- {name}.py ----\n" + inspect.getsource(module))
    for stem, parts in (("technical", docs), ("legal", legal), ("code", code)):
        data = "\n\n".join(p.strip() for p in parts) + "\n"
        (OUT / f"{stem}.txt.gz").write_bytes(gzip.compress(data.encode("utf-8"), mtime=0))
        print(f"{stem}: {len(data):,} characters, {len(data.split()):,} words")


if __name__ == "__main__":
    main()
