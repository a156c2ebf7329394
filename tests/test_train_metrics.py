"""The training metrics against the libraries people compare with: scikit-learn (accuracy, macro-F1,
AUROC), seqeval (random tag sequences, and its documented examples and chunking rules worked by hand),
the official SQuAD script's normalization, perplexity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from cbert.train import metrics as m


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    labels = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 5, n))  # class 4 only ever predicted
    assert m.accuracy(pred, labels) == pytest.approx(accuracy_score(labels, pred))
    assert m.macro_f1(pred, labels) == pytest.approx(f1_score(labels, pred, average="macro"))
    binary = rng.integers(0, 2, n)
    binary[:2] = [0, 1]
    scores = np.round(rng.random(n), 1)  # rounded: many ties, counted half as sklearn counts them
    assert m.auroc(scores, binary) == pytest.approx(roc_auc_score(binary, scores))
    multi_true, multi_pred = rng.random((n, 3)) < 0.4, rng.random((n, 3)) < 0.4
    assert m.micro_f1(multi_pred, multi_true) == pytest.approx(f1_score(multi_true, multi_pred, average="micro"))


def test_auroc_of_one_class_is_undefined_not_nan():
    assert m.auroc([0.2, 0.9], [1, 1]) is None
    assert m.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)  # sklearn's documented example


def test_entities_follow_seqeval():
    # seqeval's own docstring examples
    assert m.get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    s = m.entity_scores(y_true, y_pred)
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["f1"] == 0.5 and s["accuracy"] == pytest.approx(0.8)
    # worked by hand from seqeval's start/end-of-chunk rules (its default, lenient mode):
    # an I- after O starts a chunk; a change of type ends one; sentences never join across their border
    assert m.get_entities(["I-PROB", "I-PROB", "O", "I-TEST"]) == [("PROB", 0, 1), ("TEST", 3, 3)]
    assert m.get_entities(["B-PROB", "I-TEST", "I-TEST"]) == [("PROB", 0, 0), ("TEST", 1, 2)]
    assert m.get_entities(["B-X", "B-X", "I-X"]) == [("X", 0, 0), ("X", 1, 2)]
    assert m.get_entities([["B-X", "I-X"], ["I-X"]]) == [("X", 0, 1), ("X", 3, 3)]
    assert m.get_entities(["S-X", "B-Y", "E-Y", "E-Y"]) == [("X", 0, 0), ("Y", 1, 2), ("Y", 3, 3)]  # IOBES
    # one correct entity of two true and three predicted: P 1/3, R 1/2, F1 0.4
    s = m.entity_scores([["B-A", "I-A", "O", "B-B"]], [["B-A", "I-A", "B-B", "I-A"]])
    assert (s["precision"], s["recall"], s["f1"]) == (pytest.approx(1 / 3), 0.5, pytest.approx(0.4))
    assert m.entity_scores([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1.0}


@pytest.mark.parametrize("seed", range(3))
def test_entity_scores_equal_seqeval_on_random_tags(seed):
    import seqeval.metrics as sq

    rng = np.random.default_rng(seed)
    tags = ["O", "B-PROB", "I-PROB", "B-TEST", "I-TEST", "E-PROB", "S-TEST"]  # ill-formed runs included
    true = [list(rng.choice(tags[:5], int(rng.integers(1, 12)))) for _ in range(20)]
    pred = [[t if rng.random() < 0.7 else str(rng.choice(tags)) for t in s] for s in true]
    ours = m.entity_scores(true, pred)
    assert m.get_entities(pred) == sq.sequence_labeling.get_entities(pred)
    assert ours["precision"] == pytest.approx(sq.precision_score(true, pred))
    assert ours["recall"] == pytest.approx(sq.recall_score(true, pred))
    assert ours["f1"] == pytest.approx(sq.f1_score(true, pred))
    assert ours["accuracy"] == pytest.approx(sq.accuracy_score(true, pred))


def test_squad_scores_as_the_official_script():
    assert m.normalize_answer("The  Aspirin, 81 mg!") == "aspirin 81 mg"
    assert m.normalize_answer("an apple a day") == "apple day"
    assert m.exact_match("the aspirin", "Aspirin.") == 1
    assert m.token_f1("aspirin 81 mg daily", "aspirin 81 mg") == pytest.approx(2 * (3 / 4) * 1 / (3 / 4 + 1))
    assert m.token_f1("", "") == 1.0 and m.token_f1("aspirin", "") == 0.0
    # best of the gold answers; an unanswerable question is right only when the prediction is empty
    s = m.squad_scores(["81 mg", "", "chest"], [["aspirin 81 mg", "81 mg"], [], ["back pain"]])
    assert s["exact_match"] == pytest.approx(200 / 3) and s["f1"] == pytest.approx(200 / 3)


def test_perplexity():
    assert m.perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert m.perplexity(1e6) == math.inf
