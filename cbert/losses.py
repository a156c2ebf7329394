"""Training graphs: a model's one graph with dropout and loss nodes, as Hugging Face trains each class.

The losses are nodes of the op list (:mod:`cbert.ir`: CROSS_ENTROPY, MSE, BCE_LOGITS, PICK,
WEIGHTED_SUM), so a forward's ``.loss`` (on any backend, over the logits it returned) and a
backend's gradients (over the whole graph) come from the same definition. Labels are checked and
brought into the ops' form on the host by :func:`prepare_labels`.

https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/modeling_bert.py
(the ``loss`` of each ``Bert*`` class; the other families define theirs the same way)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import InputError
from .families import family_of
from .heads import MLM_LOGITS, NSP_LOGITS, QA_LOGITS, SEQ_CLS_LOGITS, TOKEN_CLS_LOGITS, Heads
from .ir import IGNORE_INDEX, Graph, Node, Op, node

# The label arguments a forward and a gradient step take, as Hugging Face names them.
LABELS = ("labels", "next_sentence_label", "start_positions", "end_positions")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
DROPOUT_SEED = "dropout_seed"  # the runtime input every DROPOUT node draws from


# -- dropout -----------------------------------------------------------------------------

def dropout_probs(cfg) -> tuple[float, float, float]:
    """(hidden, attention, classifier) dropout probabilities of ``cfg``, by its family's config keys."""
    fam = family_of(cfg)
    probs = []
    for key, default in zip(fam.dropout_keys, fam.dropout_defaults):
        v = cfg.extra.get(key, default)
        if v is None:  # a classifier's None: the hidden probability
            v = probs[0]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise InputError(f"config.json: {key} = {v!r}: expected a dropout probability in [0, 1)")
        probs.append(float(v))
    return probs[0], probs[1], probs[2]


def with_dropout(graph: Graph, hidden: float, attention: float, classifier: float) -> Graph:
    """``graph`` with Hugging Face's dropouts, placed by the graph's structure: after the embeddings,
    on the attention probabilities (a fused ATTENTION becomes ATTN_PROBS, DROPOUT, ATTN_APPLY), on each
    sub-layer's output before its residual add (ADD_LN's first operand), and on a classifier's input.
    Every DROPOUT node gets its own salt, so one seed draws independent masks."""
    nodes: list[Node] = []
    salt = 0

    def drop(x: str, p: float) -> str:
        nonlocal salt
        if p == 0.0:
            return x
        out = f"{x}.dropout{salt}"
        nodes.append(node(Op.DROPOUT, [x, DROPOUT_SEED], out, rate=p, salt=salt))
        salt += 1
        return out

    renamed: dict[str, str] = {}  # a value -> its dropped-out version, for the readers that take it
    for n in graph.nodes:
        inputs = list(n.inputs)
        if n.op is Op.ADD_LN:
            inputs[0] = drop(inputs[0], hidden)
        elif n.op is Op.LINEAR and n.output in (SEQ_CLS_LOGITS, TOKEN_CLS_LOGITS):
            inputs[0] = drop(inputs[0], classifier)
        inputs = [renamed.get(i, i) for i in inputs]
        if n.op is Op.ATTENTION and attention > 0:
            qkv, bias = inputs
            probs = f"{n.output}.probs"
            nodes.append(node(Op.ATTN_PROBS, [qkv, bias], probs, **n.kwargs))
            nodes.append(node(Op.ATTN_APPLY, [drop(probs, attention), qkv], n.output, **n.kwargs))
            continue
        nodes.append(Node(n.op, tuple(inputs), n.output, n.attrs))
        if n.op is Op.EMBED:
            renamed[n.output] = drop(n.output, hidden)
    inputs = graph.inputs + ((DROPOUT_SEED,) if salt else ())
    return replace(graph, nodes=tuple(nodes), inputs=inputs)


# -- losses ------------------------------------------------------------------------------

