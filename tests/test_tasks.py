"""Tasks against Hugging Face's own pipelines on the same random checkpoints, and long-note windowing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import BACKEND_DTYPES, assert_close
from conftest import run_cli as _cli
from test_families import family_checkpoints  # noqa: F401  (the fixture)

import cbert
from cbert.tasks.windows import aggregate

TEXTS = ["the patient was given iv mg for chest pain", "no fever and no cough", "admitted with heart failure",
         "history of copd discharged daily"]


def _pipeline(task: str, folder: str):
    import transformers

    return transformers.pipeline(task, model=folder, tokenizer=folder, device="cpu")


@pytest.mark.parametrize("name", ["distil_mlm"])
def test_fill_mask_matches_the_pipeline(family_checkpoints, name):  # noqa: F811
    folder, _ = family_checkpoints(name)
    text = "the patient was given [MASK] for chest pain"
    want = _pipeline("fill-mask", folder)(text, top_k=5)
    got = cbert.load(folder, backend="numpy").fill_mask(text, top_k=5)
    assert [g["token"] for g in got] == [w["token"] for w in want]
    assert [g["token_str"] for g in got] == [w["token_str"] for w in want]
    assert [g["sequence"] for g in got] == [w["sequence"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)


def test_fill_mask_bert(checkpoints):
    folder, _ = checkpoints("head32_mlm")
    text = "no fever and [MASK] cough"
    want = _pipeline("fill-mask", folder)(text, top_k=3)
    got = cbert.load(folder, backend="numpy").fill_mask(text, top_k=3)
    assert [(g["token"], g["sequence"]) for g in got] == [(w["token"], w["sequence"]) for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)


@pytest.mark.parametrize("name", ["bert_seq", "distil_seq"])
def test_classify_matches_the_pipeline(family_checkpoints, name):  # noqa: F811
    folder, _ = family_checkpoints(name)
    model = cbert.load(folder, backend="numpy")
    pipe = _pipeline("text-classification", folder)
    want_top = pipe(TEXTS)
    got_top = model.classify(TEXTS)
    assert [g["label"] for g in got_top] == [w["label"] for w in want_top]
    np.testing.assert_allclose([g["score"] for g in got_top], [w["score"] for w in want_top], atol=1e-5)
    want_all = pipe(TEXTS[0], top_k=None)
    got_all = model.classify(TEXTS[0], top_k=None)
    assert [g["label"] for g in got_all] == [w["label"] for w in want_all]
    np.testing.assert_allclose([g["score"] for g in got_all], [w["score"] for w in want_all], atol=1e-5)
    assert {g["label"] for g in got_all} == {"NO_READMISSION", "READMISSION", "DECEASED"}


@pytest.mark.parametrize("name", ["bert_tok", "distil_tok"])
def test_ner_matches_the_pipeline(family_checkpoints, name):  # noqa: F811
    folder, _ = family_checkpoints(name)
    model = cbert.load(folder, backend="numpy")
    pipe = _pipeline("token-classification", folder)
    texts = TEXTS + ["Lasix 40mg IV BID; pt w/ CHF & COPD"]
    n_entities = 0
    for text in texts:
        want = pipe(text, aggregation_strategy="simple")
        got = model.ner(text)
        assert [(g["entity_group"], g["word"], g["start"], g["end"]) for g in got] == [
            (w["entity_group"], w["word"], w["start"], w["end"]) for w in want], text
        np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)
        assert all(0 <= g["start"] < g["end"] <= len(text) for g in got)
        n_entities += len(got)
    assert n_entities > 0  # the random model does predict entities: the comparison is not vacuous


def _hf_v4_qa(model_hf, tok, question, context, max_answer_len=15):
    """Hugging Face's question-answering pipeline (transformers 4.x; removed in 5) on one window."""
    import torch

    enc = tok(question, context, return_offsets_mapping=True, return_tensors="np")
    with torch.no_grad():
        out = model_hf(**{k: torch.from_numpy(v) for k, v in enc.items() if k != "offset_mapping"})
    seq_ids = enc.sequence_ids(0)
    p_mask = np.array([s != 1 for s in seq_ids], dtype=int)
    p_mask[enc["input_ids"][0] == tok.cls_token_id] = 0
    allowed = np.abs(p_mask - 1) & enc["attention_mask"][0]
    start, end = out.start_logits[0].numpy(), out.end_logits[0].numpy()
    start = np.where(allowed == 0, -10000.0, start)
    end = np.where(allowed == 0, -10000.0, end)
    start = np.exp(start - start.max()) / np.exp(start - start.max()).sum()
    end = np.exp(end - end.max()) / np.exp(end - end.max()).sum()
    start[0] = end[0] = 0.0
    cand = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)
    s, e = np.unravel_index(cand.argmax(), cand.shape)
    a, b = enc["offset_mapping"][0][s][0], enc["offset_mapping"][0][e][1]
    return {"score": float(cand[s, e]), "start": int(a), "end": int(b), "answer": context[a:b]}


