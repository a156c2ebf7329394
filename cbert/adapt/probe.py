"""Linear probes: how well frozen embeddings suit a classification task, before any fine-tuning.

Embeddings from any backend (pooled as ``model.embed`` pools them, or the pooler's output; a long
text or pair windowed and its windows averaged, as ``model.embed`` does) are cached on disk by
(model, pooling, file contents); an L2-regularized logistic regression (:mod:`.logreg`) is fitted on
the host, its C chosen by stratified K-fold cross-validation (accuracy, as LogisticRegressionCV
scores). The evaluation file's accuracy, macro-F1 and (two classes) AUROC come with bootstrap 95%
intervals, beside two baselines that give the numbers a meaning: the majority class, and the same
regression over bag-of-words features. ``save`` writes the probe as the classifier of a
*ForSequenceClassification over the encoder: a Hugging Face folder (the family's classifier must
read what the probe read: the pooler's output, BERT's and ALBERT's).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputError
from ..files import write_atomic
from ..train.metrics import accuracy, auroc, macro_f1
from . import logreg

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
POOLINGS = ("cls", "mean", "max", "pooler")
BOOTSTRAP = 1000
BOW_VOCABULARY = 5000  # the most frequent words of the training file


@dataclass
class Scores:
    """One system's metrics on the evaluation file, each (value, (low, high)) of its bootstrap 95% CI."""

    name: str
    detail: str
    metrics: dict[str, tuple[float, tuple[float, float]]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"{k} {v:.3f} (95% CI {lo:.3f}-{hi:.3f})" for k, (v, (lo, hi)) in self.metrics.items()]


@dataclass
class ProbeReport:
    classes: list[str]
    pooling: str
    C: float
    cv_accuracy: float
    probe: Scores
    baselines: list[Scores]
    model: logreg.LogReg

    def text(self) -> str:
        out = [f"probe: {self.probe.detail}", *self.probe.lines()]
        for b in self.baselines:
            out += [f"{b.name}: {b.detail}", *b.lines()]
        return "\n".join(out)


