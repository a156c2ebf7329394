"""Heads: which ones a model outputs, where each one runs, and the host post-processes.

Every head is a node of the model's one graph (see :mod:`cbert.families`), writing a value
named below. A forward selects the heads of the checkpoint's Hugging Face class from it; a
head placed on the host (the masked-LM head on backends whose rule says so, ``pooler_output``
and ``mlm_logits`` over a given hidden state) is the same nodes cut at the encoder's output
and run by the numpy reference, so both placements give identical numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backends.numpy import NumpyExecutable
from .ir import Graph

# The graph value each head writes: one name per head, so every head of a file fits in one graph.
POOLER_OUTPUT = "pooler_output"
MLM_LOGITS = "mlm_logits"
NSP_LOGITS = "seq_relationship_logits"
SEQ_CLS_LOGITS = "seq_cls_logits"
TOKEN_CLS_LOGITS = "token_cls_logits"
QA_LOGITS = "qa_logits"  # [B, S, 2]; split into start_logits and end_logits on the host

# Where the masked-LM head runs: the backend's rule (auto), always in its graph, or always on the host.
MLM_MODES = ("auto", "in_graph", "host")


@dataclass(frozen=True)
class Heads:
    """Which heads a graph computes, and how the Hugging Face class names their outputs."""

    pooler: bool = False
    mlm: bool = False
    nsp: bool = False
    seq_cls: int = 0  # number of labels of a sequence classifier; 0: none
    token_cls: int = 0  # number of labels of a token classifier; 0: none
    qa: bool = False
    tied_decoder: bool = True  # no decoder weight of its own: reuse the word embeddings
    mlm_output: str = "logits"  # "prediction_logits" for BertForPreTraining

    def outputs(self) -> dict[str, str]:
        """Hugging Face output name -> the graph value that holds it."""
        out = {}
        if self.pooler or self.nsp:
            out["pooler_output"] = POOLER_OUTPUT
        if self.mlm:
            out[self.mlm_output] = MLM_LOGITS
        if self.nsp:
            out["seq_relationship_logits"] = NSP_LOGITS
        if self.seq_cls:
            out["logits"] = SEQ_CLS_LOGITS
        if self.token_cls:
            out["logits"] = TOKEN_CLS_LOGITS
        if self.qa:
            out["qa_logits"] = QA_LOGITS
        return out


def mlm_in_graph(mode: str, backend, batch: int, seq: int) -> bool:
    """Whether the masked-LM head runs in the backend's graph for a [batch, seq] forward.

    Its decoder is a [vocab, hidden] GEMM over every token; a backend that measured the host
    faster at some shapes says so with ``mlm_in_graph(batch, seq)``.
    """
    if mode != "auto":
        return mode == "in_graph"
    rule = getattr(backend, "mlm_in_graph", None)
    return True if rule is None else bool(rule(batch, seq))


def forward_outputs(graph: Graph, heads: Heads, hidden_states: bool, attentions: bool,
                    mlm_in_graph: bool) -> dict[str, str]:
    """What the backend computes of ``graph``: the last hidden state, the class's heads (the
    masked-LM head only where it runs in the graph), and the hidden states and attentions asked for."""
    out = {"last_hidden_state": graph.outputs["last_hidden_state"], **heads.outputs()}
    if heads.mlm and not mlm_in_graph:
        del out[heads.mlm_output]
    for group, wanted in (("hidden_states.", hidden_states), ("attentions.", attentions)):
        if wanted:
            out.update({k: v for k, v in graph.outputs.items() if k.startswith(group)})
    return out


def split_qa_logits(raw: dict[str, np.ndarray]) -> None:
    """The QA head's [B, S, 2] output as Hugging Face's start_logits and end_logits, in place."""
    if "qa_logits" in raw:
        qa = raw.pop("qa_logits")
        raw["start_logits"] = np.ascontiguousarray(qa[..., 0])
        raw["end_logits"] = np.ascontiguousarray(qa[..., 1])


class HostHeads:
    """Heads run by the numpy reference over a last_hidden_state, cut from a checkpoint's graph."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self._runs: dict[str, tuple[str, NumpyExecutable]] = {}

    def __call__(self, value: str, hidden: np.ndarray) -> np.ndarray:
        """The head writing ``value`` (``POOLER_OUTPUT``, ``MLM_LOGITS`` ...) over ``hidden``."""
        if value not in self._runs:
            graph = self.checkpoint.graph
            last = graph.outputs["last_hidden_state"]
            head = graph.select({value: value}, inputs=[last])
            self._runs[value] = (last, NumpyExecutable(head, self.checkpoint.params_for(head)))
        last, run = self._runs[value]
        return run({last: hidden})[value]
