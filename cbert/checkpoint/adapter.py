"""PEFT LoRA adapters: read and merged into the base weights at load, so every backend runs them.

A PEFT adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``. Each adapted
linear ``W`` [N, K] of the module ``M`` has ``base_model.model.M.lora_A.weight`` [r, K] and
``base_model.model.M.lora_B.weight`` [N, r]; its forward is ``x W^T + scale * (x A^T) B^T``, so the
merged weight is ``W + scale * B A`` with ``scale = lora_alpha / r`` (``/ sqrt(r)`` with
``use_rslora``; per-module r and alpha from ``rank_pattern``/``alpha_pattern``). Modules trained
whole (``modules_to_save``: a new classifier) are stored as ``base_model.model.M.weight``. ``M`` is
the module's path in the class PEFT wrapped: with the family prefix (``bert.encoder...``) for a
*For* class, without it for the bare model; both read here, as checkpoints are.
``fan_in_fan_out`` only concerns GPT-2's Conv1D; for the nn.Linear of these families PEFT resets it
to False (with a warning), and so does this reader.

https://github.com/huggingface/peft/blob/main/src/peft/tuners/lora/layer.py (Linear.get_delta_weight)
https://github.com/huggingface/peft/blob/main/src/peft/utils/save_and_load.py (get_peft_model_state_dict)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..families import build_graph, family_of
from ..files import read_json
from ..ir import Graph, Op
from .safetensors import SafetensorsFile

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The trained head's class and labels, which PEFT's own files do not record (a transformers user
# passes them to from_pretrained); written by cbert's LoRA training, optional when reading.
HEAD_CONFIG = "cbert_head.json"
PEFT_PREFIX = "base_model.model."
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
# PEFT's task types -> the head kind (cbert.heads) a head in modules_to_save is.
TASK_HEADS = {"SEQ_CLS": "seq_cls", "TOKEN_CLS": "token_cls", "QUESTION_ANS": "qa"}
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def linear_weights(graph: Graph) -> dict[str, str]:
    """Every weight a LINEAR of ``graph`` multiplies by, named as the checkpoint stores it (the parts
    of a fused Q/K/V weight, not the fused one) -> the LINEAR node's output. The word embeddings (a
    decoder tied to them) are an nn.Embedding in Hugging Face's classes, never a LoRA linear."""
    concat = {n.output: n.inputs for n in graph.nodes if n.op is Op.CONCAT}
    found: dict[str, str] = {}
    for n in graph.nodes:
        if n.op is Op.LINEAR:
            for w in concat.get(n.inputs[1], (n.inputs[1],)):
                if w != WORD_EMBEDDINGS:
                    found.setdefault(w, n.output)
    return found


@dataclass(frozen=True)
class AdapterConfig:
    """The adapter_config.json fields a merge needs (PEFT's LoraConfig names)."""

    r: int = 8
    lora_alpha: float = 8.0
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    target_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    task_type: str | None = None
    base_model_name_or_path: str | None = None

    def scale(self, module: str) -> float:
        """scaling[module], as LoraLayer.update_layer sets it."""
        r = self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r)
        alpha = self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.lora_alpha)
        return float(alpha) / (math.sqrt(r) if self.use_rslora else r)

    def rank(self, module: str) -> int:
        return int(self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r))


