"""`zigzag-attn`: calibrate a plan for a model, show it, generate with it, evaluate it.

    zigzag-attn calibrate smollm2-135m --out plan.json --retrieval-ratio 0.5
    zigzag-attn show plan.json --png plan.png
    zigzag-attn generate smollm2-135m --plan plan.json --prompt-file long.txt --chat
    zigzag-attn eval niah smollm2-135m --plan plan.json --lengths 2048,4096

One module per command (`add_parser(subparsers)` and `run(args, argv)`); `common.py` holds what they share. Bad
arguments exit with status 2 and a one-line message naming the argument; runtime failures (a missing file or
package, a plan that does not fit the model) print `error: ...` and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import calibrate, eval, generate, show
from .common import PROG, CLIError, UsageError

COMMANDS = (calibrate, show, generate, eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Layer-exclusive retrieval/streaming attention plans "
                                     "for HuggingFace transformers models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args, argv) or 0)
    except UsageError as e:
        args.parser.error(str(e))
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `zigzag-attn show plan.json | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FileNotFoundError, ModuleNotFoundError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
    except (ValueError, RuntimeError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    return 1


__all__ = ["build_parser", "main"]