@pytest.mark.parametrize("name", ["bert_qa", "distil_qa"])
def test_qa_matches_the_pipeline_algorithm(family_checkpoints, name):  # noqa: F811
    import transformers

    folder, hf = family_checkpoints(name)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = cbert.load(folder, backend="numpy")
    for question, context in [("what was given", "the patient was given iv mg for pain"),
                              ("history", "history of copd and heart failure, discharged daily")]:
        want = _hf_v4_qa(hf, tok, question, context)
        got = model.qa(question, context)
        assert (got["start"], got["end"], got["answer"]) == (want["start"], want["end"], want["answer"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)


# -- long notes ----------------------------------------------------------------------------

LONG = " ".join(["the patient was given iv mg for chest pain and no fever"] * 9)  # > 40 positions


def _windows(model, text, stride):
    from cbert.tasks.windows import split

    return split(model.tokenizer.encode([text], check_length=False)[0], model.config.max_seq_len, stride)


def test_classify_windows_aggregate_as_said(family_checkpoints):  # noqa: F811
    folder, _ = family_checkpoints("bert_seq")
    model = cbert.load(folder, backend="numpy")
    windows = _windows(model, LONG, 8)
    assert len(windows) >= 3
    probs = []
    for w in windows:
        logits = model.forward([w.ids], token_type_ids=[w.type_ids]).logits[0]
        probs.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    probs = np.array(probs)
    n = len(probs)
    for how, want in (("mean", probs.mean(0)), ("max", probs.max(0)),
                      ("vote", (probs.max(0) + probs.mean(0) * n / 2) / (1 + n / 2))):
        got = model.classify(LONG, top_k=None, aggregation=how, stride=8)
        by_label = {g["label"]: g["score"] for g in got}
        assert_close([by_label[lab] for lab in model.config.labels(3)], want, how, 1e-6)
    # One window: every aggregation is the plain result.
    short = model.classify(TEXTS[0], top_k=None, aggregation="vote")
    plain = model.classify(TEXTS[0], top_k=None, aggregation="mean")
    assert short == plain


def test_vote_score_formula():
    p = np.array([[0.2], [0.9], [0.4]])
    assert aggregate(p, "vote")[0] == pytest.approx((0.9 + 0.5 * 1.5) / 2.5)


def test_ner_keeps_each_tokens_most_central_window(family_checkpoints):  # noqa: F811
    folder, _ = family_checkpoints("bert_tok")
    model = cbert.load(folder, backend="numpy")
    windows = _windows(model, LONG, 10)
    assert len(windows) >= 3
    enc = model.tokenizer.encode([LONG], check_length=False)[0]
    n = sum(1 for m in enc.special_tokens_mask if not m)
    best, chosen = np.full(n, -1), np.zeros((n, 5), np.float32)
    for w in windows:
        logits = model.forward([w.ids]).logits[0]
        pos = [p for p in w.positions if p >= 0]
        for row, p in enumerate(w.positions):
            if p < 0:
                continue
            c = min(p - pos[0], pos[-1] - p)
            if c > best[p]:
                best[p], chosen[p] = c, logits[row]
    labels = model.config.labels(5)
    want_tags = [labels[k] for k in chosen.argmax(1)]
    got = model.ner(LONG, stride=10)
    # Rebuild the tags of the entities found and compare with the by-hand tags.
    offsets = [enc.offsets[i] for i, m in enumerate(enc.special_tokens_mask) if not m]
    for e in got:
        inside = [i for i, (a, b) in enumerate(offsets) if a >= e["start"] and b <= e["end"]]
        assert all(want_tags[i].split("-")[-1] == e["entity_group"] for i in inside)
    tagged = {i for e in got for i, (a, b) in enumerate(offsets) if a >= e["start"] and b <= e["end"]}
    assert tagged == {i for i, t in enumerate(want_tags) if t != "O"}
    # A text that fits in one window gives exactly the un-windowed result, whatever the stride.
    assert model.ner(TEXTS[0], stride=3) == model.ner(TEXTS[0], stride=15)


def _decode(start_logits, end_logits, allowed, cls_first, max_answer_len=15):
    start = np.where(allowed, start_logits, -10000.0)
    end = np.where(allowed, end_logits, -10000.0)
    start = np.exp(start - start.max()) / np.exp(start - start.max()).sum()
    end = np.exp(end - end.max()) / np.exp(end - end.max()).sum()
    if cls_first:
        start[0] = end[0] = 0.0
    cand = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)
    s, e = np.unravel_index(cand.argmax(), cand.shape)
    return float(cand[s, e]), int(s), int(e)


def test_qa_takes_the_best_span_over_windows(family_checkpoints):  # noqa: F811
    from cbert.tasks.windows import split

    folder, _ = family_checkpoints("bert_qa")
    model = cbert.load(folder, backend="numpy")
    question = "what was given"
    enc = model.tokenizer.encode([question], text_pair=[LONG], check_length=False)[0]
    windows = split(enc, model.config.max_seq_len, 5, content_sequence=1)
    assert len(windows) >= 3
    best = (-1.0, None)
    for w in windows:
        out = model.forward([w.ids], token_type_ids=[w.type_ids])
        allowed = np.array([p >= 0 or i == model.tokenizer.cls_token_id for i, p in zip(w.ids, w.positions)])
        score, s, e = _decode(out.start_logits[0], out.end_logits[0], allowed, True)
        if score > best[0]:
            best = (score, (w.offsets[s][0], w.offsets[e][1]))
    got = model.qa(question, LONG, stride=5)
    assert got["score"] == pytest.approx(best[0], abs=1e-6)
    assert (got["start"], got["end"]) == best[1]
    assert LONG[got["start"]:got["end"]] == got["answer"]
    top3 = model.qa(question, LONG, stride=5, top_k=3)
    assert [a["score"] for a in top3] == sorted([a["score"] for a in top3], reverse=True)
    assert top3[0] == got


