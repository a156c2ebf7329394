"""``cbert download``: a Hugging Face repository (or a preset name) -> a prepared cbert folder.

Goes through ``huggingface_hub.snapshot_download`` (its cache, its progress bars, ``HF_ENDPOINT``,
``HF_TOKEN``), fetching only what ``cbert prepare`` reads: one set of weights (safetensors when
the repository has them, else PyTorch .bin), configs and tokenizer files.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from ..config import PRESETS
from ..errors import CheckpointError
from ..extras import need
from .prepare import Prepared, prepare

META = ["config.json", "bert_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
        "special_tokens_map.json"]
WEIGHTS = (["model.safetensors", "model-*.safetensors", "model.safetensors.index.json"],
           ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"])


def resolve_repo(name: str) -> str:
    """A preset key (``bio-clinicalbert``) or a repository id (``owner/name``)."""
    if name in PRESETS:
        return PRESETS[name]["repo"]
    if name.count("/") == 1 and all(name.split("/")):
        return name
    raise ValueError(f"unknown preset {name!r}: presets are {', '.join(PRESETS)}; "
                     "or give a Hugging Face repository id (owner/name)")


def choose_files(files: list[str], repo: str) -> list[str]:
    """Patterns for the files prepare needs: safetensors weights if any, else .bin."""
    for patterns in WEIGHTS:
        if any(fnmatch(f, p) for f in files for p in patterns):
            return META + patterns
    raise CheckpointError(f"{repo}: the repository has no model.safetensors or pytorch_model.bin "
                          f"(files: {', '.join(sorted(files)[:12]) or 'none'})")


def download(name: str, out: str | Path, revision: str | None = None, log=print) -> Prepared:
    repo = resolve_repo(name)
    hub = need("huggingface_hub", "cbert download")
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = hub.HfApi().model_info(repo, revision=revision)
        patterns = choose_files([s.rfilename for s in info.siblings or []], repo)
        log(f"downloading {repo}@{revision or 'main'} ({info.sha}) from {hub.constants.ENDPOINT}")
        folder = hub.snapshot_download(repo, revision=info.sha, allow_patterns=patterns)
    except RevisionNotFoundError:
        raise ValueError(f"{repo}: no revision {revision!r} in this repository") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{repo}: no such repository on {hub.constants.ENDPOINT} (or it is private/gated: "
                         "log in with `hf auth login` or set HF_TOKEN)") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{repo}: download failed ({type(e).__name__}: {first})") from None
    log(f"snapshot in {folder}")
    return prepare(folder, out, log=log)
