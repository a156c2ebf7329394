"""Attention rollout and attention flow (Abnar & Zuidema, 2020, "Quantifying Attention Flow in
Transformers"), from the attention probabilities every backend returns.

Both treat each layer's attention, averaged over heads, plus the residual connection as
``(A + I) / 2`` (rows renormalized). Rollout multiplies these layer matrices; flow is the maximum
flow through the layered graph whose edge capacities they are, from each input token to the tokens
the prediction reads (networkx max-flow, as their attention_graph_util.py computes it).
https://github.com/samiraabnar/attention_flow/blob/master/attention_graph_util.py
"""

from __future__ import annotations

import sys

import numpy as np

from ..extras import need


def attentions(subject, w: int) -> np.ndarray:
    """[layers, heads, seq, seq] attention probabilities of window ``w`` (rows attend to columns)."""
    key = ("attentions", w)
    if key not in subject.cache:
        out = subject.model.forward(**subject.window_batch(w), output_attentions=True)
        subject.cache[key] = np.stack([a[0] for a in out.attentions]).astype(np.float64)
    return subject.cache[key]


def residual_attention(att: np.ndarray) -> np.ndarray:
    """[layers, seq, seq]: each layer's head-mean attention with the residual, (A + I) / 2, rows summing to 1."""
    a = att.mean(1) + np.eye(att.shape[-1])
    return a / a.sum(-1, keepdims=True)


def rollout_matrix(att: np.ndarray) -> np.ndarray:
    """[seq, seq]: how much each top-layer token (row) draws on each input token (column)."""
    joint = None
    for layer in residual_attention(att):
        joint = layer if joint is None else layer @ joint
    return joint


def flow_values(att: np.ndarray, rows: list[int], progress: bool = False) -> np.ndarray:
    """[seq]: the maximum flow from each input token to the top-layer tokens ``rows`` (each row's flows
    normalized to sum 1, then averaged over the rows)."""
    nx = need("networkx", "attention-flow")
    layers = residual_attention(att)
    n_layers, seq = len(layers), layers.shape[-1]
    graph = nx.DiGraph()
    for layer in range(n_layers):
        for i in range(seq):  # token i of layer + 1 reads token j of layer with weight layers[layer][i, j]
            for j in range(seq):
                graph.add_edge((layer, j), (layer + 1, i), capacity=float(layers[layer][i, j]))
    # One residual network for every source: preflow-push resets its flows on each call, and building
    # it is most of a call's time (maximum_flow_value would build it each time).
    residual = nx.algorithms.flow.build_residual_network(graph, "capacity")
    out = np.zeros(seq)
    for r in rows:
        flows = np.zeros(seq)
        for j in range(seq):
            flows[j] = nx.algorithms.flow.preflow_push(graph, (0, j), (n_layers, r), residual=residual,
                                                       value_only=True).graph["flow_value"]
            if progress:
                print(f"\rattention-flow: {j + 1}/{seq} input tokens", end="", file=sys.stderr, flush=True)
        out += flows / max(flows.sum(), 1e-30)
    if progress:
        print(file=sys.stderr)
    return out / len(rows)


def attention_rollout(subject, options) -> tuple[np.ndarray, dict]:
    per_window = {w: rollout_matrix(attentions(subject, w))[subject.target.rows(w)].mean(0)
                  for w in subject.weighted_windows()}
    return subject.combine(per_window), {"read_from": "the rows of the tokens the prediction reads",
                                         "residual": "(A + I) / 2, heads averaged"}


def attention_flow(subject, options) -> tuple[np.ndarray, dict]:
    need("networkx", "attention-flow")  # before any forward
    per_window = {w: flow_values(attentions(subject, w), subject.target.rows(w), subject.progress)
                  for w in subject.weighted_windows()}
    return subject.combine(per_window), {"read_from": "the rows of the tokens the prediction reads",
                                         "residual": "(A + I) / 2, heads averaged", "max_flow": "networkx"}
