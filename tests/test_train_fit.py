"""The trainer: saved folders load in transformers with every weight and the logits of cbert.load,
heads initialized where the base lacks them, length-grouped batches as transformers groups them,
and fit's runs (learning, resume, NaN, folders) on tiny checkpoints."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
from conftest import write_checkpoint

import cbert
from cbert.checkpoint import load_checkpoint
from cbert.families import build_graph
from cbert.files import staged_folder
from cbert.train.fit import initial_params, length_grouped_batches, task_heads
from cbert.train.save import OutputModel, write_into_new

SMALL = dict(num_hidden_layers=2, vocab_size=97, max_position_embeddings=40)
# name -> (transformers class, config class, kwargs): base models without heads, and one with its own.
BASES = {
    "bert": ("BertModel", "BertConfig", dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, **SMALL)),
    "distilbert": ("DistilBertModel", "DistilBertConfig",
                   dict(dim=48, n_heads=3, n_layers=2, hidden_dim=37, vocab_size=97, max_position_embeddings=40)),
    "roberta": ("RobertaModel", "RobertaConfig",
                dict(hidden_size=64, num_attention_heads=2, intermediate_size=70, type_vocab_size=1, pad_token_id=1,
                     **{**SMALL, "max_position_embeddings": 42})),
    "albert": ("AlbertModel", "AlbertConfig",
               dict(hidden_size=64, embedding_size=24, num_attention_heads=4, intermediate_size=90,
                    num_hidden_layers=4, num_hidden_groups=2, vocab_size=97, max_position_embeddings=40)),
    "bert_pretraining": ("BertForPreTraining", "BertConfig",
                         dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, **SMALL)),
    "bert_untied": ("BertForMaskedLM", "BertConfig",
                    dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, tie_word_embeddings=False,
                         **SMALL)),
}
AUTO = {"mlm": "AutoModelForMaskedLM", "seq-cls": "AutoModelForSequenceClassification",
        "token-cls": "AutoModelForTokenClassification", "qa": "AutoModelForQuestionAnswering"}
LABELS = ("present", "negated", "hypothetical")


@pytest.fixture(scope="session")
def bases(tmp_path_factory):
    cache: dict = {}

    def get(name: str) -> str:
        if name not in cache:
            folder = str(tmp_path_factory.mktemp(f"base_{name}"))
            cls_name, config_name, kwargs = BASES[name]
            write_checkpoint(folder, cls_name, kwargs, config_name=config_name)
            cache[name] = folder
        return cache[name]

    return get


def _inputs(cfg, batch: int = 3, seq: int = 11, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, cfg.vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, seq // 2:] = 0
    ids[mask == 0] = cfg.pad_token_id
    out = {"input_ids": ids, "attention_mask": mask}
    if cfg.type_vocab_size > 1:
        out["token_type_ids"] = (np.arange(seq)[None] >= seq // 3).astype(np.int64).repeat(batch, 0) * mask
    return out


def _save_from(base: str, task: str, out, labels=LABELS, problem=None, seed=0):
    """The folder fit would save for ``task`` from ``base``, its weights perturbed as training would."""
    ckpt = load_checkpoint(base)
    data = types.SimpleNamespace(label_names=list(labels) if labels else None, problem_type=problem)
    heads, problem = task_heads(task, data, ckpt)
    graph = build_graph(ckpt.config, heads)
    params, initialized = initial_params(ckpt.config, graph, ckpt.params, seed)
    rng = np.random.default_rng(seed + 1)
    params = {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in params.items()}
    model = OutputModel(ckpt.path, ckpt.config, task, heads, tuple(labels) if labels else None, problem)
    with staged_folder(out) as tmp:
        write_into_new(tmp, model.files(params))
    return model, initialized


CASES = [("bert", "seq-cls"), ("bert", "token-cls"), ("bert", "qa"), ("bert", "mlm"),
         ("distilbert", "seq-cls"), ("distilbert", "token-cls"), ("roberta", "seq-cls"), ("roberta", "qa"),
         ("roberta", "mlm"), ("albert", "seq-cls"), ("albert", "mlm"), ("bert_pretraining", "mlm"),
         ("bert_pretraining", "seq-cls"), ("bert_untied", "mlm")]


@pytest.mark.parametrize("base,task", CASES)
def test_saved_folder_loads_in_transformers_with_equal_logits(bases, tmp_path, base, task):
    import torch
    import transformers

    labels = LABELS if task == "seq-cls" else ("O", "B-X", "I-X", "B-Y", "I-Y") if task == "token-cls" else None
    model, initialized = _save_from(bases(base), task, tmp_path / "out", labels)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf, info = getattr(transformers, AUTO[task]).from_pretrained(out, output_loading_info=True)
    hf.eval()
    assert type(hf).__name__ == model.architecture
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ours = cbert.load(out, backend="numpy")
    assert ours.checkpoint.architecture == model.architecture
    inputs = _inputs(ours.config)
    with torch.no_grad():
        ref = hf(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    got = ours.forward(**inputs)
    names = ("start_logits", "end_logits") if task == "qa" else ("logits",)
    for name in names:
        np.testing.assert_allclose(got[name], getattr(ref, name).numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
    if labels:
        assert hf.config.id2label == dict(enumerate(labels)) and ours.config.id2label == dict(enumerate(labels))
    # the tokenizer came along, and config.json kept the base's own spelling of its keys
    assert (out / "vocab.txt").read_bytes() == (model.base / "vocab.txt").read_bytes()
    raw = json.loads((out / "config.json").read_text())
    base_raw = json.loads((model.base / "config.json").read_text())
    assert {k for k in base_raw if k not in ("architectures",)} <= set(raw)


def test_missing_head_is_initialized_as_hugging_face_does(bases, tmp_path):
    _, initialized = _save_from(bases("bert"), "seq-cls", tmp_path / "out")
    assert initialized == ["classifier.weight", "classifier.bias"]
    _, initialized = _save_from(bases("distilbert"), "seq-cls", tmp_path / "out2")
    assert set(initialized) == {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight",
                                "classifier.bias"}
    _, initialized = _save_from(bases("bert_pretraining"), "mlm", tmp_path / "out3")
    assert initialized == []  # its masked-LM head is reused; the NSP head is not part of the class saved
    ckpt = load_checkpoint(bases("bert"))
    heads, _ = task_heads("mlm", types.SimpleNamespace(label_names=None, problem_type=None), ckpt)
    graph = build_graph(ckpt.config, heads)
    params, initialized = initial_params(ckpt.config, graph, ckpt.params, seed=3)
    t = "cls.predictions.transform."
    assert set(initialized) == {t + "dense.weight", t + "dense.bias", t + "LayerNorm.weight", t + "LayerNorm.bias",
                                "cls.predictions.bias"}
    assert (params[t + "LayerNorm.weight"] == 1).all()
    assert (params[t + "LayerNorm.bias"] == 0).all() and (params["cls.predictions.bias"] == 0).all()
    w = params["cls.predictions.transform.dense.weight"]
    assert abs(w.std() - 0.02) < 0.004 and abs(w.mean()) < 0.004  # normal(0, initializer_range)
    again, _ = initial_params(ckpt.config, graph, ckpt.params, seed=3)
    assert all((again[k] == v).all() for k, v in params.items())  # the seed decides


def test_length_grouped_batches_equal_transformers(monkeypatch):
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    rng = np.random.default_rng(0)
    for n, batch in ((7, 2), (50, 3), (1000, 4), (33, 16)):
        lengths = rng.integers(1, 100, n).tolist()
        perm = rng.permutation(n)
        monkeypatch.setattr(torch, "randperm", lambda *a, perm=perm, **k: torch.from_numpy(perm.copy()))
        flat = get_length_grouped_indices(lengths, batch)
        ours = length_grouped_batches(lengths, batch, perm)
        assert [i for b in ours for i in b] == list(flat)
        assert all(len(b) == batch for b in ours[:-1]) and 0 < len(ours[-1]) <= batch
        assert lengths[ours[0][0]] == max(lengths)
