"""Every family x head against transformers (numpy) and every backend against numpy."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
from conftest import BACKEND_DTYPES, HALF_COSINE, SHAPES, assert_close, make_inputs, min_cosine, write_checkpoint

import cbert
from cbert import families

# name -> (transformers class, config class, config kwargs)
SMALL = dict(num_hidden_layers=2, vocab_size=97, max_position_embeddings=40)
# Token classifiers get clinical BIO labels, so NER results have entities to group.
BIO = dict(id2label={0: "O", 1: "B-PROBLEM", 2: "I-PROBLEM", 3: "B-TREATMENT", 4: "I-TREATMENT"})
BIO["label2id"] = {v: k for k, v in BIO["id2label"].items()}
SEQ_LABELS = dict(id2label={0: "NO_READMISSION", 1: "READMISSION", 2: "DECEASED"})
SEQ_LABELS["label2id"] = {v: k for k, v in SEQ_LABELS["id2label"].items()}
FAMILIES = {
    "distil_mlm": ("DistilBertForMaskedLM", "DistilBertConfig",
                   dict(dim=48, n_heads=3, n_layers=2, hidden_dim=37, vocab_size=97, max_position_embeddings=40)),
    "distil_seq": ("DistilBertForSequenceClassification", "DistilBertConfig",
                   dict(dim=64, n_heads=2, n_layers=1, hidden_dim=80, vocab_size=97, max_position_embeddings=40,
                        **SEQ_LABELS)),
    "distil_tok": ("DistilBertForTokenClassification", "DistilBertConfig",
                   dict(dim=48, n_heads=3, n_layers=2, hidden_dim=37, vocab_size=97, max_position_embeddings=40,
                        **BIO)),
    "distil_qa": ("DistilBertForQuestionAnswering", "DistilBertConfig",
                  dict(dim=48, n_heads=3, n_layers=2, hidden_dim=37, vocab_size=97, max_position_embeddings=40)),
    "roberta_mlm": ("RobertaForMaskedLM", "RobertaConfig",
                    dict(hidden_size=64, num_attention_heads=2, intermediate_size=70, type_vocab_size=1,
                         pad_token_id=1, **{**SMALL, "max_position_embeddings": 42})),
    "roberta_seq": ("RobertaForSequenceClassification", "RobertaConfig",
                    dict(hidden_size=52, num_attention_heads=4, intermediate_size=70, type_vocab_size=1,
                         pad_token_id=1, num_labels=2, **{**SMALL, "max_position_embeddings": 42})),
    "roberta_tok": ("RobertaForTokenClassification", "RobertaConfig",
                    dict(hidden_size=64, num_attention_heads=2, intermediate_size=70, type_vocab_size=1,
                         pad_token_id=1, num_labels=4, **{**SMALL, "max_position_embeddings": 42})),
    "roberta_qa": ("RobertaForQuestionAnswering", "RobertaConfig",
                   dict(hidden_size=64, num_attention_heads=2, intermediate_size=70, type_vocab_size=1,
                        pad_token_id=1, **{**SMALL, "max_position_embeddings": 42})),
    "albert_mlm": ("AlbertForMaskedLM", "AlbertConfig",
                   dict(hidden_size=64, embedding_size=24, num_attention_heads=4, intermediate_size=90,
                        num_hidden_layers=3, vocab_size=97, max_position_embeddings=40)),
    "albert_seq": ("AlbertForSequenceClassification", "AlbertConfig",
                   dict(hidden_size=64, embedding_size=24, num_attention_heads=4, intermediate_size=90,
                        num_hidden_layers=4, num_hidden_groups=2, vocab_size=97, max_position_embeddings=40,
                        num_labels=3)),
    "albert_tok": ("AlbertForTokenClassification", "AlbertConfig",
                   dict(hidden_size=64, embedding_size=24, num_attention_heads=4, intermediate_size=90,
                        num_hidden_layers=2, inner_group_num=2, vocab_size=97, max_position_embeddings=40,
                        num_labels=5)),
    "albert_qa": ("AlbertForQuestionAnswering", "AlbertConfig",
                  dict(hidden_size=64, embedding_size=24, num_attention_heads=4, intermediate_size=90,
                       vocab_size=97, max_position_embeddings=40, num_hidden_layers=2)),
    "bert_seq": ("BertForSequenceClassification", "BertConfig",
                 dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, **SEQ_LABELS, **SMALL)),
    "bert_tok": ("BertForTokenClassification", "BertConfig",
                 dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, **BIO, **SMALL)),
    "bert_qa": ("BertForQuestionAnswering", "BertConfig",
                dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, **SMALL)),
}


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            folder = str(tmp_path_factory.mktemp(name))
            cls_name, config_name, kwargs = FAMILIES[name]
            cache[name] = (folder, write_checkpoint(folder, cls_name, kwargs, config_name=config_name))
        return cache[name]

    return get


def family_inputs(name: str, batch: int = 4, seq: int | None = None, seed: int = 0) -> dict:
    """Padded pair-like inputs; padding uses the family's pad id, as a tokenizer would."""
    _, cfg_name, kw = FAMILIES[name]
    pad = kw.get("pad_token_id", 0)
    max_seq = kw["max_position_embeddings"] - (pad + 1 if cfg_name == "RobertaConfig" else 0)
    seq = seq or max_seq
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, kw["vocab_size"], size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    for b in range(1, batch):
        mask[b, max(1, seq // (b + 1)) if b < batch - 1 else 1:] = 0
    ids[mask == 0] = pad
    out = {"input_ids": ids, "attention_mask": mask}
    if cfg_name in ("BertConfig", "AlbertConfig"):
        types = np.zeros_like(ids)
        for b in range(batch):
            n = int(mask[b].sum())
            types[b, n // 2:n] = 1
        out["token_type_ids"] = types
    return out


def _torch(inputs: dict) -> dict:
    import torch

    return {k: torch.from_numpy(v) for k, v in inputs.items()}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_matches_transformers(family_checkpoints, name):
    import torch

    folder, hf = family_checkpoints(name)
    inputs = family_inputs(name)
    model = cbert.load(folder, backend="numpy")
    assert model.checkpoint.architecture == FAMILIES[name][0]
    got = model.forward(**inputs, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        ref = hf(**_torch(inputs), output_hidden_states=True, output_attentions=True, return_dict=True)
    for key in ("logits", "start_logits", "end_logits"):
        if ref.get(key) is not None:
            assert_close(got[key], ref[key].numpy(), key)
    assert len(got.hidden_states) == len(ref.hidden_states)
    for i, (g, w) in enumerate(zip(got.hidden_states, ref.hidden_states)):
        assert_close(g, w.numpy(), f"hidden_states[{i}]")
    assert len(got.attentions) == len(ref.attentions)
    for i, (g, w) in enumerate(zip(got.attentions, ref.attentions)):
        assert_close(g, w.numpy(), f"attentions[{i}]")
    assert_close(got.last_hidden_state, ref.hidden_states[-1].numpy(), "last_hidden_state")


@pytest.mark.parametrize("backend,dtype", [bd for bd in BACKEND_DTYPES if bd[0] != "numpy"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_backend_matches_numpy(family_checkpoints, name, backend, dtype):
    folder, _ = family_checkpoints(name)
    inputs = family_inputs(name, batch=3, seed=1)
    want = cbert.load(folder, backend="numpy").forward(**inputs, output_hidden_states=True, output_attentions=True)
    got = cbert.load(folder, backend=backend, dtype=dtype).forward(**inputs, output_hidden_states=True,
                                                                   output_attentions=True)
    assert set(got) == set(want)
    mask = inputs["attention_mask"].astype(bool)
    # Attention probabilities of padded query rows carry no meaning beyond being finite.
    # Rows are (real query token, head) pairs, compared over the keys.
    for out in (want, got):
        out["attentions"] = tuple(a.transpose(0, 2, 1, 3)[mask].reshape(-1, a.shape[-1]) for a in out["attentions"])
    for key, w in want.items():
        stacked = key in ("hidden_states", "attentions")
        for i, (g, ww) in enumerate(zip(got[key], w) if stacked else [(got[key], w)]):
            label = f"{key}[{i}]" if stacked else key
            if dtype == "float32":
                assert_close(g, ww, label)
                continue
            assert np.isfinite(g).all(), f"{label}: NaN/inf in {dtype}"
            if g.ndim == 3:
                g, ww = g[mask], ww[mask]
            elif g.ndim == 2 and g.shape == mask.shape:  # start/end logits per token
                g, ww = g[:, None, :].reshape(len(g), -1), ww.reshape(len(ww), -1)
            cos = min_cosine(g, ww)
            assert cos >= HALF_COSINE, f"{label}: min cosine {cos:.5f} in {dtype}"


def test_roberta_positions_start_after_padding_idx(family_checkpoints):
    folder, hf = family_checkpoints("roberta_tok")
    model = cbert.load(folder, backend="numpy")
    assert model.config.max_seq_len == 40
    with pytest.raises(cbert.InputError, match="more than the model's maximum of 40"):
        model.forward(np.full((1, 41), 5))


def test_distilbert_has_no_token_types(family_checkpoints):
    folder, _ = family_checkpoints("distil_tok")
    model = cbert.load(folder, backend="numpy")
    assert model.forward([[5, 6]], token_type_ids=[[0, 0]]).logits.shape == (1, 2, 5)
    with pytest.raises(cbert.InputError, match="a distilbert model has no token types"):
        model.forward([[5, 6]], token_type_ids=[[0, 1]])


def test_medicalai_clinicalbert_layout_loads_as_distilbert(family_checkpoints, tmp_path):
    """medicalai/ClinicalBERT's config.json says DistilBertForMaskedLM: it must run as one."""
    folder, hf = family_checkpoints("distil_mlm")
    model = cbert.load(folder, backend="numpy")
    assert model.config.family == "distilbert" and model.checkpoint.architecture == "DistilBertForMaskedLM"
    assert set(model.forward([[5, 6, 7]])) == {"last_hidden_state", "logits"}


def test_unsupported_architecture_and_missing_labels(family_checkpoints, tmp_path):
    folder, _ = family_checkpoints("bert_seq")
    dst = tmp_path / "ck"
    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["BertForMultipleChoice"]
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(cbert.CheckpointError, match=r"'BertForMultipleChoice' is not supported; cbert runs"):
        cbert.load(dst, backend="numpy")
    cfg["architectures"] = ["BertForSequenceClassification"]
    del cfg["id2label"], cfg["label2id"]
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(cbert.CheckpointError, match=r"no id2label for the 3 outputs of the sequence classifier "
                                                    r"\(without one, Hugging Face assumes 2 labels"):
        cbert.load(dst, backend="numpy")
    cfg["id2label"] = {"0": "A", "1": "B"}
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(cbert.CheckpointError, match=r"id2label has ids \[0, 1\], but the sequence classifier has 3"):
        cbert.load(dst, backend="numpy")
    cfg["architectures"] = ["RobertaForSequenceClassification"]
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(cbert.CheckpointError, match=r"'RobertaForSequenceClassification' is a roberta class but "
                                                    r"model_type = 'bert'"):
        cbert.load(dst, backend="numpy")


def test_architecture_inferred_from_tensors_when_config_names_none(family_checkpoints, tmp_path):
    for name in ("bert_seq", "bert_tok", "distil_qa", "roberta_seq", "albert_mlm"):
        folder, _ = family_checkpoints(name)
        dst = tmp_path / name
        shutil.copytree(folder, dst)
        cfg = json.loads((dst / "config.json").read_text())
        del cfg["architectures"]
        (dst / "config.json").write_text(json.dumps(cfg))
        assert cbert.load(dst, backend="numpy").checkpoint.architecture == FAMILIES[name][0]


# A family cbert does not ship, added by this one file alone: its own prefix, layer and head
# names, and its own graph function (BERT's layout, so BERT's weights renamed must give BERT's numbers).
FICTIONAL_FAMILY = '''
"""ClinicNet: a fictional encoder family."""

from cbert.families import Family, LayerNames, SeqClassifier, classes, register
from cbert.families.layers import Builder, embeddings, encoder_layer, finish, mask_bias


def graph(fam, cfg, heads):
    b = Builder()
    x = embeddings(b, cfg)
    bias = mask_bias(b)
    for i in range(cfg.num_hidden_layers):
        x = encoder_layer(b, cfg, fam.layer, fam.layer.prefix.format(i=i), x, bias, i)
    return finish(b, fam, cfg, heads, x)


FAMILY = register(Family(
    name="clinicnet",
    model_types=("clinicnet",),
    architectures=classes("ClinicNet"),
    prefix="clinicnet.",
    layer=LayerNames(prefix="blocks.{i}.", query="attn.q", key="attn.k", value="attn.v", attention_output="attn.o",
                     attention_norm="attn_norm", ffn_in="mlp.up", ffn_out="mlp.down", output_norm="mlp_norm"),
    graph=graph,
    pooler="pool",
    mlm=None,
    seq_cls=SeqClassifier(from_pooler=True, hidden=(), out="classifier"),
))
'''
# BERT's tensor names -> ClinicNet's, in the order they are replaced.
CLINICNET_NAMES = (("attention.self.query", "attn.q"), ("attention.self.key", "attn.k"),
                   ("attention.self.value", "attn.v"), ("attention.output.dense", "attn.o"),
                   ("attention.output.LayerNorm", "attn_norm"), ("intermediate.dense", "mlp.up"),
                   ("output.dense", "mlp.down"), ("output.LayerNorm", "mlp_norm"), ("encoder.layer.", "blocks."),
                   ("pooler.dense", "pool"))


def test_a_new_family_is_one_file(checkpoints, tmp_path, monkeypatch):
    from safetensors.numpy import load_file, save_file

    # The registry is process-wide: the fictional family registers into a copy dropped after the test.
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))
    (tmp_path / "clinicnet.py").write_text(FICTIONAL_FAMILY)
    spec = importlib.util.spec_from_file_location("clinicnet", tmp_path / "clinicnet.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

    def rename(name: str) -> str:
        name = "clinicnet." + name.removeprefix("bert.")
        for bert, ours in CLINICNET_NAMES:
            name = name.replace(bert, ours)
        return name

    folder, _ = checkpoints("odd13")  # a BertModel: encoder and pooler
    dst = tmp_path / "clinicnet-ckpt"
    dst.mkdir()
    tensors = {rename(k): v for k, v in load_file(f"{folder}/model.safetensors").items()}
    assert {"clinicnet.blocks.1.mlp.down.weight", "clinicnet.pool.bias"} <= set(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    cfg = json.loads(open(f"{folder}/config.json").read())
    cfg.update(model_type="clinicnet", architectures=["ClinicNetModel"])
    (dst / "config.json").write_text(json.dumps(cfg))

    model = cbert.load(dst, backend="numpy")
    assert (model.config.family, model.checkpoint.architecture) == ("clinicnet", "ClinicNetModel")
    inputs = make_inputs(SHAPES["odd13"][1], 3, 11)
    got = model.forward(**inputs, output_hidden_states=True, output_attentions=True)
    want = cbert.load(folder, backend="numpy").forward(**inputs, output_hidden_states=True, output_attentions=True)
    assert set(got) == set(want) == {"last_hidden_state", "pooler_output", "hidden_states", "attentions"}
    for key in ("last_hidden_state", "pooler_output"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key in ("hidden_states", "attentions"):
        for i, (g, w) in enumerate(zip(got[key], want[key], strict=True)):
            np.testing.assert_array_equal(g, w, err_msg=f"{key}[{i}]")
