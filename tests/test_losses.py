"""Losses: model.forward(labels=...) gives transformers' .loss for every family x head on every
backend (float32), and bad labels are one clear InputError line.

CASES and the helpers below are shared with tests/test_grads.py (gradients of the same models)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_inputs, write_checkpoint

import cbert
from cbert.backends import BACKENDS

# family -> (config class, class stem, tiny config kwargs)
FAMILIES = {
    "bert": ("BertConfig", "Bert", dict(hidden_size=24, num_attention_heads=2, num_hidden_layers=2,
                                        intermediate_size=37, vocab_size=61, max_position_embeddings=24)),
    "distilbert": ("DistilBertConfig", "DistilBert", dict(dim=24, n_heads=2, n_layers=2, hidden_dim=37,
                                                          vocab_size=61, max_position_embeddings=24)),
    "roberta": ("RobertaConfig", "Roberta", dict(hidden_size=24, num_attention_heads=3, num_hidden_layers=2,
                                                 intermediate_size=37, vocab_size=61, max_position_embeddings=26,
                                                 type_vocab_size=1, pad_token_id=1)),
    # Two layers sharing one group's weights: a value read twice in the backward.
    "albert": ("AlbertConfig", "Albert", dict(hidden_size=24, embedding_size=12, num_attention_heads=2,
                                              num_hidden_layers=2, intermediate_size=37, vocab_size=61,
                                              max_position_embeddings=24)),
}
# head -> (class suffix, extra config kwargs)
HEADS = {
    "mlm": ("ForMaskedLM", {}),
    "pretraining": ("ForPreTraining", {}),
    "seq_cls": ("ForSequenceClassification", dict(num_labels=3)),
    "regression": ("ForSequenceClassification", dict(num_labels=1)),
    "multi_label": ("ForSequenceClassification", dict(num_labels=3, problem_type="multi_label_classification")),
    "token_cls": ("ForTokenClassification", dict(num_labels=4)),
    "qa": ("ForQuestionAnswering", {}),
}
# Every family x head transformers has (BertForPreTraining is BERT's alone).
CASES = [(f, h) for f in FAMILIES for h in HEADS if h != "pretraining" or f == "bert"]
BATCH, SEQ = 3, 9

_written: dict[tuple[str, str], tuple[str, object]] = {}


def checkpoint(tmp_path_factory, family: str, head: str):
    """(folder, transformers model in eval mode) of one family x head, written once per session."""
    if (family, head) not in _written:
        config_name, stem, kwargs = FAMILIES[family]
        suffix, extra = HEADS[head]
        folder = str(tmp_path_factory.mktemp(f"{family}_{head}"))
        _written[family, head] = (folder, write_checkpoint(folder, stem + suffix, {**kwargs, **extra},
                                                           config_name=config_name))
    return _written[family, head]


def inputs_for(family: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A padded batch (the last row one real token); RoBERTa's pad id is 1, and no token types where the
    family has none or one."""
    cfg = FAMILIES[family][2]
    inputs = make_inputs(cfg, BATCH, SEQ, seed=seed, pair=family in ("bert", "albert"))
    pad = cfg.get("pad_token_id", 0)
    inputs["input_ids"] = np.where(inputs["attention_mask"] == 1, np.maximum(inputs["input_ids"], 2), pad)
    if family == "distilbert":
        del inputs["token_type_ids"]
    return inputs


