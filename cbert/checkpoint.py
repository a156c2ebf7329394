"""Checkpoint loading: config.json + model.safetensors, memory-mapped, checked at load.

The safetensors header is parsed here and every tensor is a read-only numpy view into one
memory map of the file, so loading makes no second copy of the weights. Each tensor's
presence, dtype and shape is checked against what the config implies, and every problem
is a :class:`CheckpointError` naming the file and the tensor.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import BertConfig
from .errors import CheckpointError
from .graph import Heads, expected_shapes

# safetensors dtype codes -> numpy; BF16 is read as uint16 and widened at load.
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}

# Prefixes a Hugging Face class puts before the BertModel's own names.
PREFIXES = ("bert.",)

# Tensors that are buffers or duplicates of tied weights, not parameters of their own.
IGNORED = ("embeddings.position_ids", "cls.predictions.decoder.bias", "cls.predictions.bias")

# Hugging Face's MLM forward adds the decoder's own bias; it is tied to cls.predictions.bias
# in released checkpoints, but a model saved untied keeps both and uses decoder.bias.
PREFERRED = {"cls.predictions.bias": "cls.predictions.decoder.bias"}

ARCHITECTURES = ("BertModel", "BertForPreTraining", "BertForMaskedLM")


class SafetensorsFile:
    """A read-only, memory-mapped safetensors file: ``names()`` and ``get(name)`` views."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            fh = open(self.path, "rb")
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open ({e.strerror})") from None
        with fh:
            size = self.path.stat().st_size
            if size < 8:
                raise CheckpointError(f"{self.path}: not a safetensors file ({size} bytes, too short for a header)")
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > min(size - 8, 100 << 20):
                raise CheckpointError(
                    f"{self.path}: not a safetensors file (header length {n} does not fit in {size} bytes)")
            try:
                header = json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"{self.path}: not a safetensors file (header is not JSON)") from None
            if not isinstance(header, dict):
                raise CheckpointError(f"{self.path}: not a safetensors file (header is not a JSON object)")
            self.metadata = header.pop("__metadata__", None) or {}
            self.header = header
            self._data_start = 8 + n
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
        data_len = size - self._data_start
        for name, info in header.items():
            try:
                begin, end = info["data_offsets"]
                dtype = info["dtype"]
                shape = tuple(info["shape"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {name!r} has a malformed header entry") from None
            if dtype not in _DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
            if end > data_len:
                raise CheckpointError(
                    f"{self.path}: truncated: tensor {name!r} ends at byte {end} of the data section "
                    f"but the file holds only {data_len} bytes of data")
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
            if end - begin != nbytes:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r}: {end - begin} bytes stored for shape {list(shape)} {dtype}")

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        """A zero-copy view for F32; F16/BF16 widened to float32 (one copy of that tensor)."""
        info = self.header[name]
        begin, end = info["data_offsets"]
        a = np.frombuffer(self._map, dtype=_DTYPES[info["dtype"]], count=(end - begin) // np.dtype(
            _DTYPES[info["dtype"]]).itemsize, offset=self._data_start + begin).reshape(info["shape"])
        if info["dtype"] == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if a.dtype in (np.float16, np.float64):
            return a.astype(np.float32)
        return a


@dataclass
class Checkpoint:
    path: Path
    config: BertConfig
    weights_file: Path
    params: dict[str, np.ndarray]
    heads: Heads  # what the Hugging Face class outputs
    loaded: Heads  # every head whose tensors the file holds
    architecture: str
    num_parameters: int


