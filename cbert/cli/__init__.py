"""The ``cbert`` command line, one module per command group: tasks (embed, fill-mask, classify,
ner, qa), inspect (info, devices), tools (prepare, download, parity, bench, attention) and explain.

Every error a user can cause (a bad path, a bad checkpoint, a bad input, a backend that
is not installed) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import BackendUnavailable, CheckpointError, InputError, UsageError
from .adapt import add_adapt_parsers
from .common import default_model_path
from .corpus import add_corpus_parser
from .explain import add_explain_parser
from .inspect import add_inspect_parsers
from .serve import add_serve_parser
from .tasks import add_task_parsers
from .tools import add_tool_parsers
from .train import add_train_parser

__all__ = ["build_parser", "default_model_path", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbert", description="Run ClinicalBERT-family encoders on numpy, MLX or WebGPU.")
    p.add_argument("--version", action="version", version=f"cbert {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add_task_parsers(sub)
    add_inspect_parsers(sub)
    add_tool_parsers(sub)
    add_serve_parser(sub)
    add_corpus_parser(sub)
    add_train_parser(sub)
    add_explain_parser(sub)
    add_adapt_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures (checkpoint, input, config, network, file system, a
    missing extra) are one line on stderr and exit 2; anything else is an internal error whose
    traceback is saved to a file named on stderr, exit 1."""
    args = build_parser().parse_args(argv)
    _quiet_vulkan_loader()
    try:
        return args.func(args)
    except (CheckpointError, InputError, BackendUnavailable, UsageError, ValueError, FloatingPointError) as e:
        return _fail(args.command, str(e))
    except OSError as e:  # file system and network (requests' errors are OSErrors)
        return _fail(args.command, _os_error(e))
    except KeyboardInterrupt:
        return 130
    except Exception:
        report = _save_traceback(args.command)
        print(f"cbert {args.command}: internal error (a bug in cbert; please report it); traceback saved to {report}",
              file=sys.stderr)
        return 1


def _fail(command: str, message: str) -> int:
    print(f"cbert {command}: error: {message}", file=sys.stderr)
    return 2


def _os_error(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return f"{type(e).__name__}: {e}"


def _save_traceback(command: str) -> str:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix=f"cbert-{command}-", suffix=".traceback.txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"cbert {__version__}, python {sys.version.split()[0]}, argv {sys.argv!r}\n\n")
        traceback.print_exc(file=f)
    return path


def _quiet_vulkan_loader() -> None:
    """An application-level setting, made by the command line only (the library leaves the
    environment alone): without XDG_RUNTIME_DIR, the Wayland client library that Mesa's Vulkan
    drivers load prints a harmless but alarming error four times while wgpu lists adapters."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        import tempfile

        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="cbert-xdg-")
