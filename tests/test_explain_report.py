"""The explanation report on a fine-tuned classifier whose evidence is known (it learned that "denies"
means negated): the sanity checks of Adebayo et al. and the deletion curve, counterfactual edits, the
page opened in a real headless Chromium (Debian's, driven by Playwright), and ``cbert explain``'s
command line with its one-line errors."""

from __future__ import annotations

import io
import json
import os
import sys
import warnings

import numpy as np
import pytest
from conftest import WORDS, run_cli, write_checkpoint, write_vocab

import cbert
from cbert.cli import main
from cbert.errors import InputError
from cbert.explain import METHODS, Options, make_subject, run_method
from cbert.explain.page import render_page
from cbert.explain.report import build_report, report_json
from cbert.explain.sanity import deletion_curve, layer_groups, randomization_test, randomized_model, spearman
from cbert.explain.screenshot import screenshot

# shap's Partition explainer JIT-compiles its helpers with numba on first use in each process (15-50 s
# here), to speed up loops that take milliseconds on a nine-token note: run them as plain Python.
os.environ.setdefault("NUMBA_DISABLE_JIT", "1")

SMALL = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=37, vocab_size=101,
             max_position_embeddings=40)
KEYWORD = "denies"
POOL = [w for w in WORDS if w not in (KEYWORD, "no")]
NOTE = "the patient denies chest pain and fever"


def _sentence(rng, negated: bool) -> str:
    words = list(rng.choice(POOL, size=int(rng.integers(5, 10))))
    if negated:
        words.insert(int(rng.integers(0, len(words) + 1)), KEYWORD)
    return " ".join(words)


