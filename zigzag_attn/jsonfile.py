"""Versioned JSON files (plans, scores): every error names the file. Never pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read(path: Path, what: str) -> Any:
    """Parse `path` as JSON; `what` ("plan", "scores") names the kind of file in errors."""
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file {str(path)!r}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); a {what} file is written by its save()") from None
    except RecursionError:
        raise ValueError(f"{path} nests JSON too deeply to be a {what} file; a {what} file is written by its "
                         "save()") from None


def check_header(d: Any, source: str, what: str, fmt: str, version: int) -> None:
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise ValueError(f"{source} is not a zigzag-attn {what} file (no \"format\": \"{fmt}\" field)")
    if d.get("version") != version:
        raise ValueError(f"{source} has {what} format version {d.get('version')!r}; this zigzag-attn reads {version}")


def write(path: str | Path, data: dict, indent: int | None = 1) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=indent) + "\n")
    return path