def problem_type(cfg, heads: Heads, labels: np.ndarray | None = None) -> str | None:
    """A sequence classifier's loss, as Hugging Face picks it: config.json's problem_type, else
    regression for one label, else single-label for integer labels, else multi-label."""
    if not heads.seq_cls:
        return None
    declared = cfg.extra.get("problem_type")
    if declared is not None:
        if declared not in PROBLEM_TYPES:
            raise InputError(f"config.json: problem_type = {declared!r}: expected one of {', '.join(PROBLEM_TYPES)}")
        return declared
    if heads.seq_cls == 1:
        return "regression"
    if labels is not None and np.issubdtype(np.asarray(labels).dtype, np.floating):
        return "multi_label_classification"
    return "single_label_classification"


def with_losses(graph: Graph, heads: Heads, given: frozenset[str] | set[str], problem: str | None = None) -> Graph:
    """``graph`` plus the loss nodes of the labels ``given`` (names from :data:`LABELS`); its outputs
    gain ``loss`` (and ``mlm_loss``/``nsp_loss`` for a pre-training model)."""
    nodes = list(graph.nodes)
    outputs = dict(graph.outputs)
    parts: list[tuple[str, float]] = []

    def add(op: Op, inputs, out: str, **attrs) -> str:
        nodes.append(node(op, inputs, out, **attrs))
        return out

    unknown = set(given) - set(LABELS)
    if unknown:
        raise InputError(f"unknown label argument {sorted(unknown)[0]!r}; a forward takes {', '.join(LABELS)}")
    if "labels" in given:
        if heads.mlm:
            outputs["mlm_loss"] = add(Op.CROSS_ENTROPY, [MLM_LOGITS, "labels"], "mlm_loss", reduction="mean")
            parts.append(("mlm_loss", 1.0))
        elif heads.seq_cls:
            op = {"regression": Op.MSE, "multi_label_classification": Op.BCE_LOGITS}.get(problem, Op.CROSS_ENTROPY)
            attrs = {"reduction": "mean"} if op is Op.CROSS_ENTROPY else {}
            parts.append((add(op, [SEQ_CLS_LOGITS, "labels"], "seq_cls_loss", **attrs), 1.0))
        elif heads.token_cls:
            parts.append((add(Op.CROSS_ENTROPY, [TOKEN_CLS_LOGITS, "labels"], "token_cls_loss", reduction="mean"), 1.0))
        else:
            raise InputError("labels: this model has no head that takes labels (masked-LM, sequence or token "
                             "classifier); a question-answering model takes start_positions and end_positions")
    if "next_sentence_label" in given:
        if not heads.nsp:
            raise InputError("next_sentence_label: this model has no next-sentence head (BertForPreTraining has one)")
        outputs["nsp_loss"] = add(Op.CROSS_ENTROPY, [NSP_LOGITS, "next_sentence_label"], "nsp_loss",
                                  reduction="mean")
        parts.append(("nsp_loss", 1.0))
    qa = {"start_positions", "end_positions"} & set(given)
    if qa:
        if not heads.qa:
            raise InputError(f"{sorted(qa)[0]}: this model has no question-answering head")
        if len(qa) == 1:
            raise InputError("start_positions and end_positions go together: give both or neither")
        for i, side in enumerate(("start", "end")):
            logits = add(Op.PICK, [QA_LOGITS], f"{side}_logits", index=i)
            parts.append((add(Op.CROSS_ENTROPY, [logits, f"{side}_positions"], f"{side}_loss", reduction="mean"),
                          0.5))
    if not parts:
        raise InputError(f"no labels given: pass one of {', '.join(LABELS)}")
    if len(parts) == 1 and parts[0][1] == 1.0:
        outputs["loss"] = parts[0][0]
    else:
        outputs["loss"] = add(Op.WEIGHTED_SUM, [p for p, _ in parts], "loss", weights=tuple(w for _, w in parts))
    label_inputs = tuple(n for n in LABELS if n in given)
    return replace(graph, nodes=tuple(nodes), inputs=graph.inputs + label_inputs, outputs=outputs)


def _ints(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim == 0 and shape == (1,):
        a = a[None]
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} must hold integers; got dtype {a.dtype}")
    if a.shape != shape:
        raise InputError(f"{name} has shape {list(a.shape)}, expected {list(shape)}")
    return a.astype(np.int64)


