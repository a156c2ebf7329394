"""The op list: a small, backend-neutral IR that every backend lowers.

A graph is a flat, topologically ordered tuple of frozen nodes. Values are named by
strings: runtime inputs (``input_ids`` ...), parameters (Hugging Face tensor names,
without the ``bert.`` prefix) and node outputs. The numpy backend
(:mod:`cbert.backends.numpy`) is the living definition of every op.

Op semantics (shapes: B batch, S sequence, H hidden, V vocabulary):

EMBED        inputs (ln_w, ln_b, table0, ids0, table1, ids1, ...); attrs eps.
             sum_i table_i[ids_i] then LayerNorm -> [B, S, H].
MASK_BIAS    inputs (attention_mask [B, S] int); -> additive bias [B, S] float:
             0 where attended, the float dtype's minimum where masked (Hugging Face's
             convention; never -inf).
LINEAR       inputs (x [..., K], w [N, K] as stored by Hugging Face, b [N]);
             attrs activation in ACTIVATIONS. -> act(x @ w.T + b) [..., N].
ATTENTION    inputs (qkv [B, S, 3H], bias [B, S]); attrs heads.
             softmax(q k^T / sqrt(d) + bias) v per head -> context [B, S, H].
ATTN_PROBS   same inputs and attrs as ATTENTION -> probabilities [B, heads, S, S].
ATTN_APPLY   inputs (probs [B, heads, S, S], qkv [B, S, 3H]); attrs heads -> [B, S, H].
ADD_LN       inputs (x, residual, w, b); attrs eps. LayerNorm(x + residual).
LAYERNORM    inputs (x, w, b); attrs eps.
FIRST_TOKEN  inputs (x [B, S, H]) -> x[:, 0] [B, H].
CONCAT       inputs (params...); attrs axis. Only ever applied to parameters, so every
             backend folds it at load (see :func:`fold_constants`).
DROPOUT      inputs (x, dropout_seed [] int); attrs rate, salt. Training only (a graph built for
             inference has none): x * keep / (1 - rate), keep ~ Bernoulli(1 - rate) drawn from
             (seed, salt), so a backward pass redraws the same mask. Each backend has its own
             generator; a seed repeats a run on one backend, not across backends.
LORA         inputs (y [..., M], x [..., K], a [r, K], b [N, r]); attrs scale, offset, activation.
             act(y + scale * (x a^T) b^T), the low-rank term added to columns offset..offset+N of y:
             a LoRA adapter's path beside the LINEAR that made y (activation "none") from x, offset
             placing it in a fused Q/K/V output. Training only: inference merges the adapter into
             the weight at load (cbert.checkpoint.adapter).

Losses (Hugging Face's definitions; each gives a scalar [] float; see :mod:`cbert.losses`):

CROSS_ENTROPY inputs (logits [..., C], labels [...] int); attrs reduction (mean|sum).
             -log softmax(logits)[label] over the labels that are not -100 (IGNORE_INDEX),
             averaged over them ("mean"; 0 when none counts) or summed.
MSE          inputs (prediction, target float, the same shape) -> mean squared error.
BCE_LOGITS   inputs (logits, target float in [0, 1], the same shape) -> mean binary cross-entropy
             of sigmoid(logits) (BCEWithLogitsLoss).
PICK         inputs (x [..., n]); attrs index -> x[..., index]  (QA's start and end logits).
WEIGHTED_SUM inputs (scalars...); attrs weights (one float each) -> sum w_i x_i.

Distillation losses (DistilBERT's training code, transformers' examples/research_projects/distillation):

KL_DIV       inputs (logits [..., C], target_logits [..., C] float[, mask [...] int]); attrs temperature.
             KL(softmax(target / T) || softmax(logits / T)) summed over C, then averaged over the rows
             whose mask is not 0 (all rows without a mask; 0 when none counts): KLDivLoss "batchmean"
             over the selected rows. The T^2 factor is the caller's weight.
COSINE       inputs (x [..., H], target [..., H] float[, mask [...] int]) -> the mean over the counted
             rows of 1 - cos(x, target), cos = x.t / sqrt((|x|^2 + 1e-12)(|t|^2 + 1e-12))
             (CosineEmbeddingLoss with target 1).

The same rules as code: :data:`SHAPE_RULES` (one function per op) and :func:`infer_shapes`,
which the checkpoint loader, the numpy executor and the wgpu planner all call. The one
lifetime analysis every executor frees values by is :func:`free_after`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum


class Op(Enum):
    EMBED = "embed"
    MASK_BIAS = "mask_bias"
    LINEAR = "linear"
    ATTENTION = "attention"
    ATTN_PROBS = "attn_probs"
    ATTN_APPLY = "attn_apply"
    ADD_LN = "add_ln"
    LAYERNORM = "layernorm"
    FIRST_TOKEN = "first_token"
    CONCAT = "concat"
    DROPOUT = "dropout"
    LORA = "lora"
    CROSS_ENTROPY = "cross_entropy"
    MSE = "mse"
    BCE_LOGITS = "bce_logits"
    PICK = "pick"
    WEIGHTED_SUM = "weighted_sum"
    KL_DIV = "kl_div"
    COSINE = "cosine"


# Ops only a training graph holds (cbert.losses adds them): a forward computes its loss on the host
# over the logits it returned, so only the numpy reference and gradient executors lower these.
TRAINING_OPS = frozenset({Op.DROPOUT, Op.LORA, Op.CROSS_ENTROPY, Op.MSE, Op.BCE_LOGITS, Op.PICK, Op.WEIGHTED_SUM,
                          Op.KL_DIV, Op.COSINE})

# The label value CROSS_ENTROPY skips (PyTorch's and Hugging Face's ignore_index).
IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum")


# Activation names a LINEAR node may carry, as Hugging Face's ``hidden_act`` spells them
# (``gelu`` is the exact erf form; ``gelu_new``/``gelu_pytorch_tanh`` the tanh form).
ACTIVATIONS = ("none", "gelu", "gelu_tanh", "relu", "silu", "tanh")


@dataclass(frozen=True)
class Node:
    op: Op
    inputs: tuple[str, ...]
    output: str
    attrs: tuple[tuple[str, object], ...] = ()

    @property
    def kwargs(self) -> dict[str, object]:
        return dict(self.attrs)


def node(op: Op, inputs: Iterable[str], output: str, **attrs: object) -> Node:
    return Node(op, tuple(inputs), output, tuple(sorted(attrs.items())))


@dataclass(frozen=True)
class Graph:
    """Nodes in execution order, the runtime inputs they read, and the named outputs.

    ``outputs`` maps a user-facing name (``last_hidden_state``, ``hidden_states.3``,
    ``logits`` ...) to the value that holds it.
    """

    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]
    outputs: Mapping[str, str] = field(default_factory=dict)
    # The shape of every parameter, as the graph builder declared it (may be empty).
    param_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def params(self) -> tuple[str, ...]:
        """Every value read by a node that is neither a runtime input nor produced by a node."""
        produced = {n.output for n in self.nodes} | set(self.inputs)
        seen: dict[str, None] = {}
        for n in self.nodes:
            for name in n.inputs:
                if name not in produced:
                    seen[name] = None
        return tuple(seen)

    def select(self, outputs: Mapping[str, str], inputs: Iterable[str] | None = None) -> Graph:
        """The sub-graph that computes ``outputs``, dead nodes dropped.

        With ``inputs`` given, those values become runtime inputs and the nodes that made
        them are cut: this is how a head runs as a host post-process on the encoder output.
        """
        cut = set(inputs or ())
        needed = set(outputs.values())
        keep: list[Node] = []
        for n in reversed(self.nodes):
            if n.output in needed and n.output not in cut:
                keep.append(n)
                needed.update(n.inputs)
        new_inputs = tuple(i for i in self.inputs if i in needed) + tuple(
            i for i in (inputs or ()) if i in needed and i not in self.inputs
        )
        kept = Graph(tuple(reversed(keep)), new_inputs, dict(outputs))
        return Graph(kept.nodes, kept.inputs, kept.outputs,
                     {k: v for k, v in self.param_shapes.items() if k in set(kept.params)})


def fold_constants(graph: Graph, params: Mapping[str, object], concat) -> tuple[Graph, dict]:
    """Evaluate CONCAT nodes over parameters once, at load.

    ``concat(arrays, axis)`` is the backend's concatenation. Returns the graph without
    those nodes and the parameter dict extended with their results (the parts are kept
    only if some other node still reads them).
    """
    params = dict(params)
    rest: list[Node] = []
    for n in graph.nodes:
        if n.op is Op.CONCAT:
            params[n.output] = concat([params[i] for i in n.inputs], n.kwargs["axis"])
        else:
            rest.append(n)
    still_read = {i for n in rest for i in n.inputs}
    folded = {n.output for n in graph.nodes if n.op is Op.CONCAT}
    parts = {i for n in graph.nodes if n.op is Op.CONCAT for i in n.inputs}
    for name in parts - still_read - folded:
        params.pop(name, None)
    return Graph(tuple(rest), graph.inputs, graph.outputs, graph.param_shapes), params


def expose_attentions(graph: Graph) -> Graph:
    """``graph`` with each fused ATTENTION split into ATTN_PROBS + ATTN_APPLY, the probabilities
    of the k-th (in layer order) an output named ``attentions.k``: what output_attentions runs."""
    nodes: list[Node] = []
    outputs = dict(graph.outputs)
    layer = 0
    for n in graph.nodes:
        if n.op is not Op.ATTENTION:
            nodes.append(n)
            continue
        qkv, bias = n.inputs
        probs = outputs[f"attentions.{layer}"] = f"attentions.{layer}"
        nodes += [node(Op.ATTN_PROBS, [qkv, bias], probs, **n.kwargs),
                  node(Op.ATTN_APPLY, [probs, qkv], n.output, **n.kwargs)]
        layer += 1
    return Graph(tuple(nodes), graph.inputs, outputs, graph.param_shapes)


# -- shapes ------------------------------------------------------------------------------

Shape = tuple[int, ...]


class _Check:
    """The operands of one node, by name, and a way to say which one is wrong and why."""

    def __init__(self, n: Node, shapes: Mapping[str, Shape]):
        self.node = n
        self.shapes = [tuple(shapes[name]) for name in n.inputs]

    def fail(self, index: int, expected: str) -> None:
        name = self.node.inputs[index]
        raise ValueError(f"node {self.node.output!r} ({self.node.op.name}): operand {index} {name!r} has shape "
                         f"{self.shapes[index]}, expected {expected}")

    def rank(self, index: int, rank: int, what: str) -> Shape:
        if len(self.shapes[index]) != rank:
            self.fail(index, f"{rank} dimensions ({what})")
        return self.shapes[index]

    def vector(self, index: int, length: int, what: str) -> None:
        if self.shapes[index] != (length,):
            self.fail(index, f"({length},) ({what})")


def _embed(c: _Check, eps: float) -> Shape:
    if len(c.shapes) < 4 or len(c.shapes) % 2:
        raise ValueError(f"node {c.node.output!r} (EMBED): expected (ln_w, ln_b) and (table, ids) pairs; "
                         f"got {len(c.shapes)} operands")
    hidden = c.rank(2, 2, "[vocabulary, hidden]")[1]
    ids = c.shapes[3]
    for i in range(2, len(c.shapes), 2):
        if len(c.shapes[i]) != 2 or c.shapes[i][1] != hidden:
            c.fail(i, f"(rows, {hidden}) (a table as wide as operand 2)")
        if c.shapes[i + 1] != ids:
            c.fail(i + 1, f"{ids} (the shape of operand 3, the first ids)")
    c.vector(0, hidden, "LayerNorm weight, the tables' width")
    c.vector(1, hidden, "LayerNorm bias, the tables' width")
    return ids + (hidden,)


def _mask_bias(c: _Check) -> Shape:
    return c.rank(0, 2, "[batch, seq]")


def _linear(c: _Check, activation: str) -> Shape:
    if activation not in ACTIVATIONS:
        raise ValueError(f"node {c.node.output!r} (LINEAR): activation {activation!r} is not one of {ACTIVATIONS}")
    x = c.shapes[0]
    if not x:
        c.fail(0, "at least 1 dimension ([..., K])")
    n, k = c.rank(1, 2, "[N, K] as Hugging Face stores it")
    if k != x[-1]:
        c.fail(1, f"({n}, {x[-1]}): its K must equal the last dimension of operand 0 {c.node.inputs[0]!r}")
    c.vector(2, n, "one bias per output row of the weight")
    return x[:-1] + (n,)


def _qkv(c: _Check, index: int, heads: int) -> tuple[int, int, int]:
    if not isinstance(heads, int) or heads < 1:
        raise ValueError(f"node {c.node.output!r} ({c.node.op.name}): heads must be a positive integer; got {heads!r}")
    batch, seq, width = c.rank(index, 3, "[batch, seq, 3 * hidden]")
    if width % (3 * heads):
        c.fail(index, f"a last dimension divisible by 3 * heads = {3 * heads} (q, k and v for {heads} heads)")
    return batch, seq, width // 3


def _bias_for(c: _Check, index: int, batch: int, seq: int) -> None:
    if c.shapes[index] != (batch, seq):
        c.fail(index, f"({batch}, {seq}) (the additive mask of the qkv's batch and seq)")


def _attention(c: _Check, heads: int) -> Shape:
    batch, seq, hidden = _qkv(c, 0, heads)
    _bias_for(c, 1, batch, seq)
    return batch, seq, hidden


def _attn_probs(c: _Check, heads: int) -> Shape:
    batch, seq, _ = _qkv(c, 0, heads)
    _bias_for(c, 1, batch, seq)
    return batch, heads, seq, seq


def _attn_apply(c: _Check, heads: int) -> Shape:
    batch, seq, hidden = _qkv(c, 1, heads)
    if c.shapes[0] != (batch, heads, seq, seq):
        c.fail(0, f"{(batch, heads, seq, seq)} (probabilities [batch, heads, seq, seq] of the qkv)")
    return batch, seq, hidden


def _layernorm(c: _Check, eps: float) -> Shape:
    x = c.shapes[0]
    if not x:
        c.fail(0, "at least 1 dimension")
    c.vector(1, x[-1], "LayerNorm weight, the last dimension of operand 0")
    c.vector(2, x[-1], "LayerNorm bias, the last dimension of operand 0")
    return x


def _add_ln(c: _Check, eps: float) -> Shape:
    x = c.shapes[0]
    if c.shapes[1] != x:
        c.fail(1, f"{x} (the shape of operand 0: a residual adds element by element)")
    if not x:
        c.fail(0, "at least 1 dimension")
    c.vector(2, x[-1], "LayerNorm weight, the last dimension of operand 0")
    c.vector(3, x[-1], "LayerNorm bias, the last dimension of operand 0")
    return x


def _first_token(c: _Check) -> Shape:
    batch, _, hidden = c.rank(0, 3, "[batch, seq, hidden]")
    return batch, hidden


def _concat(c: _Check, axis: int) -> Shape:
    first = c.shapes[0]
    if not 0 <= axis < len(first):
        c.fail(0, f"a dimension {axis} to concatenate along")
    for i, s in enumerate(c.shapes):
        if len(s) != len(first) or s[:axis] + s[axis + 1:] != first[:axis] + first[axis + 1:]:
            c.fail(i, f"{first} in every dimension but {axis} (the shape of operand 0)")
    return first[:axis] + (sum(s[axis] for s in c.shapes),) + first[axis + 1:]


def _dropout(c: _Check, rate: float, salt: int) -> Shape:
    if not (isinstance(rate, float) and 0.0 <= rate < 1.0):
        raise ValueError(f"node {c.node.output!r} (DROPOUT): rate must be a float in [0, 1); got {rate!r}")
    if c.shapes[1] != ():
        c.fail(1, "() (one integer seed per step)")
    return c.shapes[0]


def _lora(c: _Check, scale: float, offset: int, activation: str) -> Shape:
    if activation not in ACTIVATIONS:
        raise ValueError(f"node {c.node.output!r} (LORA): activation {activation!r} is not one of {ACTIVATIONS}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"node {c.node.output!r} (LORA): scale must be a number; got {scale!r}")
    y, x = c.shapes[0], c.shapes[1]
    if not x:
        c.fail(1, "at least 1 dimension ([..., K])")
    if y[:-1] != x[:-1]:
        c.fail(0, f"{x[:-1]} + (M,) (the rows of operand 1)")
    r, k = c.rank(2, 2, "[r, K] (lora_A)")
    if k != x[-1]:
        c.fail(2, f"({r}, {x[-1]}): its K must equal the last dimension of operand 1")
    n, _ = c.rank(3, 2, "[N, r] (lora_B)")
    if c.shapes[3][1] != r:
        c.fail(3, f"({n}, {r}): its r must equal operand 2's")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset + n > y[-1]:
        c.fail(3, f"at most {y[-1]} - offset {offset!r} rows (columns offset..offset+N of operand 0)")
    return y


def _cross_entropy(c: _Check, reduction: str) -> Shape:
    if reduction not in REDUCTIONS:
        raise ValueError(f"node {c.node.output!r} (CROSS_ENTROPY): reduction {reduction!r} is not one of {REDUCTIONS}")
    logits = c.shapes[0]
    if not logits:
        c.fail(0, "at least 1 dimension ([..., classes])")
    if c.shapes[1] != logits[:-1]:
        c.fail(1, f"{logits[:-1]} (one label per row of operand 0's logits)")
    return ()


def _same_shape_loss(c: _Check) -> Shape:
    if c.shapes[1] != c.shapes[0]:
        c.fail(1, f"{c.shapes[0]} (the shape of operand 0)")
    return ()


def _pick(c: _Check, index: int) -> Shape:
    x = c.shapes[0]
    if not x or not 0 <= index < x[-1]:
        c.fail(0, f"a last dimension with an entry {index}")
    return x[:-1]


def _weighted_sum(c: _Check, weights: tuple) -> Shape:
    if len(weights) != len(c.shapes):
        raise ValueError(f"node {c.node.output!r} (WEIGHTED_SUM): {len(weights)} weights for {len(c.shapes)} operands")
    for i, s in enumerate(c.shapes):
        if s != ():
            c.fail(i, "() (a scalar loss)")
    return ()


def _row_loss(c: _Check) -> Shape:
    """(x [..., n], target of x's shape[, mask of x's rows]) -> a scalar: KL_DIV's and COSINE's operands."""
    if len(c.shapes) not in (2, 3):
        raise ValueError(f"node {c.node.output!r} ({c.node.op.name}): expected (x, target[, mask]); "
                         f"got {len(c.shapes)} operands")
    x = c.shapes[0]
    if not x:
        c.fail(0, "at least 1 dimension ([..., n])")
    if c.shapes[1] != x:
        c.fail(1, f"{x} (the shape of operand 0)")
    if len(c.shapes) == 3 and c.shapes[2] != x[:-1]:
        c.fail(2, f"{x[:-1]} (one mask entry per row of operand 0)")
    return ()


def _kl_div(c: _Check, temperature: float) -> Shape:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"node {c.node.output!r} (KL_DIV): temperature must be a positive number; got {temperature!r}")
    return _row_loss(c)


# op -> its shape rule: the operands' shapes (and the node's attrs, as keywords) -> the
# output's shape. Each rule checks what its op reads and raises a ValueError naming the
# node and the operand that disagrees.
SHAPE_RULES: dict[Op, Callable[..., Shape]] = {
    Op.EMBED: _embed,
    Op.MASK_BIAS: _mask_bias,
    Op.LINEAR: _linear,
    Op.ATTENTION: _attention,
    Op.ATTN_PROBS: _attn_probs,
    Op.ATTN_APPLY: _attn_apply,
    Op.ADD_LN: _add_ln,
    Op.LAYERNORM: _layernorm,
    Op.FIRST_TOKEN: _first_token,
    Op.CONCAT: _concat,
    Op.DROPOUT: _dropout,
    Op.LORA: _lora,
    Op.CROSS_ENTROPY: _cross_entropy,
    Op.MSE: _same_shape_loss,
    Op.BCE_LOGITS: _same_shape_loss,
    Op.PICK: _pick,
    Op.WEIGHTED_SUM: _weighted_sum,
    Op.KL_DIV: _kl_div,
    Op.COSINE: _row_loss,
}

# The attrs each op takes: its rule's keyword parameters.
_RULE_ATTRS = {op: rule.__code__.co_varnames[1:rule.__code__.co_argcount] for op, rule in SHAPE_RULES.items()}


def infer_shapes(graph: Graph, param_shapes: Mapping[str, Shape],
                 input_shapes: Mapping[str, Shape]) -> dict[str, Shape]:
    """The shape of every value of ``graph``: its inputs, its parameters and each node's output.

    ``param_shapes`` holds each parameter's shape (a CONCAT's result may be given, when the
    backend has folded it, or left to its rule), ``input_shapes`` each runtime input's
    (``input_ids`` ... ``(batch, seq)``; a head's hidden state ``(batch, seq, hidden)``).
    Raises ValueError, naming the node and the operand, at the first disagreement.
    """
    shapes: dict[str, Shape] = {}
    for name in graph.inputs:
        if name not in input_shapes:
            raise ValueError(f"graph input {name!r} has no shape (got shapes for {sorted(input_shapes)})")
        shapes[name] = tuple(input_shapes[name])
    shapes.update((name, tuple(s)) for name, s in param_shapes.items())
    for n in graph.nodes:
        missing = [name for name in n.inputs if name not in shapes]
        if missing:
            raise ValueError(f"node {n.output!r} ({n.op.name}) reads {missing[0]!r}, which is neither a graph "
                             f"input, a parameter with a shape, nor the output of an earlier node")
        attrs = n.kwargs
        if set(attrs) != set(_RULE_ATTRS[n.op]):
            raise ValueError(f"node {n.output!r} ({n.op.name}) has attrs {sorted(attrs)}; "
                             f"the op takes {sorted(_RULE_ATTRS[n.op])}")
        shapes[n.output] = SHAPE_RULES[n.op](_Check(n, shapes), **attrs)
    return shapes


# -- lifetimes ---------------------------------------------------------------------------


def free_after(graph: Graph) -> tuple[tuple[str, ...], ...]:
    """For each node, the node outputs that are dead once it has run.

    A value dies after its last reader; one nobody reads dies right after it is made. Graph
    outputs never die (the caller reads them after the last node); runtime inputs and
    parameters are not node outputs, so they are never listed.
    """
    last_reader: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for name in n.inputs:
            last_reader[name] = i
    keep = set(graph.outputs.values())
    dead: list[list[str]] = [[] for _ in graph.nodes]
    for i, n in enumerate(graph.nodes):
        if n.output not in keep:
            dead[last_reader.get(n.output, i)].append(n.output)
    return tuple(tuple(names) for names in dead)
