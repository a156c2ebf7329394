"""The ``cbert`` command line, one module per command group: tasks (embed, fill-mask, classify,
ner, qa), inspect (info, devices) and tools (prepare, download, parity, bench, attention).

Every error a user can cause (a bad path, a bad checkpoint, a bad input, a backend that
is not installed) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import BackendUnavailable, CheckpointError, InputError, UsageError
from .common import default_model_path
from .corpus import add_corpus_parser
from .inspect import add_inspect_parsers
from .tasks import add_task_parsers
from .tools import add_tool_parsers

__all__ = ["build_parser", "default_model_path", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbert", description="Run ClinicalBERT-family encoders on numpy, MLX or WebGPU.")
    p.add_argument("--version", action="version", version=f"cbert {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add_task_parsers(sub)
    add_inspect_parsers(sub)
    add_tool_parsers(sub)
    add_corpus_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, InputError, BackendUnavailable, UsageError, ValueError, FloatingPointError) as e:
        print(f"cbert {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
