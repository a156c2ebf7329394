"""A trained model as a Hugging Face folder: config.json, model.safetensors, the tokenizer.

``transformers.AutoModelFor*.from_pretrained(folder)`` and ``cbert.load(folder)`` both read it:
config.json is the base checkpoint's own (its key spelling kept, DistilBERT's ``dim`` stays
``dim``) with the class, labels and problem type of the task; the tensors are named as the
family's *For* class names them (the base model under its prefix, ``bert.``, the heads at the
top level), and a decoder tied to the word embeddings is not stored twice, as save_pretrained does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..families import build_graph, family_of
from ..files import read_bytes, read_json, write_atomic, write_new
from ..heads import Heads

# task -> the heads of the Hugging Face class trained for it (its class: Family.class_name(heads))
TASK_HEADS = {"mlm": ("mlm",), "seq-cls": ("seq_cls",), "token-cls": ("token_cls",), "qa": ("qa",)}
TASKS = tuple(TASK_HEADS)

# The tokenizer files a checkpoint folder may hold (WordPiece, BPE, SentencePiece), copied as they are.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class OutputModel:
    """What a training run saves, besides the weights: the base folder it started from and the task."""

    base: Path  # the base checkpoint folder: its config.json and tokenizer files
    config: ModelConfig
    task: str
    heads: Heads
    label_names: tuple[str, ...] | None = None  # seq-cls / token-cls: the names of the ids, in order
    problem_type: str | None = None  # seq-cls only

    @property
    def architecture(self) -> str:
        return family_of(self.config).class_name(TASK_HEADS[self.task])

    def config_json(self) -> dict:
        """The base's config.json with this model's class, labels and problem type."""
        raw = dict(read_json(self.base / "config.json"))
        raw["architectures"] = [self.architecture]
        n = self.heads.seq_cls or self.heads.token_cls
        if n:
            names = list(self.label_names) if self.label_names else [f"LABEL_{i}" for i in range(n)]
            raw["id2label"] = {str(i): name for i, name in enumerate(names)}
            raw["label2id"] = {name: i for i, name in enumerate(names)}
            raw["num_labels"] = n
        if self.problem_type:
            raw["problem_type"] = self.problem_type
        else:
            raw.pop("problem_type", None)
        for key in ("torch_dtype", "dtype"):  # the weights are saved in float32 whatever the base held
            if key in raw:
                raw[key] = "float32"
        return raw

    def tensor_names(self, params: Mapping[str, object]) -> dict[str, str]:
        """Graph parameter name -> the *For* class's tensor name: the base model's parameters (those of
        the family's graph without heads, its pooler included) under the family's prefix, the heads' as
        they are."""
        family = family_of(self.config)
        base = set(build_graph(self.config, Heads(pooler=family.pooler is not None)).params)
        return {name: (family.prefix + name if name in base else name) for name in params}

    def files(self, params: Mapping[str, np.ndarray]) -> dict[str, bytes]:
        """Every file of the folder, by name: the weights, the tokenizer files the base has, config.json
        (last, so a folder written file by file in this order names only weights already there)."""
        from safetensors.numpy import save

        names = self.tensor_names(params)
        tensors = {names[k]: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
        mlm = family_of(self.config).mlm
        if self.heads.mlm and not self.heads.tied_decoder and mlm.decoder_bias:
            # An untied decoder has a bias of its own in Hugging Face's class (the one its forward adds).
            tensors[mlm.decoder_bias] = tensors[names[mlm.bias]]
        out = {WEIGHTS: save(tensors, metadata={"format": "pt"})}
        for name in TOKENIZER_FILES:
            if (self.base / name).is_file():
                out[name] = read_bytes(self.base / name)
        out["config.json"] = (json.dumps(self.config_json(), indent=2, ensure_ascii=False) + "\n").encode()
        return out


def write_into_new(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into a new, empty folder (a staged one: cbert.files.staged_folder)."""
    for name, data in files.items():
        write_new(folder / name, data)


def write_replacing(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into ``folder``, each one atomically over its previous version (a run's own
    files, in the run's own folder), in the order given."""
    for name, data in files.items():
        write_atomic(folder / name, lambda f, data=data: f.write(data), overwrite=True)
