"""Model configuration from a Hugging Face ``config.json``, and known presets."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CheckpointError, shown
from .families import by_model_type, family_of, model_types
from .files import is_json_int, read_json

# hidden_act as written in config.json -> the activation the IR runs.
# https://github.com/huggingface/transformers/blob/main/src/transformers/activations.py (ACT2CLS)
HIDDEN_ACT = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

@dataclass
class ModelConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    is_decoder: bool = False
    add_cross_attention: bool = False
    model_type: str = "bert"
    architectures: list[str] = field(default_factory=list)
    embedding_size: int | None = None  # ALBERT's factorized embeddings; None: hidden_size
    num_hidden_groups: int = 1  # ALBERT: layer groups sharing weights
    inner_group_num: int = 1  # ALBERT: layers per group
    # Everything else config.json carried, kept so nothing is lost (id2label, ...).
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> ModelConfig:
        """Forgiving: unknown keys go to ``extra``; only what the IR cannot run is an error."""
        family = by_model_type(d.get("model_type", cls.model_type))
        d = family.config_dict(d) if family else dict(d)  # an unknown model_type fails in validate
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        if "architectures" in known and known["architectures"] is None:
            known["architectures"] = []
        cfg = cls(**known, extra=extra)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not os.path.lexists(path):
            raise CheckpointError(f"{path}: no config.json (a checkpoint folder needs one)")
        d = read_json(path)  # a directory, a FIFO, non-UTF-8 or bad JSON: one CheckpointError
        check_config_json(d, str(path))
        return cls.from_dict(d, source=str(path))

    def validate(self, source: str = "config.json") -> None:
        check_fields(self, source)  # types and bounds first: nothing below may divide by zero or hash a list

        def bad(field_name: str, why: str) -> CheckpointError:
            return CheckpointError(f"{source}: {field_name} = {getattr(self, field_name)!r}: {why}")

        family = by_model_type(self.model_type)
        if family is None:
            raise bad("model_type", f"cbert runs {', '.join(model_types())}")
        problem = family.config_problem(self)
        if problem:
            raise bad(*problem)
        if self.hidden_act not in HIDDEN_ACT:
            raise bad("hidden_act", f"supported activations are {', '.join(sorted(HIDDEN_ACT))}")
        if self.position_embedding_type != "absolute":
            raise bad("position_embedding_type", "only 'absolute' position embeddings are supported")
        if self.is_decoder:
            raise bad("is_decoder", "decoder configurations are not supported (encoders only)")
        if self.add_cross_attention:
            raise bad("add_cross_attention", "cross-attention is not supported (encoders only)")
        if self.hidden_size % self.num_attention_heads:
            raise bad(
                "hidden_size",
                f"not divisible by num_attention_heads = {self.num_attention_heads}",
            )
        check_implied_sizes(self, source)

    @property
    def family(self) -> str:
        """The name of the family that runs this config (its record: ``cbert.families.family_of``)."""
        return family_of(self).name

    @property
    def max_seq_len(self) -> int:
        """The longest input, by the family's position rule."""
        return family_of(self).max_seq_len(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def activation(self) -> str:
        return HIDDEN_ACT[self.hidden_act]

    @property
    def id2label(self) -> dict[int, str]:
        """Labels as config.json names them; empty when it names none (see ``labels``)."""
        return {int(k): v for k, v in (self.extra.get("id2label") or {}).items()}

    def labels(self, n: int) -> list[str]:
        """The names of ``n`` classifier outputs: id2label, or Hugging Face's default LABEL_i."""
        found = self.id2label
        return [found.get(i, f"LABEL_{i}") for i in range(n)]


# Known checkpoints: used to recognise and describe a checkpoint, never to override it.
# Facts from ../shared/notes/CLINICAL.md.
PRESETS = {
    "bio-clinicalbert": {
        "repo": "emilyalsentzer/Bio_ClinicalBERT",
        "description": "Bio_ClinicalBERT (BioBERT init, all MIMIC-III notes); cased vocab",
        "shape": dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
        "lowercase": False,
    },
    "bio-discharge-summary-bert": {
        "repo": "emilyalsentzer/Bio_Discharge_Summary_BERT",
        "description": "Bio_Discharge_Summary_BERT (BioBERT init, MIMIC-III discharge summaries); cased vocab",
        "shape": dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
        "lowercase": False,
    },
    "bert-base-cased": {
        "repo": "google-bert/bert-base-cased",
        "description": "BERT-base, cased",
        "shape": dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
        "lowercase": False,
    },
    "bert-base-uncased": {
        "repo": "google-bert/bert-base-uncased",
        "description": "BERT-base, uncased",
        "shape": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
        "lowercase": True,
    },
    "all-minilm-l6-v2": {
        "repo": "sentence-transformers/all-MiniLM-L6-v2",
        "description": "all-MiniLM-L6-v2 sentence embedder (general domain, not clinical); uncased",
        "shape": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2),
        "lowercase": True,
    },
}


def recognise(cfg: ModelConfig, name_or_path: str = "") -> list[str]:
    """Presets whose shape matches ``cfg`` (a shape match alone cannot tell the
    Bio_ClinicalBERT twins from bert-base-cased, so a name hint narrows it)."""
    matches = [
        key for key, p in PRESETS.items()
        if all(getattr(cfg, k) == v for k, v in p["shape"].items())
    ]
    hint = (name_or_path + " " + str(cfg.extra.get("_name_or_path", ""))).lower().replace("_", "-")
    named = [k for k in matches if k in hint or PRESETS[k]["repo"].lower().replace("_", "-") in hint]
    return named or matches