def _labels(rows: list[dict], path, classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    for r in rows:
        if isinstance(r["label"], (list, float)):
            raise InputError(f"{path}:{r['line']}: the label is {r['label']!r}; a probe classifies (one class name "
                             "per row), it does not regress or take several labels")
    names = [str(r["label"]) for r in rows]
    if classes is None:
        classes = sorted(set(names))
        if len(classes) < 2:
            raise InputError(f"{path}: every row has the label {classes[0]!r}; a probe needs at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    for r, n in zip(rows, names):
        if n not in index:
            raise InputError(f"{path}:{r['line']}: label {n!r} is not among the training file's classes "
                             f"({', '.join(classes)})")
    return np.array([index[n] for n in names]), classes


def run_probe(model, train_file, eval_file, pooling: str | None = None, folds: int = 5, seed: int = 0,
              batch_size: int = 32, cache_dir: str | Path | None = None, use_sklearn: bool | None = None,
              progress: bool = True) -> ProbeReport:
    """Probe the loaded ``model`` (cbert.load) on labeled JSONL/CSV files (cbert.train.data.read_labeled)."""
    from ..train.data import read_labeled

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise InputError(f"folds={folds!r}: expected an integer of at least 2")
    if pooling is not None and pooling not in POOLINGS:
        raise InputError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")
    train_rows, eval_rows = read_labeled(train_file), read_labeled(eval_file)
    for rows, path in ((train_rows, train_file), (eval_rows, eval_file)):
        if not rows:
            raise InputError(f"{path}: no rows")
    y, classes = _labels(train_rows, train_file, None)
    y_eval, _ = _labels(eval_rows, eval_file, classes)
    smallest = Counter(y.tolist()).most_common()[-1]
    if smallest[1] < folds:
        raise InputError(f"{train_file}: the class {classes[smallest[0]]!r} has {smallest[1]} rows, fewer than "
                         f"--folds {folds}; give more rows or fewer folds")
    pooling = pooling or model.embedding_defaults.pooling
    x = embeddings(model, train_rows, train_file, pooling, batch_size, cache_dir, progress)
    x_eval = embeddings(model, eval_rows, eval_file, pooling, batch_size, cache_dir, progress)
    rng = np.random.default_rng(seed)
    C, cv = choose_C(x, y, len(classes), folds, seed, use_sklearn)
    fitted = logreg.fit(x, y, len(classes), C, use_sklearn)
    probe = score(fitted.predict_proba(x_eval), y_eval, rng)
    probe.name, probe.detail = "probe", (f"{pooling} pooling, {x.shape[1]} features, C={C:g} by {folds}-fold CV "
                                         f"(accuracy {cv:.3f}), {len(y)} training rows, {len(y_eval)} evaluated")
    majority = np.bincount(y, minlength=len(classes)).argmax()
    constant = np.tile(np.eye(len(classes))[majority], (len(y_eval), 1))
    base = score(constant, y_eval, rng)
    base.name, base.detail = "majority-class baseline", f"always {classes[majority]!r}"
    vocab = bow_vocabulary(train_rows)
    b_train, b_eval = bag_of_words(train_rows, vocab), bag_of_words(eval_rows, vocab)
    bow_C, bow_cv = choose_C(b_train, y, len(classes), folds, seed, use_sklearn)
    bow = score(logreg.fit(b_train, y, len(classes), bow_C, use_sklearn).predict_proba(b_eval), y_eval, rng)
    bow.name, bow.detail = "bag-of-words baseline", (f"{len(vocab)} words, C={bow_C:g} by {folds}-fold CV "
                                                     f"(accuracy {bow_cv:.3f})")
    return ProbeReport(classes, pooling, C, cv, probe, [base, bow], fitted)


# -- embeddings, cached ---------------------------------------------------------------------------

def cache_root(cache_dir: str | Path | None = None) -> Path:
    """$XDG_CACHE_HOME/cbert/probe (else ~/.cache/cbert/probe), or ``cache_dir``."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cbert" / "probe"


def cache_key(model, pooling: str, normalize: bool, data_file) -> str:
    """The model (its folder, weights file size and time, config), the pooling, the data's bytes."""
    w = model.checkpoint.weights_file
    st = os.stat(w)
    h = hashlib.sha256()
    h.update(json.dumps([__version__, str(Path(w).absolute()), st.st_size, st.st_mtime_ns, pooling, normalize,
                         model.backend.dtype]).encode())
    h.update((model.checkpoint.path / "config.json").read_bytes())
    with open(data_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def embeddings(model, rows: list[dict], data_file, pooling: str, batch_size: int, cache_dir, progress) -> np.ndarray:
    """[rows, hidden] float32 for ``rows`` of ``data_file``, from the cache when it has them."""
    normalize = model.embedding_defaults.normalize if pooling != "pooler" else False
    path = cache_root(cache_dir) / f"{cache_key(model, pooling, normalize, data_file)}.npy"
    if path.is_file():
        x = np.load(path)
        if x.shape[0] == len(rows):
            return x
    if progress:
        print(f"embedding {len(rows)} rows of {data_file} ({pooling} pooling)", file=sys.stderr)
    x = _embed(model, rows, pooling, normalize, batch_size, progress, data_file)
    if not np.isfinite(x).all():
        raise InputError(f"{data_file}: the model's embeddings hold NaN or infinite values")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.save(f, x), overwrite=True)
    return x


def _embed(model, rows, pooling, normalize, batch_size, progress, data_file=None) -> np.ndarray:
    """Each row's vector as ``model.embed`` makes it: a long text (or a pair's long second text) split
    into windows, each pooled (or its pooler's output), a row's windows averaged, then normalized."""
    from ..tasks.embed import l2_normalize, pooled_windows
    from ..tasks.run import windows_per_text

    if pooling == "pooler" and not model.checkpoint.heads.pooler:
        raise InputError(f"pooling='pooler': {model.checkpoint.path} has no pooler (its class is "
                         f"{model.checkpoint.architecture}); use cls, mean or max")
    parts = []
    for paired in (False, True):  # one tokenizer call for the single texts, one for the pairs
        which = [i for i, r in enumerate(rows) if (r.get("text_pair") is not None) == paired]
        if not which:
            continue
        where = [f"{data_file}:{rows[i].get('line', i + 1)}" for i in which]
        _, per_text = windows_per_text(model, [rows[i]["text"] for i in which], None, where=where,
                                       text_pair=[rows[i]["text_pair"] for i in which] if paired else None)
        parts.append((which, pooled_windows(model, per_text, pooling, "mean", batch_size, progress)))
    x = np.empty((len(rows), parts[0][1].shape[1]), np.float32)
    for which, v in parts:
        x[which] = v
    return l2_normalize(x) if normalize else x


# -- fitting and scoring ----------------------------------------------------------------------------

def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Each class's rows shuffled and dealt round the k folds (as StratifiedKFold(shuffle=True) does)."""
    rng = np.random.default_rng([seed, 0xF01D])
    fold_of = np.empty(len(y), np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = np.arange(len(idx)) % k
    return [np.flatnonzero(fold_of == f) for f in range(k)]


def choose_C(x, y, classes: int, folds: int, seed: int, use_sklearn=None) -> tuple[float, float]:
    """(the C of C_GRID with the best mean held-out accuracy, that accuracy); ties: the smaller C.
    Each fold fits the whole grid as one warm-started path."""
    accs = np.zeros((folds, len(C_GRID)))
    for f, held in enumerate(stratified_folds(y, folds, seed)):
        train = np.setdiff1d(np.arange(len(y)), held)
        # a fold may lack a class: fit on the present ones, predict in the full label space
        present = np.unique(y[train])
        remap = np.searchsorted(present, y[train])
        for i, m in enumerate(logreg.fit_path(x[train], remap, len(present), C_GRID, use_sklearn)):
            accs[f, i] = accuracy(present[m.predict(x[held])], y[held])
    mean = accs.mean(0)
    best = int(np.flatnonzero(mean >= mean.max() - 1e-12)[0])
    return C_GRID[best], float(mean[best])


def score(proba: np.ndarray, y: np.ndarray, rng, n: int = BOOTSTRAP) -> Scores:
    """Accuracy, macro-F1 and (two classes) AUROC of ``proba`` [rows, classes], each with the
    percentile 95% interval of ``n`` bootstrap resamples of the evaluated rows."""
    pred = proba.argmax(1)
    two = proba.shape[1] == 2
    fns = {"accuracy": lambda i: accuracy(pred[i], y[i]), "macro_f1": lambda i: macro_f1(pred[i], y[i])}
    if two:
        fns["auroc"] = lambda i: auroc(proba[i, 1], y[i])
    whole = np.arange(len(y))
    samples = [rng.integers(0, len(y), len(y)) for _ in range(n)]
    out = Scores("", "")
    for name, fn in fns.items():
        value = fn(whole)
        if value is None:  # one class in the evaluation file: no AUROC
            continue
        boot = [v for v in (fn(s) for s in samples) if v is not None]
        out.metrics[name] = (value, (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))))
    return out


_WORD = re.compile(r"(?u)\b\w\w+\b")  # CountVectorizer's default token pattern


def bow_vocabulary(rows: list[dict]) -> list[str]:
    counts = Counter(w for r in rows for t in (r["text"], r.get("text_pair") or "") for w in _WORD.findall(t.lower()))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:BOW_VOCABULARY]]


