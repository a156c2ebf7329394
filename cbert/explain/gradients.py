"""Integrated gradients and gradient x input, in embedding space (Sundararajan et al., 2017; Captum's
LayerIntegratedGradients on the embeddings).

The gradient comes from the backend's ``compile_grad`` over the model's one graph cut at the
embeddings' output: that output is a runtime float input (``wrt``), and the target's loss nodes
(CROSS_ENTROPY and friends, :mod:`.targets`) give the scalar, minus the target's log-probability
summed over the rows, so one call differentiates every interpolation step of a batch at once.
"""

from __future__ import annotations

import sys

import numpy as np

from ..backends.numpy import NumpyExecutable
from ..errors import InputError
from ..ir import Graph, Op
from .targets import LOSS

BASELINES = ("pad", "mask")
# Rows per gradient call: keep a chunk's widest activation (the FFN, or a masked-LM head's
# [rows, seq, vocab] logits) near this many floats.
_FLOATS_PER_CALL = 1 << 25


def require_gradients(model, method: str) -> None:
    if not hasattr(model.backend, "compile_grad"):
        from ..train.fit import TRAINING_BACKENDS

        raise InputError(f"{method} needs gradients, which backend={model.backend.name!r} does not compute; the "
                         f"backends with gradients: {', '.join(TRAINING_BACKENDS)} (--backend "
                         f"{' or '.join(TRAINING_BACKENDS)})")