BertConfig = ModelConfig  # the name users of the BERT-only API know


# -- bounds: a config.json from a stranger is checked before anything is built from it -----------

# Far beyond any BERT-family encoder (XLM-RoBERTa-XXL: 48 layers of 4096, a 250k vocabulary,
# 10.7B parameters), small enough that no config can make cbert build a billion layers.
SIZE_LIMITS = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "num_hidden_layers": 1024,
               "num_attention_heads": 1 << 12, "intermediate_size": 1 << 18, "max_position_embeddings": 1 << 16,
               "embedding_size": 1 << 16, "num_hidden_groups": 1024, "inner_group_num": 1024}
TYPE_VOCAB_LIMIT = 1 << 12
NUM_LABELS_LIMIT = 1 << 20
MAX_PARAMETERS = 1 << 34  # about 17 billion, 69 GB of float32
_LABEL_ID = re.compile(r"[0-9]+")


def check_config_json(d: object, source: str) -> None:
    """What from_dict needs of the parsed file itself: an object whose model_type is a string."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
    if "model_type" in d and not isinstance(d["model_type"], str):
        raise CheckpointError(f"{source}: model_type = {shown(d['model_type'])}: expected a string")


def check_fields(cfg: ModelConfig, source: str) -> None:
    """The type and range of every field config.json may set, each error naming the field."""

    def bad(name: str, value: object, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: {name} = {shown(value)}: {why}")

    for name in ("model_type", "hidden_act"):
        if not isinstance(getattr(cfg, name), str):
            raise bad(name, getattr(cfg, name), "expected a string")
    for name in ("is_decoder", "add_cross_attention"):
        if not isinstance(getattr(cfg, name), bool):
            raise bad(name, getattr(cfg, name), "expected true or false")
    for name, limit in SIZE_LIMITS.items():
        v = getattr(cfg, name)
        if not is_json_int(v) or v <= 0:
            raise bad(name, v, "expected a positive integer")
        if v > limit:
            raise bad(name, v, f"more than cbert's limit of {limit:,} (far beyond any BERT-family model)")
    v = cfg.type_vocab_size
    if not is_json_int(v) or not 0 <= v <= TYPE_VOCAB_LIMIT:
        raise bad("type_vocab_size", v, f"expected an integer from 0 to {TYPE_VOCAB_LIMIT:,}")
    v = cfg.pad_token_id
    if not is_json_int(v) or not 0 <= v < cfg.vocab_size:
        raise bad("pad_token_id", v, f"expected a token id in [0, vocab_size = {cfg.vocab_size})")
    v = cfg.layer_norm_eps
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
        raise bad("layer_norm_eps", v, "expected a positive finite number")
    v = cfg.architectures
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise bad("architectures", v, "expected a list of class names")
    labels = cfg.extra.get("id2label")
    if labels is not None:
        if not isinstance(labels, dict):
            raise bad("id2label", labels, "expected a JSON object of id: label")
        ids = set()
        for k, label in labels.items():
            if not (is_json_int(k) and k >= 0 or isinstance(k, str) and _LABEL_ID.fullmatch(k)):
                raise bad("id2label", labels, f"key {k!r} is not a non-negative integer id")
            if int(k) in ids:
                raise bad("id2label", labels, f"id {int(k)} appears twice")
            ids.add(int(k))
            if not isinstance(label, str):
                raise bad("id2label", labels, f"label of id {k} is {shown(label)}, expected a string")
    v = cfg.extra.get("num_labels")
    if v is not None and (not is_json_int(v) or not 1 <= v <= NUM_LABELS_LIMIT):
        raise bad("num_labels", v, f"expected an integer from 1 to {NUM_LABELS_LIMIT:,}")


def approx_parameters(cfg: ModelConfig) -> int:
    """An upper bound on the weights config.json implies: embeddings and every layer (ALBERT's
    shared layers counted each time), heads aside (at most one more vocabulary x hidden)."""
    E, H, F = cfg.embedding_size, cfg.hidden_size, cfg.intermediate_size
    embeddings = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * E + E * H
    return embeddings + cfg.num_hidden_layers * (4 * H * H + 2 * H * F) + cfg.vocab_size * H


def check_implied_sizes(cfg: ModelConfig, source: str) -> None:
    """What the fields imply together: room for at least one token, and a model that fits a machine."""
    if cfg.max_seq_len < 1:
        raise CheckpointError(f"{source}: max_position_embeddings = {cfg.max_position_embeddings} with pad_token_id "
                              f"= {cfg.pad_token_id} leaves a maximum sequence length of {cfg.max_seq_len}")
    n = approx_parameters(cfg)
    if n > MAX_PARAMETERS:
        raise CheckpointError(
            f"{source}: the sizes imply about {n:,} parameters (num_hidden_layers = {cfg.num_hidden_layers}, "
            f"hidden_size = {cfg.hidden_size}, intermediate_size = {cfg.intermediate_size}, vocab_size = "
            f"{cfg.vocab_size}), more than cbert's limit of {MAX_PARAMETERS:,}")