def labels_for(family: str, head: str, inputs: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Labels as a user gives them: -100 on padding and some tokens, a QA position past the end."""
    rng = np.random.default_rng(seed)
    mask = inputs["attention_mask"].astype(bool)
    vocab = FAMILIES[family][2]["vocab_size"]
    extra = HEADS[head][1]

    def tokens(classes: int) -> np.ndarray:
        y = rng.integers(0, classes, (BATCH, SEQ))
        y[~mask | (rng.random((BATCH, SEQ)) < 0.3)] = -100
        y[0, 0] = 1  # at least one counted token
        return y

    if head == "mlm":
        return {"labels": tokens(vocab)}
    if head == "pretraining":
        return {"labels": tokens(vocab), "next_sentence_label": np.array([0, 1, 1])}
    if head == "seq_cls":
        return {"labels": rng.integers(0, extra["num_labels"], BATCH)}
    if head == "regression":
        return {"labels": rng.normal(size=BATCH).astype(np.float32)}
    if head == "multi_label":
        return {"labels": (rng.random((BATCH, extra["num_labels"])) < 0.5).astype(np.float32)}
    if head == "token_cls":
        return {"labels": tokens(extra["num_labels"])}
    # Positions are clamped to the sequence, and one past the end is ignored (Hugging Face's QA loss).
    return {"start_positions": np.array([1, 4, SEQ + 5]), "end_positions": np.array([3, SEQ, 0])}


def torch_loss(model, inputs: dict, labels: dict):
    """transformers' loss (a tensor, so a caller may backpropagate it)."""
    return model(**{k: torch.from_numpy(v) for k, v in {**inputs, **labels}.items()}, return_dict=True).loss


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("family,head", CASES)
def test_loss_matches_transformers(tmp_path_factory, family, head, backend):
    folder, hf = checkpoint(tmp_path_factory, family, head)
    inputs = inputs_for(family)
    labels = labels_for(family, head, inputs)
    with torch.no_grad():
        want = float(torch_loss(hf, inputs, labels))
        parts = {}
        if head == "pretraining":  # HF's BertForPreTraining gives the sum only: its two halves by hand
            out = hf(**{k: torch.from_numpy(v) for k, v in inputs.items()})
            ce = torch.nn.CrossEntropyLoss()
            parts["mlm_loss"] = float(ce(out.prediction_logits.reshape(-1, out.prediction_logits.shape[-1]),
                                         torch.from_numpy(labels["labels"]).reshape(-1)))
            parts["nsp_loss"] = float(ce(out.seq_relationship_logits,
                                         torch.from_numpy(labels["next_sentence_label"])))
    got = cbert.load(folder, backend=backend).forward(**inputs, **labels)
    assert isinstance(got.loss, float)
    assert got.loss == pytest.approx(want, rel=1e-5), f"{family} {head} on {backend}"
    for name, value in parts.items():
        assert got[name] == pytest.approx(value, rel=1e-5), f"{family} {head} {name} on {backend}"


def test_qa_loss_with_every_position_past_the_end(tmp_path_factory):
    """Nothing counted: Hugging Face's NaN mean becomes cbert's 0 (CROSS_ENTROPY's 'none counts')."""
    folder, _ = checkpoint(tmp_path_factory, "bert", "qa")
    inputs = inputs_for("bert")
    far = np.full(BATCH, SEQ + 1)
    assert cbert.load(folder, backend="numpy").forward(**inputs, start_positions=far, end_positions=far).loss == 0.0


def _single_label_folder(tmp_path_factory) -> str:
    """The seq-cls checkpoint with problem_type = single_label_classification declared in config.json."""
    folder, _ = checkpoint(tmp_path_factory, "bert", "seq_cls")
    declared = str(tmp_path_factory.mktemp("declared_single_label"))
    shutil.copytree(folder, declared, dirs_exist_ok=True)
    with open(f"{declared}/config.json") as f:
        cfg = json.load(f)
    cfg["problem_type"] = "single_label_classification"
    with open(f"{declared}/config.json", "w") as f:
        json.dump(cfg, f)
    return declared


BAD_LABELS = [
    ("token_cls", dict(labels=np.zeros((BATCH, SEQ + 1), np.int64)),
     r"^labels has shape \[3, 10\], expected \[3, 9\]$"),
    ("seq_cls", dict(labels=np.array([0, 3, 1])), r"^labels\[1\] = 3 is outside \[0, 3\) \(num_labels\)"),
    ("mlm", dict(labels=np.full((BATCH, SEQ), 61)), r"^labels\[0, 0\] = 61 is outside \[0, 61\) \(vocab_size\)"),
    ("token_cls", dict(labels=np.zeros((BATCH, SEQ))), r"^labels must hold integers; got dtype float64$"),
    ("declared_single", dict(labels=np.array([0.0, 1.0, 2.0])), r"^labels must hold integers; got dtype float64$"),
    ("mlm", dict(labels=np.zeros((BATCH, SEQ), np.int64), next_sentence_label=np.array([0, 1, 0])),
     r"^next_sentence_label: this model has no next-sentence head"),
    ("qa", dict(start_positions=np.array([0, 1, 2])), r"^start_positions and end_positions go together"),
    ("seq_cls", dict(start_positions=np.zeros(BATCH, np.int64), end_positions=np.zeros(BATCH, np.int64)),
     r"^end_positions: this model has no question-answering head$"),
]


@pytest.mark.parametrize("head,labels,message", BAD_LABELS)
def test_bad_labels_are_one_clear_line(tmp_path_factory, head, labels, message):
    if head == "declared_single":
        folder = _single_label_folder(tmp_path_factory)
    else:
        folder, _ = checkpoint(tmp_path_factory, "bert", head)
    model = cbert.load(folder, backend="numpy")
    with pytest.raises(cbert.InputError, match=message) as err:
        model.forward(**inputs_for("bert"), **labels)
    assert "\n" not in str(err.value)