def test_task_errors(family_checkpoints, checkpoints):  # noqa: F811
    folder, _ = family_checkpoints("bert_tok")
    model = cbert.load(folder, backend="numpy")
    with pytest.raises(ValueError, match=r"classify needs a sequence classification head; this checkpoint is a "
                                         r"BertForTokenClassification"):
        model.classify("x")
    with pytest.raises(ValueError, match=r"qa needs a question answering head"):
        model.qa("q", "c")
    with pytest.raises(ValueError, match=r"stride=40: expected 0 <= stride < 38"):
        model.ner(LONG, stride=40)
    seq, _ = family_checkpoints("bert_seq")
    with pytest.raises(ValueError, match=r"aggregation='median'; choose one of mean, max, vote"):
        cbert.load(seq, backend="numpy").classify("x", aggregation="median")
    qa, _ = family_checkpoints("bert_qa")
    with pytest.raises(cbert.InputError, match="non-empty question and context"):
        cbert.load(qa, backend="numpy").qa("", "context")
    with pytest.raises(cbert.InputError, match=r"leaves no room for the text"):
        cbert.load(qa, backend="numpy").qa("history " * 45, "context here")


def test_cli_tasks(family_checkpoints):  # noqa: F811
    seq, _ = family_checkpoints("bert_seq")
    r = _cli("classify", "--model", seq, "--aggregation", "vote", *TEXTS[:2])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows == cbert.load(seq, backend="numpy").classify(TEXTS[:2], aggregation="vote")
    tok, _ = family_checkpoints("bert_tok")
    r = _cli("ner", "--model", tok, TEXTS[0])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(json.dumps(cbert.load(tok, backend="numpy").ner(TEXTS[0])))
    qa, _ = family_checkpoints("bert_qa")
    r = _cli("qa", "--model", qa, "--question", "what was given", "--context", TEXTS[0])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["answer"] in TEXTS[0]
    r = _cli("classify", "--model", tok, "x")
    assert r.returncode == 2 and "classify needs a sequence classification head" in r.stderr


@pytest.mark.parametrize("backend", sorted({b for b, _ in BACKEND_DTYPES} - {"numpy"}))
def test_tasks_agree_across_backends(family_checkpoints, backend):  # noqa: F811
    seq, _ = family_checkpoints("distil_seq")
    want = cbert.load(seq, backend="numpy").classify([LONG, TEXTS[1]], top_k=None, aggregation="vote")
    got = cbert.load(seq, backend=backend).classify([LONG, TEXTS[1]], top_k=None, aggregation="vote")
    for g, w in zip(got, want):
        assert [x["label"] for x in g] == [x["label"] for x in w]
        np.testing.assert_allclose([x["score"] for x in g], [x["score"] for x in w], atol=1e-4)
    tok, _ = family_checkpoints("albert_tok")
    want = cbert.load(tok, backend="numpy").ner(LONG, stride=6)
    got = cbert.load(tok, backend=backend).ner(LONG, stride=6)
    assert [(e["entity_group"], e["start"], e["end"]) for e in got] == [
        (e["entity_group"], e["start"], e["end"]) for e in want]
    qa, _ = family_checkpoints("roberta_qa")
    want = cbert.load(qa, backend="numpy").qa("what was given", LONG, stride=6)
    got = cbert.load(qa, backend=backend).qa("what was given", LONG, stride=6)
    assert (got["start"], got["end"]) == (want["start"], want["end"])
    assert got["score"] == pytest.approx(want["score"], abs=1e-4)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_outputs_asked_for_skip_the_other_heads(checkpoints, backend, dtype):
    folder, _ = checkpoints("head16_pretrain")
    model = cbert.load(folder, backend=backend, dtype=dtype)
    ids = np.array([[2, 5, 7, 9, 3], [2, 8, 8, 3, 0]])
    full = model.forward(ids)
    hidden = model.forward(ids, outputs=("last_hidden_state",))
    assert set(hidden) == {"last_hidden_state"}
    assert np.array_equal(hidden.last_hidden_state, full.last_hidden_state)
    # labels bring back the logits their loss reads
    labels = np.full(ids.shape, -100)
    labels[0, 2] = 7
    with_loss = model.forward(ids, outputs=("last_hidden_state",), labels=labels)
    assert "prediction_logits" in with_loss and np.isfinite(with_loss.loss)
    with pytest.raises(cbert.InputError, match="outputs: 'logits' is not an output"):
        model.forward(ids, outputs=("logits",))