@pytest.fixture(scope="module")
def keyword_model(tmp_path_factory) -> str:
    """A tiny BERT fine-tuned by torch (100 AdamW steps) to say "negated" exactly when "denies" occurs;
    checked on held-out sentences, so the explanations have a known right answer."""
    import torch
    import transformers

    folder = str(tmp_path_factory.mktemp("keyword_classifier"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only wait on each other on a shared machine
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = transformers.BertConfig(**SMALL, num_labels=2, id2label={0: "present", 1: "negated"},
                                  label2id={"present": 0, "negated": 1}, attn_implementation="eager")
    hf = transformers.BertForSequenceClassification(cfg)
    write_vocab(folder, SMALL["vocab_size"])
    tokenizer = cbert.tokenizer.Tokenizer.from_folder(folder, SMALL["max_position_embeddings"])
    optimizer = torch.optim.AdamW(hf.parameters(), lr=2e-3)
    hf.train()
    for _ in range(100):
        labels = rng.integers(0, 2, 16)
        batch = tokenizer([_sentence(rng, bool(y)) for y in labels])
        loss = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}, labels=torch.from_numpy(labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pretrained(folder, safe_serialization=True)
    labels = rng.integers(0, 2, 64)
    predicted = cbert.load(folder, backend="numpy").predict_proba([_sentence(rng, bool(y)) for y in labels])
    assert (predicted.argmax(1) == labels).mean() > 0.95, "the keyword classifier did not learn its keyword"
    return folder


@pytest.fixture(scope="module")
def companion_mlm(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("companion_mlm"))
    write_checkpoint(folder, "BertForMaskedLM", SMALL)
    return folder


@pytest.fixture(scope="module")
def report(keyword_model, companion_mlm):
    model = cbert.load(keyword_model, backend="numpy")
    return build_report(model, NOTE, methods=list(METHODS), options=Options(shap_evals=100, lime_samples=300),
                        mlm=companion_mlm)


def test_every_method_finds_the_keyword_and_passes_its_sanity_checks(report):
    for name, method in report["methods"].items():
        top = max(method["words"], key=lambda w: w["score"])
        if name != "grad-x-input":  # saturated: the gradient at p = 0.99 is flat, a known failure it shows
            assert top["word"] == KEYWORD, (name, method["words"])
    for name in ("integrated-gradients", "occlusion", "shap", "lime"):
        r, d = report["sanity"][name]["randomization"], report["sanity"][name]["deletion"]
        assert r["passed"] and abs(r["stages"][-1]["spearman_abs"]) < 0.5, (name, r)
        assert d["passed"] and d["auc_top"] < d["auc_random"], (name, d)
    assert report["methods"]["integrated-gradients"]["details"]["completeness_gap"] < 0.01


def test_the_sanity_checks_can_fail(keyword_model):
    """Deletion in the worst order is slower than random, and an un-randomized model correlates fully."""
    model = cbert.load(keyword_model, backend="numpy")
    subject = make_subject(model, NOTE)
    e = run_method(subject, "integrated-gradients")
    e_backwards = type(e)(**{**e.__dict__, "scores": -e.scores})
    assert not deletion_curve(subject, e_backwards)["passed"]
    same = run_method(subject.rebind(randomized_model(model, [], seed=0)), "integrated-gradients")
    assert spearman(np.abs(e.scores), np.abs(same.scores)) == pytest.approx(1.0)
    cascade = randomization_test(subject, e, cascade=True)
    assert [s["randomized"].split(", ")[-1] for s in cascade["stages"]] == [g for g, _ in layer_groups(model)]
    assert cascade["passed"]


def test_counterfactuals_change_the_label_by_replacing_the_keyword(report, keyword_model, companion_mlm):
    found = report["counterfactuals"]["counterfactuals"]
    assert found and report["counterfactuals"]["words"][0]["word"] == KEYWORD
    model = cbert.load(keyword_model, backend="numpy")
    probs = model.predict_proba([c["text"] for c in found])
    for c, p in zip(found, probs):
        assert [e["original"] for e in c["edits"]] == [KEYWORD]  # one word: the smallest edits come first
        assert c["label"] == "present" and p.argmax() == 0 and c["probability"] == pytest.approx(p[0], abs=1e-6)
    assert model.counterfactuals(NOTE, mlm=companion_mlm)[0]["label"] == "present"
    with pytest.raises(InputError, match="has none; give a companion masked-LM checkpoint"):
        model.counterfactuals(NOTE)


def test_the_page_in_headless_chromium_shows_every_token_and_method(report, tmp_path):
    page_file = tmp_path / "report.html"
    page_file.write_text(render_page(report), encoding="utf-8")
    seen = {}

    def inspect(page):
        seen["text"] = page.evaluate("document.body.textContent")
        seen["svgs"] = page.locator("svg").count()

    png, refused = screenshot(page_file, inspect=inspect)
    assert refused == []  # nothing fetched beyond the file itself
    for token in [t["token"] for t in report["tokens"]] + report["attention"]["tokens"]:
        assert token in seen["text"], token
    for name in METHODS:
        assert name in seen["text"], name
    layers, heads = report["attention"]["maps"].shape[:2]
    assert seen["svgs"] >= layers * (heads + 1) + 2  # the layer x head grid, the big map, the rollout map
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert image.shape[0] > 800
    assert (image.min(-1) < 235).mean() > 0.03  # not a blank page: text, highlights and heatmaps
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100  # colours: viridis maps, red and blue highlights


def test_json_holds_the_numbers_by_method_name(report):
    data = json.loads(json.dumps(report_json(report)))
    assert set(data["methods"]) == set(METHODS)
    ig = data["methods"]["integrated-gradients"]
    assert len(ig["tokens"]) == len(data["tokens"]) and ig["details"]["completeness"][0]["points"] >= 50
    assert data["labels"]["negated"] == pytest.approx(report["probability"])


def test_cbert_explain_writes_the_page_and_json(keyword_model, tmp_path):
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    r = run_cli("explain", "--model", keyword_model, "--backend", "numpy", NOTE, "--methods",
                "occlusion,attention-rollout", "--no-sanity", "--out", str(out), "--json", str(js))
    assert r.returncode == 0, r.stderr
    assert "denies" in r.stdout and "counterfactuals: none" in r.stdout  # no masked-LM head, and it says so
    assert set(json.loads(js.read_text())["methods"]) == {"occlusion", "attention-rollout"}
    assert "<svg" in out.read_text() and "http" not in out.read_text().replace("http://www.w3.org/2000/svg", "")


def _fails(capsys, message: str, *argv) -> None:
    assert main(["explain", *argv]) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("cbert explain")]  # not Python's warnings
    assert len(said) == 1 and message in said[0] and "Traceback" not in err, err


def test_bad_inputs_are_one_line_and_exit_2(keyword_model, tmp_path, capsys, monkeypatch):
    args = ["--model", keyword_model, "--out", str(tmp_path / "r.html")]
    _fails(capsys, "target='absent' is not a label of this classifier; its labels: present, negated",
           NOTE, "--backend", "numpy", "--target", "absent", "--methods", "occlusion", *args)
    _fails(capsys, "the text has no tokens", " \t ", "--backend", "numpy", *args)
    _fails(capsys, "integrated-gradients needs gradients, which backend='wgpu' does not compute; the backends with "
           "gradients: numpy, mlx", NOTE, "--backend", "wgpu", "--methods", "integrated-gradients", *args)
    monkeypatch.setitem(sys.modules, "shap", None)  # as if not installed: its import fails
    _fails(capsys, 'the shap method needs shap, which is not installed', NOTE, "--backend", "numpy",
           "--methods", "shap", *args)
    assert 'pip install "cbert[explain]"' in main.__globals__["sys"].modules["cbert.extras"].INSTALL["shap"]
    assert not (tmp_path / "r.html").exists()
