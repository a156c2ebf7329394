"""cbert.explain's methods against independent computations: integrated gradients' completeness
(f from a plain forward), grad x input against torch autograd through transformers, occlusion
against a forward of the text with the word masked, attention rollout against a hand computation
from transformers' attentions, attention flow against the max-flow of a two-layer graph by hand;
every task and long notes over windows; the same numbers on numpy, MLX and wgpu."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_checkpoint

import cbert
from cbert.errors import InputError
from cbert.explain import explain, make_subject, run_method
from cbert.explain.rollout import flow_values

# Two layers, a small vocabulary (tests/conftest.py's WordPiece), weights large enough (initializer_range)
# that every token moves the prediction measurably.
SMALL = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=37, vocab_size=101,
             max_position_embeddings=40, initializer_range=0.3)
KINDS = {
    "cls": ("BertForSequenceClassification", dict(num_labels=3, id2label={0: "present", 1: "negated", 2: "possible"},
                                                  label2id={"present": 0, "negated": 1, "possible": 2})),
    # No "O" label: a random tagger then finds entities (ner drops "O" spans).
    "ner": ("BertForTokenClassification", dict(num_labels=3, id2label={0: "B-DRUG", 1: "I-DRUG", 2: "B-DOSE"},
                                               label2id={"B-DRUG": 0, "I-DRUG": 1, "B-DOSE": 2})),
    "qa": ("BertForQuestionAnswering", {}),
    "mlm": ("BertForMaskedLM", {}),
}
NOTE = "the patient was given lasix for chest pain and denies fever"
LONG_NOTE = " ".join([NOTE] * 6)  # about 80 tokens: several windows of a 40-position model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = {}

    def get(kind: str):
        if kind not in cache:
            folder = str(tmp_path_factory.mktemp(f"explain_{kind}"))
            cls_name, extra = KINDS[kind]
            cache[kind] = (folder, write_checkpoint(folder, cls_name, {**SMALL, **extra}))
        return cache[kind]

    return get


def _gap(e) -> float:
    return e.details["completeness_gap"]


def test_integrated_gradients_are_complete_at_the_default_steps(tiny):
    """Sum of attributions = f(x) - f(baseline) within 1%, f the target's log-probability from a forward."""
    model = cbert.load(tiny("cls")[0], backend="numpy")
    e = explain(model, NOTE, method="integrated-gradients")
    assert _gap(e) < 0.01, e.details["completeness"]
    check = e.details["completeness"][0]
    assert check["f_input"] == pytest.approx(np.log(e.probability), abs=1e-5)  # the same f as a plain forward
    assert abs(check["f_input"] - check["f_baseline"]) > 1e-3  # a real change to account for
    assert abs(e.scores.sum() - (check["f_input"] - check["f_baseline"])) < 0.01 * abs(
        check["f_input"] - check["f_baseline"])


