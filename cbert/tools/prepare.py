"""``cbert prepare``: a Hugging Face snapshot folder -> what cbert runs.

Reads ``model.safetensors``, ``pytorch_model.bin`` (torch, ``weights_only=True``), or shards of
either (``*.index.json``); ``config.json`` or the old pytorch-pretrained-bert ``bert_config.json``;
``tokenizer.json`` or ``vocab.txt``; a sentence-transformers folder's ``modules.json``, module
``config.json`` files (``1_Pooling/``) and settings. Writes ``OUT/model.safetensors`` (one file,
float32, Hugging Face tensor names, TF-ported ``LayerNorm.gamma/beta`` renamed),
``OUT/config.json``, ``OUT/tokenizer.json`` built with the casing the model was trained with, and
the sentence-transformers files unchanged.

Every file read stays inside the snapshot (a shard index or modules.json naming ``/abs`` or
``../`` is an error). OUT is built in a new sibling folder, read back and loaded, and only then
renamed into place: a failing prepare leaves no trace and an existing OUT untouched; a
non-empty OUT is replaced only with ``overwrite=True``; nothing is written through a link.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoint import BUFFERS, SafetensorsFile, load_checkpoint
from ..config import ModelConfig, check_config_json
from ..errors import CheckpointError, UsageError
from ..extras import need
from ..families import by_model_type
from ..files import check_target, inside, open_regular, parse_json, read_bytes, staged_folder, write_new
from ..tokenizer import read_lowercase, vocab_is_cased

# TF-ported checkpoints (pytorch-pretrained-bert, Huang's ClinicalBERT) name LayerNorm's parameters
# gamma/beta; Hugging Face's from_pretrained renames them the same way.
_RENAMES = ((re.compile(r"\.gamma$"), ".weight"), (re.compile(r"\.beta$"), ".bias"))
# sentence-transformers' own files, carried over unchanged so a prepared folder pools and
# normalizes as its source declares (modules.json names the module folders: 1_Pooling/, ...).
ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
ST_APPLIED = ("Transformer", "Pooling", "Normalize")  # module types cbert's embed applies


@dataclass
class Prepared:
    out: Path
    source: str  # which weight file(s) were read
    tensors: int
    renamed: int
    casing: str
    architecture: str
    parameters: int
    carried: list[str] = field(default_factory=list)  # sentence-transformers files copied as they were


def _member(folder: Path, name: str) -> Path:
    """A file prepare reads by its own name: a link in the snapshot may not lead out of it."""
    return inside(folder, name, folder, "file")


def _shards(folder: Path, index: Path) -> list[Path]:
    weight_map = parse_json(read_bytes(index), index)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: not a shard index (expected a JSON object with a non-empty weight_map)")
    shards: dict[str, Path] = {}
    for tensor, name in weight_map.items():
        if name not in shards:
            shards[name] = inside(folder, name, index, f"weight_map[{tensor!r}] =")
    missing = [name for name, path in shards.items() if not path.is_file()]
    if missing:
        raise CheckpointError(f"{index}: lists shard(s) {', '.join(missing)} that are not in {folder}")
    return [shards[name] for name in sorted(shards)]


def weight_files(folder: Path) -> list[Path]:
    """The files holding the weights, safetensors first (no torch needed), then PyTorch .bin."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if os.path.lexists(folder / single):  # a directory or FIFO by that name is an error, not skipped
            return [_member(folder, single)]
        if os.path.lexists(folder / index_name):
            return _shards(folder, _member(folder, index_name))
    regular = [sorted(p for p in folder.glob(pattern) if p.is_file()) for pattern in ("*.safetensors", "*.bin")]
    others = regular[0] or regular[1]
    if len(others) == 1:
        return [_member(folder, others[0].name)]
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
        with open(open_regular(path), "rb") as fh:  # a FIFO is refused, not read forever
            state = torch.load(fh, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
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
        if not os.path.lexists(f):
            continue
        d = parse_json(read_bytes(_member(folder, name)), f)  # a directory or FIFO is an error, not a hang
        check_config_json(d, str(f))
        if name == "bert_config.json" or "model_type" not in d:
            d["model_type"] = d.get("model_type", "bert")  # pytorch-pretrained-bert configs name no type
        ModelConfig.from_dict(d, source=str(f))  # fail here, before writing anything, if cbert cannot run it
        return d
    raise CheckpointError(f"{folder}: no config.json or bert_config.json")


def build_tokenizer(folder: Path, out: Path) -> str:
    """Write out/tokenizer.json; returns the casing and why."""
    tj = folder / "tokenizer.json"
    if tj.is_file():
        data = read_bytes(_member(folder, tj.name))
        spec = parse_json(data, tj)
        norm = (spec.get("normalizer") if isinstance(spec, dict) else None) or {}
        if not isinstance(norm, dict):
            raise CheckpointError(f"{tj}: normalizer is a {type(norm).__name__}, expected a JSON object")
        write_new(out / "tokenizer.json", data)
        return ("uncased" if norm.get("lowercase") else "cased") + " (normalizer of the snapshot's tokenizer.json)"
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise CheckpointError(f"{folder}: no tokenizer.json or vocab.txt")
    _member(folder, vocab.name)
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


def sentence_transformers_files(folder: Path, log=print) -> dict[str, bytes]:
    """{path in OUT: bytes} of the sentence-transformers files to carry over, each checked to be JSON
    of the right shape; module paths in modules.json stay inside the snapshot."""
    found: dict[str, bytes] = {}
    parsed: dict[str, object] = {}
    for name in ST_FILES:
        f = folder / name
        if os.path.lexists(f):
            found[name] = read_bytes(_member(folder, name))
            parsed[name] = parse_json(found[name], f)
            if not isinstance(parsed[name], list if name == "modules.json" else dict):
                raise CheckpointError(f"{f}: expected a JSON {'list' if name == 'modules.json' else 'object'}")
    source = folder / "modules.json"
    for i, module in enumerate(parsed.get("modules.json", [])):
        if not (isinstance(module, dict) and isinstance(module.get("path", ""), str)
                and isinstance(module.get("type", ""), str)):
            raise CheckpointError(f"{source}: entry {i} is not an object with a path and a type")
        rel, kind = module.get("path", ""), module.get("type", "")
        if rel in ("", ".", "./"):
            continue  # the transformer itself: what prepare writes
        sub = inside(folder, rel, source, f"entry {i} path")
        if kind.rsplit(".", 1)[-1] not in ST_APPLIED:
            log(f"modules.json: module {rel!r} ({kind}) is carried over, but cbert's embed does not apply it")
        if os.path.lexists(sub / "config.json"):
            name = f"{Path(rel).as_posix().strip('/')}/config.json"
            data = read_bytes(inside(folder, name, source, f"entry {i} config"))
            if not isinstance(parse_json(data, sub / "config.json"), dict):
                raise CheckpointError(f"{sub / 'config.json'}: expected a JSON object")
            found[name] = data
    return found


def check_out(out: Path, src: Path | None = None, overwrite: bool = False) -> None:
    """Refuse an OUT that prepare must not replace, before any reading or downloading: what
    ``staged_folder`` refuses, a folder holding SRC, and (even with overwrite) one that is not a
    checkpoint, so that ``--overwrite`` with a mistaken OUT cannot delete a home folder."""
    check_target(out, overwrite, "OUT")
    if not out.exists() or not any(out.iterdir()):
        return
    if src is not None and (out.resolve() == src.resolve() or out.resolve() in src.resolve().parents):
        raise UsageError(f"{out}: OUT must be a new folder, not the snapshot itself or a folder holding it")
    if not (out / "config.json").is_file():
        raise UsageError(f"{out}: OUT is not a checkpoint folder (no config.json); not replacing it, even "
                         "with --overwrite")


def _verify(folder: Path, tensors: dict[str, np.ndarray]) -> tuple[str, int]:
    """Read the written folder back: the same tensors bit for bit, a checkpoint cbert loads, a
    tokenizer tokenizers reads. Returns (architecture, parameters)."""
    written = SafetensorsFile(folder / "model.safetensors")
    if set(written.names()) != set(tensors) or any(
            not np.array_equal(written.get(n).view(np.uint32), a.view(np.uint32)) for n, a in tensors.items()):
        raise CheckpointError(f"{folder / 'model.safetensors'}: reading it back does not give the tensors written")
    ckpt = load_checkpoint(folder)  # every tensor present, with its shape
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # tokenizers raises its own Exception type for a bad file
        raise CheckpointError(f"{folder / 'tokenizer.json'}: cannot be read by tokenizers ({e})") from None
    return ckpt.architecture, ckpt.num_parameters


def prepare(src: str | Path, out: str | Path, log=print, overwrite: bool = False) -> Prepared:
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such snapshot folder")
    check_out(out, src, overwrite)
    config = read_config(src)
    files = weight_files(src)
    carried = sentence_transformers_files(src, log)
    log(f"reading {', '.join(f.name for f in files)} from {src}")
    tensors, renamed = read_weights(files)
    _drop_tied_decoder(tensors, config)
    from safetensors.numpy import save_file

    with staged_folder(out, overwrite, "OUT") as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_new(tmp / "config.json", (json.dumps(config, indent=2) + "\n").encode())
        casing = build_tokenizer(src, tmp)
        for name, data in carried.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            write_new(tmp / name, data)
        architecture, parameters = _verify(tmp, tensors)
    return Prepared(out, ", ".join(f.name for f in files), len(tensors), renamed, casing, architecture, parameters,
                    sorted(carried))
