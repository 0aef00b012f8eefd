"""Shipped haystack text and user text, split by genre into calibration and evaluation sets.

Fiction: six public-domain Jane Austen novels, three for calibration ("calibration") and three held out
("evaluation"). Other genres (see texts/SOURCE.md): "code" (Python standard-library source) is calibration data;
"technical" (GNU manuals) and "legal" (licence texts) are evaluation only, so plans are judged on genres their
calibration never saw.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Iterable
from pathlib import Path

TEXTS = Path(__file__).with_name("texts")
SPLITS = {
    "calibration": ("emma", "mansfieldpark", "prideprejudice"),
    "code": ("code",),
    "evaluation": ("persuasion", "northangerabbey", "sensesensibility"),
    "technical": ("technical",),
    "legal": ("legal",),
}
CALIBRATION_SPLITS = ("calibration", "code")  # what calibration may read
EVALUATION_SPLITS = ("evaluation", "technical", "legal")  # what it never reads


@functools.cache
def shipped_text(split: str) -> str:
    """The concatenated texts of one split (a key of `SPLITS`)."""
    return "\n\n".join(documents(split=split))


def documents(source: str | Path | Iterable[str | Path] | None = None, *, split: str = "calibration") -> list[str]:
    """One text per shipped file of `split` when `source` is None, else one per file.

    `source` may be a file, a directory (its `*.txt` files, sorted), the name of a shipped split (e.g. "technical")
    or a list of those. A file must hold UTF-8 text (`decode_text`), and some: ValueError naming it otherwise.
    """
    if source is None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        return [gzip.decompress((TEXTS / f"{name}.txt.gz").read_bytes()).decode("utf-8") for name in SPLITS[split]]
    items = [source] if isinstance(source, (str, Path)) else list(source)
    files: list[Path] = []
    shipped: list[str] = []
    for item in items:
        p = Path(item)
        if isinstance(item, str) and item in SPLITS and not p.exists():  # a shipped genre by name
            shipped += documents(split=item)
        elif p.is_dir():
            found = sorted(p.glob("*.txt"))
            if not found:
                raise FileNotFoundError(f"{p} holds no .txt files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no text file or directory at {p}")
    out = [decode_text(f.read_bytes(), str(f)) for f in files]
    empty = next((f for f, text in zip(files, out, strict=True) if not text.strip()), None)
    if empty is not None:
        raise ValueError(f"{empty} holds no text")
    return shipped + out


BINARY = ((b"\x1f\x8b", "gzip-compressed"), (b"BZh", "bzip2-compressed"), (b"\xfd7zXZ\0", "xz-compressed"),
          (b"PK\x03\x04", "a zip archive"), (b"\x28\xb5\x2f\xfd", "zstd-compressed"), (b"%PDF", "a PDF"))


def decode_text(data: bytes, name: str) -> str:
    """`data` decoded as UTF-8; ValueError naming `name` when it is not text (compressed, binary, another encoding),
    rather than scoring the replacement characters of a lenient decode."""
    kind = next((k for magic, k in BINARY if data.startswith(magic)), None)
    if kind is None and b"\0" in data:
        kind = "binary data"
    if kind is None:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            kind = f"not UTF-8 text (byte {e.start})"
    raise ValueError(f"{name} is {kind}, not a text file; give UTF-8 text")


def load_text(source: str | Path | Iterable[str | Path] | None = None, *, split: str = "calibration") -> str:
    """Text for haystacks: the shipped `split` when `source` is None, else the user's files (see `documents`)."""
    if source is None:
        return shipped_text(split)
    text = "\n\n".join(documents(source))
    if len(text.split()) < 200:
        raise ValueError(f"the text in {source} is too short for haystacks ({len(text.split())} words; "
                         "need at least 200)")
    return text
