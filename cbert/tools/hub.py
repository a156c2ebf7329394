"""``cbert download``: a Hugging Face repository (or a preset name) -> a prepared cbert folder.

Goes through ``huggingface_hub.snapshot_download`` (its cache, its progress bars, ``HF_ENDPOINT``,
``HF_TOKEN``), fetching only what ``cbert prepare`` reads: one set of weights (safetensors when
the repository has them, else PyTorch .bin), configs, tokenizer files and a sentence-transformers
model's ``modules.json`` and module configs. Every file is then checked against what the hub
declares for it (``model_info(files_metadata=True)``): LFS files by their sha256, the others by
their git blob id; both by size. Only then is the snapshot prepared into OUT.
"""

from __future__ import annotations

import hashlib
import os
import re
from fnmatch import fnmatch
from glob import escape
from pathlib import Path

from ..config import PRESETS
from ..errors import CheckpointError
from ..extras import need
from .prepare import ST_FILES, Prepared, check_out, prepare

META = ["config.json", "bert_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
        "special_tokens_map.json", *ST_FILES]
# sentence-transformers module folders are named {index}_{Module}: 1_Pooling/config.json, ...
MODULE_CONFIG = re.compile(r"[0-9]+_[^/]+/config\.json")
WEIGHTS = (["model.safetensors", "model-*.safetensors", "model.safetensors.index.json"],
           ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"])
_CHUNK = 1 << 20


def resolve_repo(name: str) -> str:
    """A preset key (``bio-clinicalbert``) or a repository id (``owner/name``)."""
    if name in PRESETS:
        return PRESETS[name]["repo"]
    if name.count("/") == 1 and all(name.split("/")):
        return name
    raise ValueError(f"unknown preset {name!r}: presets are {', '.join(PRESETS)}; "
                     "or give a Hugging Face repository id (owner/name)")


def choose_files(files: list[str], repo: str) -> list[str]:
    """The repository's files that prepare reads: safetensors weights if any, else .bin."""
    for patterns in WEIGHTS:
        if any(fnmatch(f, p) for f in files for p in patterns):
            return sorted(f for f in files if f in META or MODULE_CONFIG.fullmatch(f)
                          or any(fnmatch(f, p) for p in patterns))
    raise CheckpointError(f"{repo}: the repository has no model.safetensors or pytorch_model.bin "
                          f"(files: {', '.join(sorted(files)[:12]) or 'none'})")


def git_blob_id(path: Path) -> str:
    """The id git gives a file's content (what the hub declares for a file not in LFS)."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    _feed(h, path)
    return h.hexdigest()


def _feed(h, path: Path) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)


def verify_snapshot(folder: Path, declared: dict, repo: str) -> int:
    """Every file of the downloaded snapshot against the hub's declaration (``RepoSibling``s by name):
    LFS files by size and sha256, the rest by size and git blob id. A file the hub declares nothing
    for cannot be checked, and is an error too. Returns how many files were checked."""
    checked = 0
    for root, _dirs, names in os.walk(folder):
        for name in sorted(names):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            sibling = declared.get(rel)
            lfs = sibling.lfs if sibling is not None else None
            size = lfs.size if lfs else getattr(sibling, "size", None)
            digest = lfs.sha256 if lfs else getattr(sibling, "blob_id", None)
            if size is None or not digest:
                raise CheckpointError(f"{repo}: {rel}: the hub declares no size and "
                                      f"{'sha256' if lfs else 'hash'} for it, so the download cannot be verified")
            got = path.stat().st_size
            if got == size:
                if lfs:
                    h = hashlib.sha256()
                    _feed(h, path)
                    got_digest = h.hexdigest()
                else:
                    got_digest = git_blob_id(path)
                if got_digest == digest:
                    checked += 1
                    continue
                what = f"{'sha256' if lfs else 'git blob id'} {got_digest}, the hub declares {digest}"
            else:
                what = f"{got} bytes, the hub declares {size}"
            raise CheckpointError(f"{repo}: {rel}: the downloaded file does not match the hub ({what}); delete "
                                  f"{path.resolve()} from huggingface_hub's cache and download again")
    return checked


def download(name: str, out: str | Path, revision: str | None = None, log=print,
             overwrite: bool = False) -> Prepared:
    repo = resolve_repo(name)
    check_out(Path(out), None, overwrite)  # refuse before downloading anything
    hub = need("huggingface_hub", "cbert download")
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = hub.HfApi().model_info(repo, revision=revision, files_metadata=True)
        declared = {s.rfilename: s for s in info.siblings or []}
        files = choose_files(list(declared), repo)
        log(f"downloading {repo}@{revision or 'main'} ({info.sha}) from {hub.constants.ENDPOINT}")
        # Exact names (escaped: allow_patterns are fnmatch patterns).
        folder = hub.snapshot_download(repo, revision=info.sha, allow_patterns=[escape(f) for f in files])
    except RevisionNotFoundError:
        raise ValueError(f"{repo}: no revision {revision!r} in this repository") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{repo}: no such repository on {hub.constants.ENDPOINT} (or it is private/gated: "
                         "log in with `hf auth login` or set HF_TOKEN)") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{repo}: download failed ({type(e).__name__}: {first})") from None
    log(f"snapshot in {folder}")
    n = verify_snapshot(Path(folder), declared, repo)
    log(f"verified {n} files against the hub's sizes, sha256 (LFS files) and git blob ids (the others)")
    return prepare(folder, out, log=log, overwrite=overwrite)
