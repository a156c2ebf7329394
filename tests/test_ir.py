"""The op list as data: graph building, selection and constant folding, no backend needed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cbert.backends.numpy.lowering import concat
from cbert.config import BertConfig
from cbert.families import build_graph
from cbert.heads import Heads
from cbert.ir import Graph, Op, fold_constants, node

CFG = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                 max_position_embeddings=20)


def test_nodes_are_frozen_data():
    n = node(Op.LINEAR, ["x", "w", "b"], "y", activation="gelu")
    assert n.kwargs == {"activation": "gelu"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.output = "z"
    assert hash(n) == hash(node(Op.LINEAR, ["x", "w", "b"], "y", activation="gelu"))


@pytest.mark.parametrize("heads", [Heads(), Heads(pooler=True), Heads(pooler=True, mlm=True, nsp=True),
                                   Heads(mlm=True, tied_decoder=False)])
def test_graph_reads_exactly_the_checkpoint_tensors(heads):
    g = build_graph(CFG, heads)
    assert set(g.params) == set(g.param_shapes)
    assert g.inputs == ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def test_outputs_named_as_hugging_face_names_them():
    g = build_graph(CFG, Heads(pooler=True, mlm=True, nsp=True, mlm_output="prediction_logits"),
                    output_hidden_states=True, output_attentions=True)
    assert {"last_hidden_state", "pooler_output", "prediction_logits", "seq_relationship_logits"} <= set(g.outputs)
    assert {f"hidden_states.{i}" for i in range(3)} <= set(g.outputs)
    assert {f"attentions.{i}" for i in range(2)} <= set(g.outputs)
    ops = [n.op for n in g.nodes]
    # Without attentions asked for, attention is one fused node per layer.
    fused = [n.op for n in build_graph(CFG).nodes]
    assert fused.count(Op.ATTENTION) == 2 and Op.ATTN_PROBS not in fused
    assert ops.count(Op.ATTN_PROBS) == 2 and Op.ATTENTION not in ops


def test_one_qkv_matmul_per_layer_after_folding():
    g = build_graph(CFG)
    params = {name: np.zeros(shape, np.float32) for name, shape in g.param_shapes.items()}
    folded, p = fold_constants(g, params, concat)
    assert Op.CONCAT not in [n.op for n in folded.nodes]
    assert p["encoder.layer.0.qkv.weight"].shape == (48, 16)
    assert "encoder.layer.0.attention.self.query.weight" not in p  # parts dropped: no second copy kept
    linears = [n for n in folded.nodes if n.op is Op.LINEAR]
    assert len(linears) == 2 * 4  # qkv, attention output, FFN in, FFN out


def test_select_cuts_the_head_off_for_a_host_post_process():
    g = build_graph(CFG, Heads(mlm=True))
    head = g.select({"logits": g.outputs["logits"]}, inputs=["hidden_states.2"])
    assert head.inputs == ("hidden_states.2",)
    assert [n.op for n in head.nodes] == [Op.LINEAR, Op.LAYERNORM, Op.LINEAR]
    enc = g.select({"last_hidden_state": "hidden_states.2"})
    assert Op.LAYERNORM not in [n.op for n in enc.nodes] and len(enc.nodes) == len(g.nodes) - 3


def test_params_exclude_inputs_and_node_outputs():
    g = Graph((node(Op.LINEAR, ["x", "w", "b"], "y", activation="none"),
               node(Op.LAYERNORM, ["y", "g", "b2"], "z", eps=1e-5)), ("x",), {"z": "z"})
    assert g.params == ("w", "b", "g", "b2")
