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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
