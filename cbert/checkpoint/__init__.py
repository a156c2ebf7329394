"""Checkpoint loading: config.json + model.safetensors, memory-mapped, checked at load.

Tensors come from :class:`~cbert.checkpoint.safetensors.SafetensorsFile` (memory-mapped,
no second copy of the weights). Each tensor's
presence, dtype and shape is checked against what the config implies, and every problem
is a :class:`CheckpointError` naming the file and the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import CheckpointError
from ..families import architectures, build_graph, family_of
from ..heads import Heads
from ..ir import Graph, infer_shapes
from .safetensors import SafetensorsFile

# Buffers, not parameters.
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


@dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    weights_file: Path
    params: dict[str, np.ndarray]
    heads: Heads  # what the forward outputs: the Hugging Face class's heads (and a pooler if present)
    loaded: Heads  # every head whose tensors the file holds
    architecture: str
    num_parameters: int
    # The model's one graph: every head the file holds, every hidden state an output. A forward
    # selects what it returns from it; host heads are cut from it (cbert.heads).
    graph: Graph
    weights: SafetensorsFile | None = None  # the open file, for check_unchanged() before host-side compute
    # Each parameter's name as the file spells it (with the family's prefix where the file has one):
    # gradients and saved folders use these names.
    tensor_names: dict[str, str] | None = None

    def params_for(self, graph: Graph) -> dict[str, np.ndarray]:
        """The tensors ``graph`` reads."""
        return {name: self.params[name] for name in graph.params if name in self.params}


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
            "merge them into one model.safetensors first (cbert prepare does)")
    if any((folder / n).exists() for n in ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index")):
        raise CheckpointError(
            f"{folder}: has no model.safetensors, only PyTorch/TensorFlow weights; convert them to safetensors "
            "(transformers: model.save_pretrained(OUT, safe_serialization=True))")
    raise CheckpointError(f"{folder}: no model.safetensors in this folder")


def _labels(cfg: ModelConfig, n: int, source: str, what: str) -> None:
    labels = cfg.id2label
    if not labels:
        # Hugging Face's default when config.json says nothing: num_labels (2) labels LABEL_i.
        default = int(cfg.extra.get("num_labels", 2))
        if n != default:
            raise CheckpointError(f"{source}: no id2label for the {n} outputs of the {what} (without one, "
                                  f"Hugging Face assumes {default} labels LABEL_0..LABEL_{default - 1})")
        return
    if sorted(labels) != list(range(n)):
        raise CheckpointError(f"{source}: id2label has ids {sorted(labels)}, but the {what} has {n} outputs "
                              f"(expected ids 0..{n - 1})")


def resolve_heads(cfg: ModelConfig, names: dict[str, tuple[int, ...]], source: str) -> tuple[str, Heads, Heads]:
    """(architecture, heads the forward outputs, every head the file holds)."""
    family = family_of(cfg)
    known = architectures()
    declared = [a for a in cfg.architectures if a in known]
    if cfg.architectures and not declared:
        raise CheckpointError(
            f"{source}: architectures = {cfg.architectures[0]!r} is not supported; cbert runs "
            f"{', '.join(sorted(known))}")
    if declared:
        arch = declared[0]
        if known[arch] is not family:
            raise CheckpointError(f"{source}: architectures = {arch!r} is a {known[arch].name} class but "
                                  f"model_type = {cfg.model_type!r}")
        kinds = family.architectures[arch]
    else:
        kinds = family.detect_heads(names)
        arch = family.class_name(kinds)
    present = set(family.detect_heads(names)) | set(kinds)
    has_pooler = family.has_pooler(names)
    tied = family.mlm is None or family.mlm.decoder_weight not in names
    n_seq = n_tok = 0
    if "seq_cls" in present:
        n_seq = names.get(family.seq_cls.out + ".weight", (len(cfg.id2label) or 2,))[0]
        _labels(cfg, n_seq, source, "sequence classifier")
    if "token_cls" in present:
        n_tok = names.get(family.token_cls + ".weight", (len(cfg.id2label) or 2,))[0]
        _labels(cfg, n_tok, source, "token classifier")
    mlm_output = "prediction_logits" if "nsp" in kinds else "logits"

    def heads(kinds: set[str]) -> Heads:
        return Heads(pooler=has_pooler or "nsp" in kinds, mlm="mlm" in kinds, nsp="nsp" in kinds,
                     seq_cls=n_seq if "seq_cls" in kinds else 0, token_cls=n_tok if "token_cls" in kinds else 0,
                     qa="qa" in kinds, tied_decoder=tied, mlm_output=mlm_output)

    out = heads(set(kinds))
    # A file may hold more heads than its class outputs (cls.* in a BertModel file): load
    # them for model.mlm_logits(), but never a second head whose Hugging Face output is `logits`.
    extra = present - set(kinds)
    if {"seq_cls", "token_cls"} <= present or ("mlm" in extra and ({"seq_cls", "token_cls"} & set(kinds))):
        extra -= {"seq_cls", "token_cls", "mlm"}
    return arch, out, heads(set(kinds) | extra)


def load_checkpoint(path: str | Path, copy: bool = False, adapter: str | Path | None = None) -> Checkpoint:
    """``copy=True`` reads the weights into private memory instead of memory-mapping the file.
    ``adapter``: a PEFT LoRA adapter folder, merged into the weights here (:mod:`.adapter`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    folder = path if path.is_dir() else path.parent
    cfg = ModelConfig.from_file(folder / "config.json")
    weights_file = path if path.is_file() else find_weights(folder)
    st = SafetensorsFile(weights_file, copy=copy)

    family = family_of(cfg)
    prefix = family.prefix
    canon: dict[str, str] = {}
    for raw in st.names():
        c = raw[len(prefix):] if raw.startswith(prefix) else raw
        if c in canon:
            raise CheckpointError(f"{weights_file}: tensor {c!r} is stored twice (as {canon[c]!r} and {raw!r})")
        canon[c] = raw
    for name, better in family.bias_twins.items():
        if better in canon:
            canon[name] = canon.pop(better)
    # A LoRA adapter: its merged weights (and a head it trained) stand in for the file's tensors.
    merged: dict[str, np.ndarray] = {}
    if adapter is not None:
        from .adapter import merge_adapter

        cfg, merged = merge_adapter(adapter, cfg, canon, st)
        canon.update({n: n for n in merged if n not in canon})

    def shape_of(name: str) -> tuple[int, ...]:
        return tuple(merged[name].shape) if name in merged else st.shape(canon[name])

    arch, heads, loaded = resolve_heads(cfg, {n: shape_of(n) for n in canon}, str(folder / "config.json"))
    graph = build_graph(cfg, loaded, output_hidden_states=True)
    want = graph.param_shapes

    missing = [n for n in want if n not in canon]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(
            f"{weights_file}: missing tensor{'s' if len(missing) > 1 else ''} {', '.join(missing[:5])}{more} "
            f"(config.json says {cfg.num_hidden_layers} layers, architecture {arch})")
    unexpected = [canon[n] for n in canon if n not in want and n not in BUFFERS and n not in family.bias_twins]
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise CheckpointError(
            f"{weights_file}: unexpected tensor{'s' if len(unexpected) > 1 else ''} "
            f"{', '.join(unexpected[:5])}{more}: not part of a {arch} with the config's "
            f"{cfg.num_hidden_layers} layers, nor of any head cbert knows")
    params: dict[str, np.ndarray] = {}
    for name, shape in want.items():
        got = shape_of(name)
        if got != shape:
            raise CheckpointError(
                f"{weights_file}: tensor {canon[name]!r} has shape {list(got)}, expected {list(shape)} "
                f"from config.json (hidden_size={cfg.hidden_size}, intermediate_size={cfg.intermediate_size}, "
                f"vocab_size={cfg.vocab_size}, max_position_embeddings={cfg.max_position_embeddings})")
        a = merged[name] if name in merged else st.get(canon[name])
        if a.dtype != np.float32:
            raise CheckpointError(f"{weights_file}: tensor {canon[name]!r} has dtype {a.dtype}, expected a float")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{weights_file}: tensor {canon[name]!r} holds NaN or infinite values")
        params[name] = a
    try:  # the graph's own shape rules over the checked tensors: a family whose graph reads a
        # tensor in a shape the next op cannot take fails here, naming the node, not mid-forward
        infer_shapes(graph, want, {name: (1, 1) for name in graph.inputs})
    except ValueError as e:
        raise CheckpointError(f"{weights_file}: {e}") from None
    n_params = sum(int(np.prod(s)) for s in want.values())
    return Checkpoint(folder, cfg, weights_file, params, heads, loaded, arch, n_params, graph, st,
                      {name: canon[name] for name in want})
