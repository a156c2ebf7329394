"""Linear probes: cross-validation on synthetic embeddings (separable: ~100%, shuffled labels: chance),
the numpy regression against scikit-learn's, the CLI end to end with its cache, --save against
transformers, and the bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from conftest import write_checkpoint

import cbert
from cbert.adapt import logreg
from cbert.adapt import probe as probe_mod
from cbert.adapt.probe import choose_C, score
from cbert.cli import main

SHAPE = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=40, vocab_size=97,
             max_position_embeddings=40)


def _clusters(n: int, classes: int, seed: int, spread: float):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(size=(classes, 24)) * spread
    return centers[y] + rng.normal(size=(n, 24)), y


@pytest.mark.parametrize("classes", [2, 3])
def test_cv_on_separable_embeddings_is_near_perfect_and_on_shuffled_labels_chance(classes):
    x, y = _clusters(240, classes, 0, spread=4.0)
    _, cv = choose_C(x, y, classes, 5, 0, use_sklearn=False)  # (scikit-learn's fit: the test below)
    assert cv >= 0.98, cv
    shuffled = np.random.default_rng(1).permutation(y)
    _, cv = choose_C(x, shuffled, classes, 5, 0, use_sklearn=False)
    assert abs(cv - 1 / classes) < 0.12, cv  # chance, give or take the noise of 240 rows


@pytest.mark.parametrize("classes", [2, 4])
def test_numpy_regression_equals_scikit_learn(classes):
    x, y = _clusters(150, classes, 2, spread=1.0)
    x = x * 3 + 5  # unscaled, off-centre features, as embeddings are
    for C in (0.01, 1.0, 100.0):
        ours, theirs = logreg.fit(x, y, classes, C, use_sklearn=False), logreg.fit(x, y, classes, C, use_sklearn=True)
        np.testing.assert_allclose(ours.predict_proba(x), theirs.predict_proba(x), atol=2e-4)


def test_bootstrap_interval_holds_the_value():
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    p1 = y * 0.3 + rng.random(200) * 0.7  # right about 80% of the time
    proba = np.stack([1 - p1, p1], 1)
    s = score(proba, y, np.random.default_rng(0))
    for name in ("accuracy", "macro_f1", "auroc"):
        value, (lo, hi) = s.metrics[name]
        assert lo <= value <= hi and hi - lo < 0.25
    assert s.lines()[0].startswith("accuracy 0.") and "(95% CI 0." in s.lines()[0]


def _rows(path, n: int, classes=("well", "sick"), seed: int = 0):
    rng = np.random.default_rng(seed)
    words = {"sick": ["chest pain", "fever", "cough"], "well": ["no complaints", "feels well", "normal exam"],
             "dead": ["no pulse"],
             "other": ["mg po daily", "iv bid"]}
    rows = [{"text": f"patient {rng.choice(words[classes[i % len(classes)]])}", "label": classes[i % len(classes)]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe") / "bert"
    write_checkpoint(str(folder), "BertModel", SHAPE)
    return folder


def test_cli_reports_metrics_baselines_and_caches_embeddings(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    train, dev = _rows(tmp_path / "train.jsonl", 30), _rows(tmp_path / "dev.jsonl", 20, seed=1)
    args = ["probe", "--model", str(tiny), "--train", str(train), "--eval", str(dev), "--backend", "numpy",
            "--folds", "3", "--pooling", "mean"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("probe: mean pooling, 32 features, C=")
    metric = [line for line in out if line.split(" ")[0] in ("accuracy", "macro_f1", "auroc")]
    assert len(metric) == 9  # three systems, three metrics (two classes: AUROC too)
    for line in metric:
        name, value, ci = line.split(" ", 2)
        lo, hi = (float(v) for v in ci.removeprefix("(95% CI ").removesuffix(")").split("-"))
        assert 0 <= lo <= float(value) <= hi <= 1
    assert any(line.startswith("majority-class baseline") for line in out)
    assert any(line.startswith("bag-of-words baseline") for line in out)
    assert len(list((tmp_path / "cache" / "cbert" / "probe").glob("*.npy"))) == 2
    # The second run reads the cache: no forward at all.
    monkeypatch.setattr(probe_mod, "_embed", lambda *a, **k: pytest.fail("embedded again despite the cache"))
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == out


def test_save_writes_a_classifier_transformers_runs_as_the_probe(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    train, dev = _rows(tmp_path / "train.jsonl", 30, ("well", "sick", "other")), _rows(tmp_path / "d.jsonl", 9)
    model = cbert.load(tiny, backend="numpy")
    report = probe_mod.run_probe(model, train, dev, pooling="pooler", folds=3, progress=False)
    out = tmp_path / "saved"
    assert probe_mod.save_probe(model, report, out) == "BertForSequenceClassification"
    texts = ["patient fever", "patient iv bid daily"]
    expected = report.model.predict_proba(probe_mod._embed(model, [{"text": t} for t in texts], "pooler", False, 8,
                                                           False))
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    batch = model.tokenizer(texts)
    with torch.no_grad():
        got = torch.softmax(hf(input_ids=torch.tensor(batch["input_ids"]),
                               attention_mask=torch.tensor(batch["attention_mask"])).logits, -1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert hf.config.id2label == {i: c for i, c in enumerate(report.classes)}


def _long_note(words: int = 70) -> str:
    # the first words differ from the rest, so the first window's vector differs from the average
    rng = np.random.default_rng(0)
    rest = rng.choice("chest pain fever cough heart failure copd admitted discharged daily".split(), words - 20)
    return " ".join(["no"] * 20 + list(rest))


@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_long_texts_and_pairs_are_windowed_as_embed_windows_them(tiny, pooling):
    """A text (or a pair's second text) longer than the model's 40 positions is split into windows, each
    pooled (or its pooler's output), and the windows averaged: nothing is cut off."""
    from cbert.tasks.embed import pool
    from cbert.tasks.windows import split

    model = cbert.load(tiny, backend="numpy")
    note = _long_note()
    rows = [{"text": note, "line": 1}, {"text": "patient fever", "text_pair": note, "line": 2},
            {"text": "patient cough", "line": 3}]
    got = probe_mod._embed(model, rows, pooling, False, 8, False, "notes.jsonl")

    def expected(text, pair):
        enc = model.tokenizer.encode([text], text_pair=None if pair is None else [pair], check_length=False)[0]
        windows = split(enc, model.config.max_seq_len, None, None if pair is None else 1)
        vectors = []
        for w in windows:
            o = model.forward(np.array([w.ids]), np.ones((1, len(w.ids)), np.int64), np.array([w.type_ids]),
                              outputs=("last_hidden_state", "pooler_output"))
            vectors.append(o["pooler_output"][0] if pooling == "pooler" else
                           pool(o["last_hidden_state"][0], np.ones(len(w.ids)), pooling))
        return len(windows), np.mean(vectors, 0), vectors[0]

    for row, vector in zip(rows, got):
        n, whole, first = expected(row["text"], row.get("text_pair"))
        np.testing.assert_allclose(vector, whole, atol=1e-5)
        if row["line"] < 3:  # the long ones: several windows, not the first one alone (a truncation)
            assert n > 2 and np.abs(vector - first).max() > 1e-4  # 10x the tolerance above
    if pooling == "mean":  # a single text's vector is model.embed's
        np.testing.assert_allclose(got[0], model.embed([note], "mean", False)[0], atol=1e-6)


def test_a_pair_whose_first_text_fills_the_window_is_named(tiny):
    model = cbert.load(tiny, backend="numpy")
    rows = [{"text": "patient fever", "text_pair": "cough", "line": 1},
            {"text": _long_note(), "text_pair": "fever", "line": 2}]
    with pytest.raises(cbert.errors.InputError, match=r"^notes.jsonl:2: the fixed part of the input"):
        probe_mod._embed(model, rows, "mean", False, 8, False, "notes.jsonl")


# -- bad inputs: one line, exit status 2 ----------------------------------------------------------

def test_one_class_file_exits_2(tiny, tmp_path, capsys):
    train = _rows(tmp_path / "train.jsonl", 10, ("sick",))
    assert main(["probe", "--model", str(tiny), "--train", str(train), "--eval", str(train), "--backend",
                 "numpy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'sick'" in err and "at least two classes" in err


def test_other_bad_probe_inputs_exit_2(tiny, tmp_path, capsys):
    train = _rows(tmp_path / "train.jsonl", 10)
    base = ["probe", "--model", str(tiny), "--train", str(train), "--backend", "numpy"]
    unseen = _rows(tmp_path / "unseen.jsonl", 4, ("well", "dead"))
    cases = [(["--eval", str(unseen)], "unseen.jsonl:2: label 'dead' is not among"),
             (["--eval", str(train), "--folds", "6"], "fewer than --folds 6"),
             (["--eval", str(train), "--save", str(tmp_path / "s")], "cannot compute this probe")]
    for extra, expected in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "s").exists()
