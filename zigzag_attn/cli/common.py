"""What every command shares: the two error kinds, argument types, device/dtype choice, loading models and plans."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

PROG = "zigzag-attn"


class CLIError(Exception):
    """A runtime failure reported as `error: ...` with exit status 1."""


class UsageError(Exception):
    """A bad argument found after parsing (e.g. against the model): exit status 2, like argparse's own errors."""


# -- argument types ------------------------------------------------------------------------------------------------
def int_arg(lo: int | None = None, what: str | None = None):
    """An argparse type: an integer >= lo."""
    what = what or ("an integer" if lo is None else f"an integer >= {lo}")

    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}") from None
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}; got {v}")
        return v
    return conv


def float_arg(lo: float, hi: float, what: str, open_lo: bool = False):
    """An argparse type: a number in [lo, hi] (or (lo, hi] with open_lo)."""
    def conv(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}") from None
        if math.isnan(v) or v > hi or v < lo or (open_lo and v == lo):
            raise argparse.ArgumentTypeError(f"expected {what}; got {text}")
        return v
    return conv


def writable(path: str, arg: str) -> None:
    """UsageError unless `path` can be written as a file: its directory exists and it is not a directory."""
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"argument {arg}: directory {str(parent)!r} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"argument {arg}: {path!r} is a directory; give a file name")


# -- devices, models, plans ----------------------------------------------------------------------------------------
def device(choice: str) -> str:
    """"auto" -> cuda when torch sees one, else cpu; "cuda" without CUDA is a UsageError."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("argument --device: CUDA was asked for but torch sees no CUDA device")
    return choice


def dtype(choice: str, device: str):
    """"auto" -> bfloat16 on CUDA, float32 elsewhere; else the torch dtype of that name."""
    import torch

    if choice == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, choice)


def load_model(model: str, dtype, device: str | None):
    """(model, tokenizer) from an alias, a directory or a .gguf; failures are CLIErrors naming the model."""
    from ..models import load

    say(f"loading {model} ({str(dtype).removeprefix('torch.')}, {device or 'cpu'}) ...")
    try:
        return load(model, dtype=dtype, device=device)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise CLIError(str(e)) from None
    except (OSError, ValueError, RuntimeError) as e:  # transformers: not a model directory, a bad config, ...
        raise CLIError(f"cannot load {model!r}: {e}") from None


def load_plan(name: str):
    """A plan file or shipped plan name; failures are CLIErrors."""
    from ..plan import Plan

    try:
        return Plan.load(name)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    import torch
    import transformers

    from .. import __version__

    return {"zigzag_attn": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)
