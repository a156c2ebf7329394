"""``cbert prepare``: a Hugging Face snapshot folder -> what cbert runs.

Reads ``model.safetensors``, ``pytorch_model.bin`` (torch, ``weights_only=True``), or shards of
either (``*.index.json``); ``config.json`` or the old pytorch-pretrained-bert ``bert_config.json``;
``tokenizer.json`` or ``vocab.txt``. Writes ``OUT/model.safetensors`` (one file, float32, Hugging
Face tensor names, TF-ported ``LayerNorm.gamma/beta`` renamed), ``OUT/config.json`` and
``OUT/tokenizer.json`` built with the casing the model was trained with, then loads the result
to prove it runs.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import BUFFERS, SafetensorsFile, load_checkpoint
from ..config import ModelConfig
from ..errors import CheckpointError
from ..extras import need
from ..families import by_model_type
from ..tokenizer import read_lowercase, vocab_is_cased

# TF-ported checkpoints (pytorch-pretrained-bert, Huang's ClinicalBERT) name LayerNorm's parameters
# gamma/beta; Hugging Face's from_pretrained renames them the same way.
_RENAMES = ((re.compile(r"\.gamma$"), ".weight"), (re.compile(r"\.beta$"), ".bias"))


@dataclass
class Prepared:
    out: Path
    source: str  # which weight file(s) were read
    tensors: int
    renamed: int
    casing: str
    architecture: str
    parameters: int


def _shards(folder: Path, index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index}: not a shard index (expected a JSON object with weight_map; {e})") from None
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{index}: lists shard(s) {', '.join(missing)} that are not in {folder}")
    return [folder / f for f in files]


def weight_files(folder: Path) -> list[Path]:
    """The files holding the weights, safetensors first (no torch needed), then PyTorch .bin."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index_name).is_file():
            return _shards(folder, folder / index_name)
    others = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if len(others) == 1:
        return others
    if others:
        raise CheckpointError(f"{folder}: several weight files ({', '.join(p.name for p in others)}) and no "
                              "*.index.json saying how they fit together")
    tf = [n for n in ("tf_model.h5", "model.ckpt.index", "flax_model.msgpack") if (folder / n).exists()]
    also = f" (only {', '.join(tf)}, which cbert does not read)" if tf else ""
    raise CheckpointError(f"{folder}: no weights: no model.safetensors, pytorch_model.bin or *.index.json{also}")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    st = SafetensorsFile(path)
    return {name: st.get(name) for name in st.names()}


def _read_bin(path: Path) -> dict[str, np.ndarray]:
    torch = need("torch", f"reading {path.name}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean the same thing here
        why = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (torch.load with weights_only=True "
                              f"failed: {why[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    out = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor")
        out[name] = t.detach().float().numpy() if t.is_floating_point() else t.numpy()
    return out


def read_weights(files: list[Path]) -> tuple[dict[str, np.ndarray], int]:
    """Every tensor of every file, float32, TF-ported names renamed; (tensors, how many renamed)."""
    tensors: dict[str, np.ndarray] = {}
    renamed = 0
    for f in files:
        part = _read_safetensors(f) if f.suffix == ".safetensors" else _read_bin(f)
        for name, a in part.items():
            new = name
            for pattern, repl in _RENAMES:
                new = pattern.sub(repl, new)
            renamed += new != name
            if new in tensors:
                raise CheckpointError(f"{f}: tensor {new!r} appears twice (once as {name!r})")
            if any(new.endswith(b) for b in BUFFERS) or not np.issubdtype(a.dtype, np.floating):
                continue  # buffers (position_ids), not parameters
            tensors[new] = np.ascontiguousarray(a, dtype=np.float32)
    if not tensors:
        raise CheckpointError(f"{files[0]}: holds no floating-point tensors")
    return tensors, renamed


def _drop_tied_decoder(tensors: dict[str, np.ndarray], config: dict) -> None:
    """Hugging Face ties the MLM decoder to the word embeddings and does not save it twice."""
    if config.get("tie_word_embeddings", True) is False:
        return
    mlm = by_model_type(config["model_type"]).mlm
    dec = next((k for k in tensors if mlm and k.endswith(mlm.decoder_weight)), None)
    emb = next((k for k in tensors if k.endswith("embeddings.word_embeddings.weight")), None)
    if dec and emb and tensors[dec].shape == tensors[emb].shape and np.array_equal(tensors[dec], tensors[emb]):
        del tensors[dec]


def read_config(folder: Path) -> dict:
    for name in ("config.json", "bert_config.json"):
        f = folder / name
        if not f.is_file():
            continue
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{f}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise CheckpointError(f"{f}: expected a JSON object")
        if name == "bert_config.json" or "model_type" not in d:
            d["model_type"] = d.get("model_type", "bert")  # pytorch-pretrained-bert configs name no type
        ModelConfig.from_dict(d, source=str(f))  # fail here, before writing anything, if cbert cannot run it
        return d
    raise CheckpointError(f"{folder}: no config.json or bert_config.json")


def build_tokenizer(folder: Path, out: Path) -> str:
    """Write out/tokenizer.json; returns the casing and why."""
    tj = folder / "tokenizer.json"
    if tj.is_file():
        try:
            norm = json.loads(tj.read_text(encoding="utf-8")).get("normalizer") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise CheckpointError(f"{tj}: not valid JSON ({e})") from None
        shutil.copyfile(tj, out / "tokenizer.json")
        return ("uncased" if norm.get("lowercase") else "cased") + " (normalizer of the snapshot's tokenizer.json)"
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise CheckpointError(f"{folder}: no tokenizer.json or vocab.txt")
    from tokenizers.implementations import BertWordPieceTokenizer

    lowercase, said = read_lowercase(folder)
    if lowercase is None:
        cased, capitals = vocab_is_cased(vocab)
        lowercase = not cased
        said = (f"no do_lower_case in tokenizer_config.json; vocab.txt has {capitals} tokens with capitals, "
                f"so the model was trained {'cased' if cased else 'uncased'}")
    try:
        tok = BertWordPieceTokenizer(str(vocab), lowercase=lowercase)
    except Exception as e:
        raise CheckpointError(f"{vocab}: not a WordPiece vocabulary ({e})") from None
    tok.save(str(out / "tokenizer.json"))
    return ("uncased" if lowercase else "cased") + f" ({said})"


def prepare(src: str | Path, out: str | Path, log=print) -> Prepared:
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such snapshot folder")
    if out.resolve() == src.resolve():
        raise CheckpointError(f"{out}: OUT must be a new folder, not the snapshot itself")
    config = read_config(src)
    files = weight_files(src)
    log(f"reading {', '.join(f.name for f in files)} from {src}")
    tensors, renamed = read_weights(files)
    _drop_tied_decoder(tensors, config)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.numpy import save_file

    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    casing = build_tokenizer(src, out)
    ckpt = load_checkpoint(out)  # proves the result loads: every tensor present, with its shape
    return Prepared(out, ", ".join(f.name for f in files), len(tensors), renamed, casing, ckpt.architecture,
                    ckpt.num_parameters)
