"""Shared fixtures: random-weight checkpoints written by transformers, inputs, tolerances."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest

from cbert.backends import backend_dtypes
from cbert.tools.parity import FP32_MAX_ERROR, HALF_MIN_COSINE, min_cosine, scaled_max_abs_error  # noqa: F401 (shared)

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="cbert-xdg-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Checkpoint shapes the parity suite runs on: odd hidden sizes, head dims 13/16/32/64,
# 1 to 4 layers, every head layout. name -> (transformers class, BertConfig kwargs).
SHAPES = {
    "odd13": ("BertModel", dict(hidden_size=52, num_attention_heads=4, num_hidden_layers=2, intermediate_size=37,
                                vocab_size=101, max_position_embeddings=40)),
    "head16_pretrain": ("BertForPreTraining", dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3,
                                                   intermediate_size=96, vocab_size=97, max_position_embeddings=48)),
    "head32_mlm": ("BertForMaskedLM", dict(hidden_size=64, num_attention_heads=2, num_hidden_layers=1,
                                           intermediate_size=130, vocab_size=133, max_position_embeddings=64,
                                           hidden_act="gelu_new")),
    "head64_untied": ("BertForPreTraining", dict(hidden_size=128, num_attention_heads=2, num_hidden_layers=4,
                                                 intermediate_size=200, vocab_size=211, max_position_embeddings=72,
                                                 tie_word_embeddings=False, type_vocab_size=3)),
}

# (backend, dtype) pairs the parity suite runs: every backend cbert has, every dtype it runs.
# A backend that is not installed fails collection here: a missing install is a failure, not a skip.
BACKEND_DTYPES = backend_dtypes()

FP32_TOL = FP32_MAX_ERROR  # the tolerances `cbert parity` holds a user's machine to
HALF_COSINE = HALF_MIN_COSINE


def assert_close(a, b, name: str, tol: float = FP32_TOL) -> None:
    err = scaled_max_abs_error(a, b)
    if err > tol:
        a, b = np.asarray(a), np.asarray(b)
        i = np.unravel_index(np.abs(a - b).argmax(), a.shape)
        pytest.fail(f"{name}: scaled max abs error {err:.3g} > {tol:g}; worst at {i}: {a[i]} vs {b[i]}")


def write_checkpoint(folder: str, cls_name: str, kwargs: dict, seed: int = 0, config_name: str = "BertConfig"):
    """A random-weight transformers checkpoint (safetensors) with a WordPiece vocab.txt; returns the model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = getattr(transformers, config_name)(**kwargs, attn_implementation="eager")
    model = getattr(transformers, cls_name)(cfg).eval()
    # Random init leaves LayerNorm at identity and biases at zero; perturb them so the
    # test sees every parameter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder, safe_serialization=True)
    write_vocab(folder, kwargs["vocab_size"])
    return model


# Words a random checkpoint's vocabulary spells, so its tokenizer yields real pieces.
WORDS = ("the patient was given for pain chest denies fever cough no and with of to in on at is "
         "mg po iv bid daily history heart failure copd admitted discharged").split()


def write_vocab(folder: str, size: int) -> None:
    """A WordPiece vocab.txt of exactly ``size`` entries, specials first, and an uncased tokenizer_config."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = specials + list(WORDS) + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(".,;:/-")
    pieces += [f"##{w}" for w in WORDS]
    pieces += [f"[unused{i}]" for i in range(max(0, size - len(pieces)))]
    with open(f"{folder}/vocab.txt", "w") as f:
        f.write("\n".join(pieces[:size]) + "\n")
    with open(f"{folder}/tokenizer_config.json", "w") as f:
        f.write('{"do_lower_case": true, "model_max_length": 512}')


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """name -> (folder, transformers model); written once per session, lazily."""
    cache: dict[str, tuple[str, object]] = {}

    def get(name: str):
        if name not in cache:
            cls_name, kwargs = SHAPES[name]
            folder = str(tmp_path_factory.mktemp(name))
            cache[name] = (folder, write_checkpoint(folder, cls_name, kwargs))
        return cache[name]

    return get


def make_inputs(cfg: dict, batch: int, seq: int, seed: int = 0, padding: str = "heavy", pair: bool = True):
    """Random ids with heavy padding (a row with a single real token) and pair token types."""
    rng = np.random.default_rng(seed)
    vocab = cfg.get("vocab_size", 30522)
    ids = rng.integers(1, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if padding == "heavy":
        for b in range(1, batch):
            keep = max(1, seq // (b + 1)) if b < batch - 1 else 1
            mask[b, keep:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    if pair:
        for b in range(batch):
            n = int(mask[b].sum())
            types[b, n // 2:n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def hf_forward(model, inputs: dict, **kw):
    import torch

    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, return_dict=True, **kw)


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The ``cbert`` command as a user runs it: a subprocess, output captured."""
    return subprocess.run([sys.executable, "-m", "cbert.cli", *args], capture_output=True, text=True, input=stdin,
                          env={**os.environ, **(env or {})}, timeout=300)
