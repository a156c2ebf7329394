"""Sanity checks that can fail (printed in the report, asserted in the tests):

- the model-randomization test (Adebayo et al., 2018, "Sanity Checks for Saliency Maps"): the same
  method on the model with re-initialized weights (as Hugging Face initializes them) should give
  attributions that correlate only weakly with the trained model's; cascading re-initializes from
  the head down, one layer at a time;
- the deletion curve (Petsiuk et al., 2018): removing the most attributed words first (replacing them
  by the mask token) should lower the target's probability faster than removing words at random.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from ..train.fit import initial_params
from .methods import Explanation, Options, run_method

WEAK_CORRELATION = 0.5  # |Spearman| of absolute attributions below this: the method depends on the weights


def spearman(a, b) -> float | None:
    """Spearman's rank correlation (ties ranked by their mean); None when either side is constant."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def layer_groups(model) -> list[tuple[str, list[str]]]:
    """The model's parameters in re-initialization order, top down: the heads, each layer from the last,
    the embeddings (ALBERT's shared layer group is one group)."""
    layers: dict[int, list[str]] = {}
    head, embeddings, shared = [], [], []
    for name in model.checkpoint.graph.params:
        found = re.search(r"(?:^|\.)layers?\.(\d+)\.", name)
        if name.startswith("embeddings."):
            embeddings.append(name)
        elif found:
            layers.setdefault(int(found.group(1)), []).append(name)
        elif name.startswith(("encoder.", "transformer.")):
            shared.append(name)
        else:
            head.append(name)
    groups = [("head", head)] + [(f"layer {i}", layers[i]) for i in sorted(layers, reverse=True)]
    groups += [("encoder", shared)] if shared else []
    return [g for g in groups + [("embeddings", embeddings)] if g[1]]


def randomized_model(model, names, seed: int = 0):
    """``model`` with the parameters ``names`` re-initialized (normal(0, initializer_range), biases 0,
    LayerNorm 1/0, as Hugging Face's _init_weights), on the same backend."""
    from ..model import Model

    ckpt = model.checkpoint
    keep = {k: v for k, v in ckpt.params.items() if k not in set(names)}
    params, _ = initial_params(ckpt.config, ckpt.graph, keep, seed)
    return Model(replace(ckpt, params=params, weights=None), model.backend, model.mlm_mode)


def randomization_test(subject, explanation: Explanation, options: Options | None = None,
                       cascade: bool = False) -> dict:
    """Spearman correlations of ``explanation`` with the same method on re-initialized models: all the
    weights at once, or (``cascade``) cumulatively from the head down."""
    options = options or Options()
    groups = layer_groups(subject.model)
    if cascade:
        stages = [(", ".join(g for g, _ in groups[:k + 1]), [n for _, ns in groups[:k + 1] for n in ns])
                  for k in range(len(groups))]
    else:
        stages = [("all weights", [n for _, ns in groups for n in ns])]
    results = []
    for what, names in stages:
        other = run_method(subject.rebind(randomized_model(subject.model, names, options.seed)),
                           explanation.method, options)
        results.append({"randomized": what, "spearman": spearman(explanation.scores, other.scores),
                        "spearman_abs": spearman(np.abs(explanation.scores), np.abs(other.scores))})
    last = results[-1]["spearman_abs"]
    return {"method": explanation.method, "stages": results, "threshold": WEAK_CORRELATION,
            "passed": last is None or abs(last) < WEAK_CORRELATION}


def deletion_curve(subject, explanation: Explanation, seed: int = 0, random_orders: int = 5,
                   max_points: int = 50) -> dict:
    """The target's probability as the top-attributed words are removed, against random orders."""
    spans = [(a, b) for a, b, _, _ in subject.word_spans() if not subject.fixed[a:b].all()]
    n = len(spans)
    ks = np.arange(n + 1) if n <= max_points else np.unique(np.linspace(0, n, max_points + 1).round().astype(int))
    word_scores = np.array([explanation.scores[a:b].sum() for a, b in spans])

    def curve(orders) -> np.ndarray:
        """[orders, ks] the target's probability with the first k words of each order removed."""
        masked = np.zeros((len(orders) * len(ks), len(subject.tokens)), bool)
        for o, order in enumerate(orders):
            for j, k in enumerate(ks):
                for w in order[:k]:
                    a, b = spans[w]
                    masked[o * len(ks) + j, a:b] = ~subject.fixed[a:b]
        return subject.scores(masked).reshape(len(orders), len(ks))

    key = ("deletion-random", seed, random_orders, max_points)  # the same random orders for every method
    if key not in subject.cache:
        rng = np.random.default_rng(seed)
        subject.cache[key] = curve([rng.permutation(n) for _ in range(random_orders)]).mean(0)
    top, rand = curve([np.argsort(-word_scores, kind="stable")])[0], subject.cache[key]
    fractions = ks / max(n, 1)
    auc_top, auc_random = _area(top, fractions), _area(rand, fractions)
    return {"method": explanation.method, "fractions": fractions.tolist(), "top": top.tolist(),
            "random": rand.tolist(), "auc_top": auc_top, "auc_random": auc_random,
            "random_orders": random_orders, "passed": auc_top < auc_random}


def _area(y: np.ndarray, x: np.ndarray) -> float:
    """The trapezoid rule's area under y(x)."""
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())