def bag_of_words(rows: list[dict], vocab: list[str]) -> np.ndarray:
    """Word presence [rows, vocabulary] (float32), each row scaled to unit length."""
    index = {w: i for i, w in enumerate(vocab)}
    x = np.zeros((len(rows), len(vocab)), np.float32)
    for n, r in enumerate(rows):
        for t in (r["text"], r.get("text_pair") or ""):
            for w in _WORD.findall(t.lower()):
                if w in index:
                    x[n, index[w]] = 1.0
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# -- the probe as a model -------------------------------------------------------------------------

def check_savable(model, pooling: str):
    """The family's sequence-classifier layout, if its last linear reads what ``pooling`` gives."""
    from ..families import family_of

    family = family_of(model.config)
    layout = family.seq_cls
    if pooling != "pooler" or not layout.from_pooler or layout.hidden:
        how = ("probe with --pooling pooler" if layout.from_pooler and not layout.hidden else
               "fine-tune instead (cbert train seq-cls)")
        raise InputError(f"--save: a {family.name} sequence classifier reads "
                         f"{'the pooler' if layout.from_pooler else 'layers of its own'} before its last linear, "
                         f"not {pooling} pooling, so it cannot compute this probe; {how}")
    return layout


def save_probe(model, report: ProbeReport, out: str | Path, overwrite: bool = False) -> str:
    """Write the encoder with the probe as its sequence classifier: a Hugging Face *ForSequenceClassification
    folder whose logits are the probe's. Returns its class. The family's classifier must read exactly the
    probe's features: the pooler's output, read by BERT's and ALBERT's classifier alone."""
    from ..families import build_graph
    from ..files import staged_folder
    from ..heads import Heads
    from ..train.save import OutputModel, write_into_new

    ckpt = model.checkpoint
    layout = check_savable(model, report.pooling)
    k = len(report.classes)
    heads = Heads(seq_cls=k, pooler=True)
    graph = build_graph(model.config, heads)
    params = {p: ckpt.params[p] for p in graph.params if p in ckpt.params}
    params[layout.out + ".weight"] = report.model.coef.astype(np.float32)
    params[layout.out + ".bias"] = report.model.intercept.astype(np.float32)
    output = OutputModel(ckpt.path, model.config, "seq-cls", heads, tuple(report.classes),
                         "single_label_classification")
    with staged_folder(out, overwrite, "--save") as tmp:
        write_into_new(tmp, output.files(params))
    return output.architecture