def _class_ids(a: np.ndarray, name: str, classes: int, what: str) -> np.ndarray:
    bad = np.argwhere(((a < 0) | (a >= classes)) & (a != IGNORE_INDEX))
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        raise InputError(f"{name}{list(where)} = {int(a[where])} is outside [0, {classes}) ({what}) and is not "
                         f"{IGNORE_INDEX} (ignored)")
    return a


def _floats(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64) if not isinstance(value, np.ndarray) else value
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name} must hold numbers; got dtype {a.dtype}")
    if a.size == int(np.prod(shape)) and a.shape != shape:
        a = a.reshape(shape)  # [B] regression targets for [B, 1] logits, as Hugging Face squeezes them
    if a.shape != shape:
        raise InputError(f"{name} has shape {list(a.shape)}, expected {list(shape)}")
    if not np.isfinite(a).all():
        raise InputError(f"{name} holds NaN or infinite values")
    return a.astype(np.float32)


def prepare_labels(cfg, heads: Heads, batch: int, seq: int, labels: dict) -> tuple[dict[str, np.ndarray], str | None]:
    """The labels given (None values dropped), checked and in the ops' form, and the seq-cls problem type.

    Masked-LM and token labels are [batch, seq] ids (-100 ignored); a sequence label one id per row
    (regression: a float per row or [batch, num_labels]; multi-label: [batch, num_labels] in [0, 1]);
    QA positions one per row, clamped to [0, seq] as Hugging Face does, seq (past the end) ignored.
    """
    given = {k: v for k, v in labels.items() if v is not None}
    unknown = set(given) - set(LABELS)
    if unknown:
        raise InputError(f"unknown label argument {sorted(unknown)[0]!r}; a forward takes {', '.join(LABELS)}")
    problem = problem_type(cfg, heads, given.get("labels"))
    out: dict[str, np.ndarray] = {}
    if "labels" in given:
        v = given["labels"]
        if heads.mlm:
            out["labels"] = _class_ids(_ints(v, "labels", (batch, seq)), "labels", cfg.vocab_size, "vocab_size")
        elif heads.seq_cls and problem == "single_label_classification":
            out["labels"] = _class_ids(_ints(v, "labels", (batch,)), "labels", heads.seq_cls, "num_labels")
        elif heads.seq_cls:
            a = _floats(v, "labels", (batch, heads.seq_cls))
            if problem == "multi_label_classification" and ((a < 0) | (a > 1)).any():
                raise InputError("labels: multi-label targets must lie in [0, 1]")
            out["labels"] = a
        elif heads.token_cls:
            out["labels"] = _class_ids(_ints(v, "labels", (batch, seq)), "labels", heads.token_cls, "num_labels")
        else:
            out["labels"] = v  # with_losses names what is wrong with it
    if "next_sentence_label" in given:
        out["next_sentence_label"] = _class_ids(_ints(given["next_sentence_label"], "next_sentence_label", (batch,)),
                                                "next_sentence_label", 2, "0: is next, 1: random")
    for name in ("start_positions", "end_positions"):
        if name in given:
            a = np.clip(_ints(given[name], name, (batch,)), 0, seq)
            out[name] = np.where(a == seq, IGNORE_INDEX, a)
    return out, problem


def loss_graph(graph: Graph, heads: Heads, given, problem: str | None) -> Graph:
    """The loss nodes alone, cut at the logits they read: what a forward runs on the host over the
    logits its backend returned. Its runtime inputs are those logits (graph value names) and the labels."""
    full = with_losses(graph, heads, frozenset(given), problem)
    outs = {k: v for k, v in full.outputs.items() if k in ("loss", "mlm_loss", "nsp_loss")}
    logits = [v for v in (MLM_LOGITS, NSP_LOGITS, SEQ_CLS_LOGITS, TOKEN_CLS_LOGITS, QA_LOGITS)
              if any(v in n.inputs for n in full.nodes if n.op in _LOSS_OPS)]
    return full.select(outs, inputs=logits)


_LOSS_OPS = (Op.CROSS_ENTROPY, Op.MSE, Op.BCE_LOGITS, Op.PICK)
