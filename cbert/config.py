"""Model configuration from a Hugging Face ``config.json``, and known presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CheckpointError
from .families import by_model_type, family_of, model_types

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
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no config.json (a checkpoint folder needs one)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise CheckpointError(f"{path}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, source=str(path))

    def validate(self, source: str = "config.json") -> None:
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
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "embedding_size",
            "num_hidden_groups",
            "inner_group_num",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise bad(name, "expected a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise bad(
                "hidden_size",
                f"not divisible by num_attention_heads = {self.num_attention_heads}",
            )

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