FAMILIES = {  # family -> (transformers class, config class, kwargs): the other layouts' quirks
    "roberta": ("RobertaForSequenceClassification", "RobertaConfig",  # positions after the padding index
                dict(SMALL, max_position_embeddings=42, type_vocab_size=1, pad_token_id=1)),
    "distilbert": ("DistilBertForSequenceClassification", "DistilBertConfig",  # a ReLU head: kinks on the path
                   dict(dim=32, n_heads=4, n_layers=2, hidden_dim=37, vocab_size=101, max_position_embeddings=40,
                        initializer_range=0.3)),
    "albert": ("AlbertForSequenceClassification", "AlbertConfig",  # embeddings narrower than the layers
               dict(SMALL, embedding_size=16)),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_integrated_gradients_are_complete_in_every_family_and_window(family, tmp_path):
    cls_name, config_name, kwargs = FAMILIES[family]
    write_checkpoint(str(tmp_path), cls_name, kwargs, config_name=config_name)
    e = explain(cbert.load(tmp_path, backend="numpy"), " ".join([NOTE] * 3), method="integrated-gradients")
    assert e.target["windows"] > 1 and len(e.details["completeness"]) == e.target["windows"]
    assert _gap(e) < 0.01, e.details["completeness"]


def test_grad_x_input_equals_torch_autograd(tiny):
    import torch

    folder, hf = tiny("cls")
    model = cbert.load(folder, backend="numpy")
    e = explain(model, NOTE, method="grad-x-input")
    batch = model.tokenizer([NOTE])
    ids, types = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["token_type_ids"])
    emb = hf.bert.embeddings(input_ids=ids, token_type_ids=types).detach().requires_grad_(True)
    hook = hf.bert.embeddings.register_forward_hook(lambda module, args, out: emb)  # cut at the embeddings' output
    try:
        logits = hf(input_ids=ids, token_type_ids=types, attention_mask=torch.ones_like(ids)).logits
    finally:
        hook.remove()
    torch.log_softmax(logits, -1)[0, e.target["index"]].backward()
    expected = (emb * emb.grad).sum(-1)[0, 1:-1].detach().numpy()  # the content tokens: [CLS] and [SEP] left out
    np.testing.assert_allclose(e.scores, expected, atol=1e-4 * np.abs(expected).max())


def test_occlusion_equals_a_forward_of_the_masked_text_over_windows(tiny):
    """Each word's occlusion score is p(note) - p(note with the word's pieces written as [MASK]), with the
    note split into windows and their probabilities averaged as classify does."""
    model = cbert.load(tiny("cls")[0], backend="numpy")
    e = explain(model, LONG_NOTE, method="occlusion")
    assert e.target["windows"] > 2
    label = e.target["index"]
    assert e.probability == pytest.approx(model.predict_proba([LONG_NOTE])[0, label], abs=1e-6)
    texts, drops = [], []
    for (a, b, s, end), w in zip(e.word_spans, e.words()):
        texts.append(LONG_NOTE[:s] + " ".join(["[MASK]"] * (b - a)) + LONG_NOTE[end:])
        drops.append(w["score"])
    masked = model.predict_proba(texts)[:, label]
    np.testing.assert_allclose(drops, e.probability - masked, atol=2e-6)
    assert np.abs(drops).max() > 1e-4
    # Offsets point into the whole note, windows and all.
    for token, (s, end) in zip(e.tokens, e.offsets):
        assert LONG_NOTE[s:end] == token.removeprefix("##")


def test_attention_rollout_equals_a_hand_computation_on_two_layers(tiny):
    import torch

    folder, hf = tiny("cls")
    model = cbert.load(folder, backend="numpy")
    e = explain(model, NOTE, method="attention-rollout")
    batch = model.tokenizer([NOTE])
    with torch.no_grad():
        att = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_attentions=True).attentions
    first, second = (a[0].mean(0).double().numpy() for a in att)  # head means of layers 0 and 1
    eye = np.eye(len(first))
    rollout = (0.5 * second + 0.5 * eye) @ (0.5 * first + 0.5 * eye)  # rows of (A + I) / 2 already sum to 1
    np.testing.assert_allclose(e.scores, rollout[0, 1:-1], atol=1e-6)  # read from [CLS], content tokens


def test_attention_flow_equals_the_two_layer_max_flow_by_hand():
    """Through two layers every path j -> k -> r is a separate pair of edges, so the max flow from input j to
    top token r is sum_k min(A1[k, j], A2[r, k]) (A = (attention + I) / 2)."""
    rng = np.random.default_rng(0)
    att = rng.random((2, 3, 5, 5))
    att /= att.sum(-1, keepdims=True)  # [layers, heads, seq, seq], rows are distributions
    a1, a2 = ((a.mean(0) + np.eye(5)) / 2 for a in att)
    r = 3
    flows = np.array([sum(min(a1[k, j], a2[r, k]) for k in range(5)) for j in range(5)])
    np.testing.assert_allclose(flow_values(att, [r]), flows / flows.sum(), atol=1e-9)


