"""What a sentence-transformers folder declares about its embeddings: pooling and normalization.

``modules.json`` lists the modules after the transformer (``1_Pooling``, ``2_Normalize``);
the pooling module's ``config.json`` names the pooling mode. The CLI, ``model.embed`` and the
server all take their defaults from here, so one checkpoint gives one default everywhere.
https://github.com/UKPLab/sentence-transformers/blob/master/sentence_transformers/models/Pooling.py
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError

# pooling_mode_* keys of 1_Pooling/config.json -> cbert's pooling names, in sentence-transformers' order.
POOLING_MODES = (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                 ("pooling_mode_max_tokens", "max"))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None


def embedding_defaults(folder: str | Path) -> tuple[str | None, bool]:
    """(pooling, normalize) that ``folder``'s modules.json declares; (None, False) without one."""
    root = Path(folder)
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return None, False
    modules = _read_json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{modules_file}: expected a JSON list of module objects")
    pooling, normalize = None, False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith("Normalize"):
            normalize = True
        if kind.endswith("Pooling"):
            sub = str(m.get("path", ""))
            config_file = (root / sub / "config.json").resolve()
            if not config_file.is_relative_to(root.resolve()):
                raise CheckpointError(f"{modules_file}: module path {sub!r} points outside the checkpoint folder")
            if not config_file.is_file():
                raise CheckpointError(f"{modules_file}: names a Pooling module at {sub!r}, which has no config.json")
            config = _read_json(config_file)
            if not isinstance(config, dict):
                raise CheckpointError(f"{config_file}: expected a JSON object")
            found = [name for key, name in POOLING_MODES if config.get(key)]
            if not found:
                raise CheckpointError(f"{config_file}: no pooling mode cbert runs is on "
                                      f"({', '.join(key for key, _ in POOLING_MODES)})")
            pooling = found[0]
    return pooling, normalize