def canonical(name: str) -> str:
    for p in PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def find_weights(folder: Path) -> Path:
    st = folder / "model.safetensors"
    if st.is_file():
        return st
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:
        return others[0]
    if len(others) > 1 or (folder / "model.safetensors.index.json").exists():
        raise CheckpointError(
            f"{folder}: sharded or several .safetensors files ({', '.join(p.name for p in others)}); "
            "merge them into one model.safetensors first")
    if any((folder / n).exists() for n in ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index")):
        raise CheckpointError(
            f"{folder}: has no model.safetensors, only PyTorch/TensorFlow weights; convert them to safetensors "
            "(transformers: model.save_pretrained(OUT, safe_serialization=True))")
    raise CheckpointError(f"{folder}: no model.safetensors in this folder")


def detect_heads(cfg: BertConfig, names: set[str], source: str) -> tuple[Heads, str]:
    """Which heads the tensors hold, and the Hugging Face class whose output names we use."""
    has_pooler = "pooler.dense.weight" in names
    has_mlm = "cls.predictions.transform.dense.weight" in names
    has_nsp = "cls.seq_relationship.weight" in names
    tied = "cls.predictions.decoder.weight" not in names
    declared = [a for a in cfg.architectures if a.startswith("Bert")]
    if declared and declared[0] not in ARCHITECTURES:
        raise CheckpointError(
            f"{source}: architectures = {declared[0]!r} is not supported; cbert runs {', '.join(ARCHITECTURES)}")
    arch = declared[0] if declared else (
        "BertForPreTraining" if has_mlm and has_nsp else "BertForMaskedLM" if has_mlm else "BertModel")
    if arch == "BertForPreTraining":
        return Heads(pooler=True, mlm=True, nsp=True, tied_decoder=tied, mlm_output="prediction_logits"), arch
    if arch == "BertForMaskedLM":
        # Hugging Face's BertForMaskedLM has no pooler; a pooler in the file is still usable.
        return Heads(pooler=False, mlm=True, nsp=False, tied_decoder=tied), arch
    return Heads(pooler=has_pooler, mlm=False, nsp=False, tied_decoder=tied), arch


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    folder = path if path.is_dir() else path.parent
    cfg = BertConfig.from_file(folder / "config.json")
    weights_file = path if path.is_file() else find_weights(folder)
    st = SafetensorsFile(weights_file)

    canon: dict[str, str] = {}
    for raw in st.names():
        c = canonical(raw)
        if c in canon:
            raise CheckpointError(f"{weights_file}: tensor {c!r} is stored twice (as {canon[c]!r} and {raw!r})")
        canon[c] = raw
    for name, better in PREFERRED.items():
        if better in canon:
            canon[name] = canon[better]
    heads, arch = detect_heads(cfg, set(canon), str(folder / "config.json"))
    # Every head whose tensors are present is loaded, even if the class does not output
    # it (model.mlm_logits() on a BertModel file that still has cls.*).
    usable = Heads(pooler="pooler.dense.weight" in canon or heads.pooler or heads.nsp,
                   mlm="cls.predictions.transform.dense.weight" in canon or heads.mlm,
                   nsp="cls.seq_relationship.weight" in canon or heads.nsp,
                   tied_decoder=heads.tied_decoder)
    want = expected_shapes(cfg, usable)

    missing = [n for n in want if n not in canon]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(
            f"{weights_file}: missing tensor{'s' if len(missing) > 1 else ''} {', '.join(missing[:5])}{more} "
            f"(config.json says {cfg.num_hidden_layers} layers, architecture {arch})")
    unexpected = [canon[n] for n in canon if n not in want and n not in IGNORED]
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise CheckpointError(
            f"{weights_file}: unexpected tensor{'s' if len(unexpected) > 1 else ''} "
            f"{', '.join(unexpected[:5])}{more}: not part of a {arch} with the config's "
            f"{cfg.num_hidden_layers} layers, nor of any head cbert knows")
    params: dict[str, np.ndarray] = {}
    for name, shape in want.items():
        got = st.shape(canon[name])
        if got != shape:
            raise CheckpointError(
                f"{weights_file}: tensor {canon[name]!r} has shape {list(got)}, expected {list(shape)} "
                f"from config.json (hidden_size={cfg.hidden_size}, intermediate_size={cfg.intermediate_size}, "
                f"vocab_size={cfg.vocab_size}, max_position_embeddings={cfg.max_position_embeddings})")
        a = st.get(canon[name])
        if a.dtype != np.float32:
            raise CheckpointError(f"{weights_file}: tensor {canon[name]!r} has dtype {a.dtype}, expected a float")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{weights_file}: tensor {canon[name]!r} holds NaN or infinite values")
        params[name] = a
    n_params = sum(int(np.prod(s)) for s in want.values())
    return Checkpoint(folder, cfg, weights_file, params, heads, usable, arch, n_params)