def test_every_task_explains_the_models_own_prediction(tiny):
    ner = cbert.load(tiny("ner")[0], backend="numpy")
    entity = max(ner.ner(NOTE), key=lambda x: x["score"])
    e = explain(ner, NOTE, task="ner", method="integrated-gradients")
    assert (e.target["start"], e.target["end"]) == (entity["start"], entity["end"])
    assert e.probability == pytest.approx(entity["score"], abs=1e-5) and _gap(e) < 0.01

    qa = cbert.load(tiny("qa")[0], backend="numpy")
    answer = qa.qa("what was given", LONG_NOTE)
    e = explain(qa, LONG_NOTE, task="qa", question="what was given", method="integrated-gradients")
    assert e.target["answer"] == answer["answer"] and e.target["start"] == answer["start"]
    assert e.probability == pytest.approx(answer["score"], abs=1e-5) and _gap(e) < 0.01
    assert e.target["windows"] > 1
    assert len(e.tokens) == len(qa.tokenizer.encode([LONG_NOTE], check_length=False)[0].ids) - 2  # the whole note
    assert explain(qa, LONG_NOTE, task="qa", question="what was given", method="occlusion",
                   target="chest pain").target["answer"] == "chest pain"

    mlm = cbert.load(tiny("mlm")[0], backend="numpy")
    masked = "the patient was given [MASK] for chest pain"
    top = mlm.fill_mask(masked)[0]
    e = explain(mlm, masked, method="integrated-gradients")
    assert e.target["token"] == top["token_str"] and e.probability == pytest.approx(top["score"], abs=1e-5)
    assert _gap(e) < 0.01
    mask = e.tokens.index("[MASK]")
    assert e.scores[mask] == 0.0  # the masked position is what is asked, never evidence


def test_bad_targets_and_texts_are_one_line_errors(tiny):
    model = cbert.load(tiny("cls")[0], backend="numpy")
    with pytest.raises(InputError, match="not a label of this classifier; its labels: present, negated, possible"):
        explain(model, NOTE, target="absent")
    with pytest.raises(InputError, match="has no tokens"):
        explain(model, " \n\t ", method="occlusion")
    with pytest.raises(InputError, match="not an attribution method"):
        explain(model, NOTE, method="saliency")
    ner = cbert.load(tiny("ner")[0], backend="numpy")
    with pytest.raises(InputError, match="shap explains a classifier's predict_proba"):
        explain(ner, NOTE, method="shap")
    mlm = cbert.load(tiny("mlm")[0], backend="numpy")
    with pytest.raises(InputError, match="one \\[MASK\\] at a time; the text holds 2"):
        explain(mlm, "[MASK] was given [MASK]", method="occlusion")


def test_mlx_computes_the_numpy_gradients_and_wgpu_the_forward_methods(tiny):
    folder = tiny("cls")[0]
    reference = cbert.load(folder, backend="numpy")
    ref_subject = make_subject(reference, NOTE)
    mlx = make_subject(cbert.load(folder, backend="mlx"), NOTE)
    for method in ("integrated-gradients", "grad-x-input", "occlusion"):
        ours, theirs = run_method(ref_subject, method).scores, run_method(mlx, method).scores
        np.testing.assert_allclose(theirs, ours, atol=1e-3 * np.abs(ours).max())
    wgpu = cbert.load(folder, backend="wgpu")  # forwards only: the attention methods (shader builds are slow here)
    np.testing.assert_allclose(run_method(make_subject(wgpu, NOTE), "attention-rollout").scores,
                               run_method(ref_subject, "attention-rollout").scores, atol=1e-5)
    with pytest.raises(InputError, match="needs gradients, which backend='wgpu' does not compute; the backends "
                                         "with gradients: numpy, mlx"):
        explain(wgpu, NOTE, method="integrated-gradients")
