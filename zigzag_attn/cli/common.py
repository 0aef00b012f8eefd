"""What every command shares: the two error kinds, argument types, device/dtype choice, loading models and plans."""

from __future__ import annotations

import argparse
import math
import sys
from contextlib import contextmanager
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


def read_text(path: str, arg: str) -> str:
    """A UTF-8 text file's contents; a file that is not text (compressed, binary) is a UsageError naming `arg`."""
    from ..data.texts import decode_text

    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise CLIError(f"cannot read {arg}: {e}") from None
    try:
        return decode_text(data, repr(path))
    except ValueError as e:
        raise UsageError(f"argument {arg}: {e}") from None


def can_plot(arg: str) -> None:
    """CLIError, before any work, when `arg` asks for a PNG and matplotlib is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise CLIError(f"{arg} needs matplotlib, a dependency of zigzag-attn: pip install matplotlib")


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


class Model:
    """A model argument whose config has been read (no weights yet), so plans and lengths can be checked first.

    info: its `ModelInfo`; context: max_position_embeddings (None when the config does not say).
    """

    def __init__(self, name: str):
        from ..model_info import config_info
        from ..models import read_config

        self.name = name
        with _load_errors(name):
            self.config = read_config(name)
            self.info = config_info(self.config)
        self.context = getattr(self.config.get_text_config(decoder=True), "max_position_embeddings", None)

    def check_plan(self, plan, what: str = "the plan") -> None:
        """CLIError when `plan` cannot drive this model."""
        try:
            plan.check_model(self.info)
        except ValueError as e:
            raise CLIError(f"{what} does not fit {self.name}: {e}") from None

    def check_length(self, tokens: int, arg: str) -> None:
        """UsageError naming `arg` when `tokens` is longer than the model's context."""
        if self.context and tokens > self.context:
            raise UsageError(f"argument {arg}: {tokens} tokens is longer than {self.name}'s context "
                             f"(max_position_embeddings = {self.context})")

    def load(self, dtype, device: str | None):
        """(model, tokenizer), with the config already read."""
        from ..models import load

        say(f"loading {self.name} ({str(dtype).removeprefix('torch.')}, {device or 'cpu'}) ...")
        with _load_errors(self.name):
            return load(self.name, dtype=dtype, device=device, config=self.config)


@contextmanager
def _load_errors(name: str):
    """Turns what loading a model argument raises into a CLIError naming it."""
    try:
        yield
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise CLIError(str(e)) from None
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # not a model directory, a bad config, ...
        raise CLIError(f"cannot load {name!r}: {e}") from None


def load_plan(name: str):
    """A plan file or shipped plan name; failures are CLIErrors."""
    from ..plan import Plan

    try:
        return Plan.load(name)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None


def with_kv_dtype(plan, kv_dtype: str | None, device: str | None):
    """`plan` with its retrieval KV stored as `kv_dtype` (None: as the plan says); a UsageError, before any model
    loads, when FP8 cannot be stored on `device`."""
    if kv_dtype is not None:
        plan = plan.with_kv_dtype(kv_dtype)
    if plan.kv_dtype == "fp8":
        from ..runtime.quant import fp8_problem

        why = fp8_problem(device or "cpu")
        if why:
            raise UsageError(f"argument --kv-dtype: the plan stores retrieval KV in FP8, but {why}")
    return plan


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