class _Gradients:
    """The embeddings (numpy reference; a lookup and a LayerNorm) and the backend's gradient executable
    of the rest of the graph for one target kind, compiled once per model."""

    def __init__(self, model, target):
        ckpt = model.checkpoint
        graph = ckpt.graph
        self.embedded = next(n.output for n in graph.nodes if n.op is Op.EMBED)
        embed = graph.select({self.embedded: self.embedded})
        self.embed = NumpyExecutable(embed, ckpt.params_for(embed))
        nodes, labels = target.loss_nodes()
        full = Graph(graph.nodes + tuple(nodes), graph.inputs + labels, {LOSS: LOSS}, graph.param_shapes)
        cut = full.select({LOSS: LOSS}, inputs=[self.embedded])
        self.run = model.backend.compile_grad(cut, ckpt.params_for(cut))
        self.inputs = cut.inputs
        cfg = model.config
        self.width = max(4 * cfg.intermediate_size, cfg.vocab_size if target.task == "fill-mask" else 0)

    def embeddings(self, model, batch: dict, position_ids: np.ndarray | None = None) -> np.ndarray:
        """The embeddings' output [rows, seq, hidden]; ``position_ids`` None: the family's rule."""
        inputs = model.check_inputs(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                    position_ids)
        return self.embed({k: inputs[k] for k in self.embed.graph.inputs})[self.embedded].astype(np.float32)

    def positions(self, model, batch: dict) -> np.ndarray:
        return model.check_inputs(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))[
            "position_ids"]

    def __call__(self, points: np.ndarray, labels: dict, grads: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(f = the target's log-probability summed over the rows of ``points`` [rows, seq, hidden],
        d f / d points when ``grads``)."""
        feed = {self.embedded: points.astype(np.float32), "attention_mask": np.ones(points.shape[:2], np.int64),
                **labels}
        outputs, g = self.run({k: feed[k] for k in self.inputs}, wrt=(self.embedded,) if grads else (),
                              trainable=())
        f = -float(outputs[LOSS])
        return f, (-np.asarray(self.run.to_host(g[self.embedded]), np.float64) if grads else None)


def _gradients(subject) -> _Gradients:
    model = subject.model
    key = ("explain", subject.task)
    with model._compile_lock:  # one compile per model and target kind, shared by the threads that ask
        if key not in model._grads:
            model._grads[key] = _Gradients(model, subject.target)
        return model._grads[key]


def _baseline_ids(subject, w: int, baseline: str) -> np.ndarray:
    """Window ``w``'s ids with every explained token (but the fixed ones) replaced by [PAD] or [MASK];
    special tokens and a question stay, so their attributions are zero by construction."""
    tok = subject.model.tokenizer
    fill = tok.pad_token_id if baseline == "pad" else tok.mask_token_id
    if fill is None:
        raise InputError(f"baseline={baseline!r}: the tokenizer has no such token")
    win = subject.windows[w]
    ids = np.array(win.ids, np.int64)
    pos = np.asarray(win.positions)
    rows = np.flatnonzero(pos >= 0)
    rows = rows[~subject.fixed[pos[rows]]]
    ids[rows] = fill
    return ids[None]


def _rows_per_call(grads: _Gradients, seq: int, batch_size: int, points: int) -> int:
    return max(1, min(batch_size, points, _FLOATS_PER_CALL // max(1, seq * grads.width)))


def integrated_gradients(subject, options) -> tuple[np.ndarray, dict]:
    """Gauss-Legendre quadrature of the path integral (Captum's default rule) over ``options.steps``
    points, refined where the path needs it (see :func:`_path_integral`)."""
    require_gradients(subject.model, "integrated-gradients")
    if options.baseline not in BASELINES:
        raise InputError(f"baseline={options.baseline!r}; choose one of {', '.join(BASELINES)}")
    grads = _gradients(subject)
    per_window, checks = {}, []
    for w in subject.weighted_windows():
        batch = subject.window_batch(w)
        x = grads.embeddings(subject.model, batch)[0].astype(np.float64)
        base_batch = subject.window_batch(w, ids=_baseline_ids(subject, w, options.baseline))
        # The text's positions: RoBERTa's rule would give padding tokens the padding position.
        b = grads.embeddings(subject.model, base_batch, grads.positions(subject.model, batch))[0].astype(np.float64)
        attr, f, points = _path_integral(grads, subject, w, x, b, options.steps)
        if subject.progress:
            print(f"integrated-gradients: window {w + 1}/{len(subject.windows)}, {points} points", file=sys.stderr)
        gap = float(attr.sum() - (f[1] - f[0]))
        checks.append({"window": w, "sum_of_attributions": float(attr.sum()), "f_input": f[1], "f_baseline": f[0],
                       "gap": gap, "relative_gap": abs(gap) / max(abs(f[1] - f[0]), 1e-12), "points": points})
        per_window[w] = attr
    token = "[PAD]" if options.baseline == "pad" else subject.model.tokenizer.mask_token
    return subject.combine(per_window), {
        "steps": options.steps, "rule": "gauss-legendre, refined where the completeness gap needs it",
        "baseline": f"{token} embeddings (special tokens kept)", "scalar": "log-probability of the target",
        "completeness": checks, "completeness_gap": max(c["relative_gap"] for c in checks)}


# Gauss-Legendre points per path segment, and how far refinement may go (in multiples of the steps asked).
# Four points per segment: a ReLU head (DistilBERT's) puts kinks on the path, which many low-order
# segments integrate better than a few high-order ones.
_POINTS_PER_SEGMENT = 4
_REFINE_BUDGET = 8
# Refinement aims at half the promised 1%, so float32 rounding on another backend stays within it.
COMPLETENESS_TOLERANCE = 0.01
_REFINE_TO = COMPLETENESS_TOLERANCE / 2


def _path_integral(grads: _Gradients, subject, w: int, x: np.ndarray, b: np.ndarray, steps: int):
    """(per-position attributions, (f(baseline), f(input)), gradient points used) for window ``w``.

    The straight path is cut into segments of ``_POINTS_PER_SEGMENT`` Gauss-Legendre points, ``steps``
    points in all. Completeness holds segment by segment (the attributions of [a, c] sum to f(c) - f(a)),
    so while the gap exceeds half a percent of f(input) - f(baseline), the segment that misses most is
    halved: a fine-tuned model can switch its prediction within a few hundredths of the path, which evenly
    spaced points step over. At most ``_REFINE_BUDGET`` times ``steps`` points."""
    seq = x.shape[0]
    nodes, weights = np.polynomial.legendre.leggauss(min(steps, _POINTS_PER_SEGMENT))
    nodes, weights = (nodes + 1) / 2, weights / 2
    # Rows per gradient call: the first points in calls as large as memory allows, each refinement (one
    # halved segment) in one call of its own; two shapes, so MLX traces twice.
    rows = _rows_per_call(grads, seq, subject.batch_size, steps)

    def f(alpha: float) -> float:
        return grads((b + alpha * (x - b))[None], subject.target.loss_labels(w, 1, seq), grads=False)[0]

    def integrate(segments: list[tuple[float, float]], rows: int) -> list[np.ndarray]:
        """Each segment's [seq, hidden] integral of the gradient, ``rows`` points per call."""
        alphas = np.concatenate([a + (c - a) * nodes for a, c in segments])
        scale = np.concatenate([(c - a) * weights for a, c in segments])
        n_points = len(alphas)
        # Every call gets the same number of rows (the last padded, its extra rows unused): one MLX trace.
        alphas = np.pad(alphas, (0, -n_points % rows), mode="edge")
        g_all = np.empty((len(alphas), *x.shape))
        for s in range(0, len(alphas), rows):
            a = alphas[s:s + rows]
            g_all[s:s + rows] = grads(b[None] + a[:, None, None] * (x - b)[None],
                                      subject.target.loss_labels(w, len(a), seq))[1]
        weighted = scale[:, None, None] * g_all[:n_points]
        return [weighted[i * len(nodes):(i + 1) * len(nodes)].sum(0) for i in range(len(segments))]

    n = max(1, -(-steps // len(nodes)))
    edges = list(np.linspace(0.0, 1.0, n + 1))
    segments = list(zip(edges[:-1], edges[1:]))
    f_at = {a: f(a) for a in edges}
    parts = dict(zip(segments, integrate(segments, rows)))
    points = len(segments) * len(nodes)
    total_change = abs(f_at[1.0] - f_at[0.0])

    def miss(seg) -> float:
        return float(((x - b) * parts[seg]).sum() - (f_at[seg[1]] - f_at[seg[0]]))

    while points + 2 * len(nodes) <= _REFINE_BUDGET * steps:
        misses = {seg: miss(seg) for seg in parts}
        if abs(sum(misses.values())) <= _REFINE_TO * max(total_change, 1e-12):
            break
        # One segment at a time, the one that misses most: halving several per round spends the budget on
        # segments that would not have needed it (measured on DistilBERT's ReLU head: 3.9% left vs 0.35%).
        a, c = max(misses, key=lambda seg: abs(misses[seg]))
        mid = (a + c) / 2
        f_at[mid] = f(mid)
        del parts[(a, c)]
        halves = [(a, mid), (mid, c)]
        parts.update(zip(halves, integrate(halves, 2 * len(nodes))))
        points += 2 * len(nodes)
    attr = ((x - b) * sum(parts.values())).sum(-1)
    return attr, (f_at[0.0], f_at[1.0]), points


def grad_x_input(subject, options) -> tuple[np.ndarray, dict]:
    """The gradient of the target's log-probability times the embeddings, summed over the hidden size."""
    require_gradients(subject.model, "grad-x-input")
    grads = _gradients(subject)
    per_window = {}
    for w in subject.weighted_windows():
        batch = subject.window_batch(w)
        x = grads.embeddings(subject.model, batch)[0].astype(np.float64)
        _, g = grads(x[None], subject.target.loss_labels(w, 1, batch["input_ids"].shape[1]))
        per_window[w] = (x * g[0]).sum(-1)
    return subject.combine(per_window), {"scalar": "log-probability of the target", "input": "embeddings"}