def _pattern_key(patterns: dict, module: str) -> str:
    """peft.utils.other.get_pattern_key: the first pattern that matches the end of the module's name."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def read_config(folder: Path) -> AdapterConfig:
    """adapter_config.json, checked: a LoRA adapter whose merge is W + scale * B A."""
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise InputError(f"{folder}: not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object")

    def bad(key: str, expected: str):
        raise InputError(f"{path}: {key} = {raw.get(key)!r}: expected {expected}")

    if raw.get("peft_type", "LORA") != "LORA":
        bad("peft_type", "LORA (cbert merges LoRA adapters only)")
    for key, why in (("use_dora", "DoRA's magnitude vector"), ("lora_bias", "a bias on lora_B"),
                     ("layer_replication", "replicated layers"), ("target_parameters", "LoRA on bare parameters")):
        if raw.get(key):
            bad(key, f"false or absent: {why} is not supported")
    if raw.get("bias", "none") != "none":
        bad("bias", '"none" (an adapter that also trains biases is not supported)')
    r = raw.get("r", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        bad("r", "a positive integer")
    alpha = raw.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        bad("lora_alpha", "a number")
    for key in ("rank_pattern", "alpha_pattern"):
        v = raw.get(key) or {}
        if not isinstance(v, dict) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v.values()):
            bad(key, "an object of module pattern -> number")
    targets = raw.get("target_modules")
    if targets is not None and not isinstance(targets, (str, list)):
        bad("target_modules", "a list of module names or a regular expression")
    saved = raw.get("modules_to_save")
    if saved is not None and not (isinstance(saved, list) and all(isinstance(s, str) for s in saved)):
        bad("modules_to_save", "a list of module names")
    return AdapterConfig(r=r, lora_alpha=float(alpha), use_rslora=bool(raw.get("use_rslora", False)),
                         fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)), target_modules=targets,
                         modules_to_save=saved, rank_pattern=dict(raw.get("rank_pattern") or {}),
                         alpha_pattern=dict(raw.get("alpha_pattern") or {}), task_type=raw.get("task_type"),
                         base_model_name_or_path=raw.get("base_model_name_or_path"))


def _canonical(raw: str, prefix: str, source: Path) -> str:
    if not raw.startswith(PEFT_PREFIX):
        raise InputError(f"{source}: tensor {raw!r} does not start with {PEFT_PREFIX!r} (PEFT's names)")
    name = raw[len(PEFT_PREFIX):]
    return name[len(prefix):] if name.startswith(prefix) else name


def _head_config(cfg, folder: Path, conf: AdapterConfig, head: dict[str, np.ndarray]):
    """The config of the merged model: the base's, with the class and labels of a head the adapter
    trained (cbert_head.json where present, else PEFT's task_type and the head's size)."""
    if not head:
        return cfg
    fam = family_of(cfg)
    extra = dict(cfg.extra)
    path = folder / HEAD_CONFIG
    if path.is_file():
        given = read_json(path)
        if not isinstance(given, dict) or not isinstance(given.get("architectures"), list):
            raise InputError(f"{path}: expected a JSON object with architectures (and id2label)")
        for key in ("id2label", "label2id", "num_labels", "problem_type"):
            extra.pop(key, None)
            if key in given:
                extra[key] = given[key]
        return replace(cfg, architectures=list(given["architectures"]), extra=extra)
    kind = TASK_HEADS.get(conf.task_type or "")
    if kind is None:  # no task named: the heads are found from the tensors, as for a checkpoint without a class
        return replace(cfg, architectures=[])
    out = {"seq_cls": fam.seq_cls.out, "token_cls": fam.token_cls, "qa": fam.qa}[kind] + ".weight"
    if out not in head:
        raise InputError(f"{folder / ADAPTER_WEIGHTS}: task_type {conf.task_type} but no {out!r} among the "
                         f"modules saved ({', '.join(sorted(head))})")
    n = head[out].shape[0]
    if kind != "qa" and len(cfg.id2label) != n:
        for key in ("id2label", "label2id"):
            extra.pop(key, None)
        extra["num_labels"] = n
    return replace(cfg, architectures=[fam.class_name((kind,))], extra=extra)


def merge_adapter(folder: str | Path, cfg, canon: dict[str, str], st: SafetensorsFile):
    """(the merged model's config, {checkpoint name: tensor}) for the adapter in ``folder`` over the
    base whose file ``st`` holds the tensors ``canon`` maps (canonical name -> name in the file).
    Every mismatch between the adapter and the base is an InputError naming the tensor."""
    from . import resolve_heads  # the loader's own head rules (this module is imported by it lazily)

    folder = Path(folder)
    conf = read_config(folder)
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        raise InputError(f"{folder}: no {ADAPTER_WEIGHTS} (PEFT's adapter weights; .bin adapters are not read)")
    weights = SafetensorsFile(path)
    prefix = family_of(cfg).prefix
    pairs: dict[str, dict[str, str]] = {}  # module -> {"A"|"B": raw name}
    head: dict[str, np.ndarray] = {}
    for raw in weights.names():
        name = _canonical(raw, prefix, path)
        if "lora_embedding_" in name or "lora_magnitude_vector" in name:
            raise InputError(f"{path}: tensor {raw!r}: LoRA on embeddings and DoRA are not supported")
        for side, suffix in zip("AB", LORA_SUFFIXES):
            if name.endswith(suffix):
                pairs.setdefault(name[:-len(suffix)], {})[side] = raw
                break
        else:
            head[name] = _finite(weights, raw, path)
    if not pairs and not head:
        raise InputError(f"{path}: holds no LoRA tensors (names ending in {LORA_SUFFIXES[0]})")
    new_cfg = _head_config(cfg, folder, conf, head)
    shapes = {n: st.shape(r) for n, r in canon.items()} | {n: a.shape for n, a in head.items()}
    arch, _, loaded = resolve_heads(new_cfg, shapes, str(folder))
    graph = build_graph(new_cfg, loaded)
    for name, a in head.items():
        want = graph.param_shapes.get(name)
        if want is None:
            raise InputError(f"{path}: tensor {PEFT_PREFIX}{name!r} (a module saved whole) is not a parameter of "
                             f"the base's {arch}")
        if tuple(a.shape) != tuple(want):
            raise InputError(f"{path}: tensor {name!r} has shape {list(a.shape)}, but the base's {arch} has "
                             f"{list(want)}: an adapter for another base model")
    linears = linear_weights(graph)
    merged = dict(head)
    for module, sides in sorted(pairs.items()):
        merged[module + ".weight"] = _merged(module, sides, conf, linears, shapes, head, canon, st, weights)
    return new_cfg, merged


def _finite(weights: SafetensorsFile, raw: str, path: Path) -> np.ndarray:
    a = weights.get(raw)
    if a.dtype != np.float32:
        raise InputError(f"{path}: tensor {raw!r} has dtype {a.dtype}, expected a float")
    if not np.isfinite(a).all():
        raise InputError(f"{path}: tensor {raw!r} holds NaN or infinite values")
    return a


def _merged(module, sides, conf, linears, shapes, head, canon, st, weights) -> np.ndarray:
    """W + scale * B A for one module, every shape checked against the base."""
    path = weights.path
    for side, suffix in zip("AB", LORA_SUFFIXES):
        if side not in sides:
            raise InputError(f"{path}: {module}{LORA_SUFFIXES[0 if side == 'B' else 1]} has no "
                             f"{module}{suffix} beside it")
    weight = module + ".weight"
    if weight not in linears:
        raise InputError(f"{path}: tensor {sides['A']!r} adapts {module!r}, which is not a linear layer of "
                         f"this base model (an adapter for another model?)")
    a, b = _finite(weights, sides["A"], path), _finite(weights, sides["B"], path)
    n, k = shapes[weight]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != k or b.shape[0] != n or a.shape[0] != b.shape[1]:
        raise InputError(f"{path}: {sides['A']!r} {list(a.shape)} and {sides['B']!r} {list(b.shape)} do not fit "
                         f"the base's {canon.get(weight, weight)!r} {[n, k]} (expected [r, {k}] and [{n}, r]): an "
                         "adapter for another base model")
    peft_module = sides["A"][len(PEFT_PREFIX):-len(LORA_SUFFIXES[0])]  # what rank/alpha_pattern match
    if a.shape[0] != conf.rank(peft_module):
        raise InputError(f"{path}: {sides['A']!r} has rank {a.shape[0]}, but adapter_config.json says r = "
                         f"{conf.rank(peft_module)}")
    w = head[weight] if weight in head else st.get(canon[weight])
    delta = (b.astype(np.float64) @ a.astype(np.float64)) * conf.scale(peft_module)
    return (w + delta).astype(np.float32)

