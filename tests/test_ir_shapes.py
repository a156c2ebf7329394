"""The op shape rules and the lifetime analysis in cbert.ir, and the numpy executor's use of them."""

from __future__ import annotations

import numpy as np
import pytest

from cbert.backends.numpy import NumpyBackend
from cbert.backends.numpy import backend as numpy_executor
from cbert.ir import SHAPE_RULES, Graph, Op, free_after, infer_shapes, node

H, HEADS, V, F = 12, 2, 30, 20
INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def layer_graph() -> tuple[Graph, dict]:
    """An encoder layer with every op of the list, and its parameter shapes."""
    nodes = (
        node(Op.CONCAT, ["q.w", "k.w", "v.w"], "qkv.w", axis=0),
        node(Op.CONCAT, ["q.b", "k.b", "v.b"], "qkv.b", axis=0),
        node(Op.EMBED, ["ln0.w", "ln0.b", "word", "input_ids", "pos", "position_ids", "type", "token_type_ids"],
             "x", eps=1e-12),
        node(Op.MASK_BIAS, ["attention_mask"], "bias"),
        node(Op.LINEAR, ["x", "qkv.w", "qkv.b"], "qkv", activation="none"),
        node(Op.ATTENTION, ["qkv", "bias"], "ctx", heads=HEADS),
        node(Op.ATTN_PROBS, ["qkv", "bias"], "probs", heads=HEADS),
        node(Op.ATTN_APPLY, ["probs", "qkv"], "ctx2", heads=HEADS),
        node(Op.ADD_LN, ["ctx", "x", "ln1.w", "ln1.b"], "a", eps=1e-12),
        node(Op.LINEAR, ["a", "ffn.w", "ffn.b"], "f", activation="gelu"),
        node(Op.LAYERNORM, ["ctx2", "ln2.w", "ln2.b"], "unread", eps=1e-12),
        node(Op.FIRST_TOKEN, ["a"], "cls"),
    )
    params = {"q.w": (H, H), "k.w": (H, H), "v.w": (H, H), "q.b": (H,), "k.b": (H,), "v.b": (H,),
              "ln0.w": (H,), "ln0.b": (H,), "word": (V, H), "pos": (16, H), "type": (2, H),
              "ln1.w": (H,), "ln1.b": (H,), "ffn.w": (F, H), "ffn.b": (F,), "ln2.w": (H,), "ln2.b": (H,)}
    return Graph(nodes, INPUTS, {"f": "f", "cls": "cls", "probs": "probs"}), params


def tokens(batch: int, seq: int) -> dict:
    return {name: (batch, seq) for name in INPUTS}


def test_every_op_has_one_shape_rule():
    assert set(SHAPE_RULES) == set(Op)


def test_shapes_of_every_op():
    graph, params = layer_graph()
    s = infer_shapes(graph, params, tokens(3, 5))
    assert s["qkv.w"] == (3 * H, H) and s["qkv.b"] == (3 * H,)
    assert s["x"] == (3, 5, H) and s["bias"] == (3, 5) and s["qkv"] == (3, 5, 3 * H)
    assert s["ctx"] == s["ctx2"] == s["a"] == (3, 5, H)
    assert s["probs"] == (3, HEADS, 5, 5)
    assert s["f"] == (3, 5, F) and s["cls"] == (3, H)


def test_matches_what_numpy_computes():
    graph, params = layer_graph()
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in params.items()}
    inputs = {"input_ids": rng.integers(0, V, (2, 7)), "attention_mask": np.ones((2, 7), np.int64),
              "token_type_ids": np.zeros((2, 7), np.int64), "position_ids": np.tile(np.arange(7), (2, 1))}
    every = Graph(graph.nodes, graph.inputs, {n.output: n.output for n in graph.nodes})
    got = NumpyBackend().compile(every, arrays)(inputs)
    shapes = infer_shapes(graph, params, tokens(2, 7))
    assert {k: v.shape for k, v in got.items()} == {n.output: shapes[n.output] for n in graph.nodes}


def with_param(shape_of: dict, name: str, shape: tuple) -> dict:
    return {**shape_of, name: shape}


@pytest.mark.parametrize("change,message", [
    (("ffn.w", (F, H + 1)), r"node 'f' \(LINEAR\): operand 1 'ffn.w' has shape \(20, 13\), expected .*K must equal"),
    (("ffn.b", (F + 1,)), r"node 'f' \(LINEAR\): operand 2 'ffn.b' has shape \(21,\)"),
    (("q.w", (H, H + 2)), r"node 'qkv.w' \(CONCAT\): operand 1 'k.w'"),
    (("type", (2, H + 1)), r"node 'x' \(EMBED\): operand 6 'type' has shape \(2, 13\), expected \(rows, 12\)"),
    (("ln0.w", (H + 1,)), r"node 'x' \(EMBED\): operand 0 'ln0.w'"),
    (("ln1.b", (H - 1,)), r"node 'a' \(ADD_LN\): operand 3 'ln1.b'"),
    (("ln2.w", (2, H)), r"node 'unread' \(LAYERNORM\): operand 1 'ln2.w'"),
])
def test_a_wrong_parameter_names_the_node_and_the_operand(change, message):
    graph, params = layer_graph()
    with pytest.raises(ValueError, match=message):
        infer_shapes(graph, with_param(params, *change), tokens(2, 3))


def test_attention_width_must_split_into_heads():
    graph, params = layer_graph()
    odd = Graph(tuple(node(n.op, n.inputs, n.output, **(n.kwargs | {"heads": 5} if "heads" in n.kwargs else n.kwargs))
                      for n in graph.nodes), graph.inputs, graph.outputs)
    with pytest.raises(ValueError, match=r"node 'ctx' \(ATTENTION\): operand 0 'qkv' has shape \(2, 3, 36\), "
                                         r"expected a last dimension divisible by 3 \* heads = 15"):
        infer_shapes(odd, params, tokens(2, 3))


def test_inputs_that_disagree_are_named():
    graph, params = layer_graph()
    with pytest.raises(ValueError, match=r"node 'x' \(EMBED\): operand 5 'position_ids' has shape \(2, 4\)"):
        infer_shapes(graph, params, tokens(2, 3) | {"position_ids": (2, 4)})
    with pytest.raises(ValueError, match=r"node 'ctx' \(ATTENTION\): operand 1 'bias' has shape \(2, 4\), "
                                         r"expected \(2, 3\)"):
        infer_shapes(graph, params, tokens(2, 3) | {"attention_mask": (2, 4)})
    with pytest.raises(ValueError, match="graph input 'token_type_ids' has no shape"):
        infer_shapes(graph, params, {k: (2, 3) for k in INPUTS if k != "token_type_ids"})


def test_a_malformed_node_is_named():
    x = {"x": (2, 3, 4)}
    bad = [
        (node(Op.LINEAR, ["x", "w", "b"], "y", activation="swish"), r"activation 'swish' is not one of"),
        (node(Op.LINEAR, ["x", "w", "b"], "y"), r"node 'y' \(LINEAR\) has attrs \[\]; the op takes \['activation'\]"),
        (node(Op.LAYERNORM, ["x", "nope", "b"], "y", eps=1e-5), r"node 'y' \(LAYERNORM\) reads 'nope'"),
        (node(Op.ATTENTION, ["x", "m"], "y", heads=0), r"heads must be a positive integer"),
        (node(Op.FIRST_TOKEN, ["w"], "y"), r"operand 0 'w' has shape \(5, 4\), expected 3 dimensions"),
    ]
    for n, message in bad:
        with pytest.raises(ValueError, match=message):
            infer_shapes(Graph((n,), ("x",), {"y": "y"}), {"w": (5, 4), "b": (5,), "m": (2, 3)}, x)


def test_free_after_is_the_last_read():
    graph, _ = layer_graph()
    dead = dict(zip((n.output for n in graph.nodes), free_after(graph)))
    assert dead["qkv"] == ("qkv.w", "qkv.b")  # folded weights die with their reader
    assert dead["probs"] == ("bias",) and dead["ctx2"] == ("qkv",)  # after their last readers
    assert dead["unread"] == ("ctx2", "unread")  # a value nobody reads dies where it is made
    assert dead["a"] == ("x", "ctx") and dead["cls"] == ("a",)
    dying = [v for names in dead.values() for v in names]
    assert not set(dying) & {"f", "cls", "probs"}  # graph outputs never die
    assert not set(dying) & set(INPUTS) and "ffn.w" not in dying  # nor inputs and parameters
    assert len(dying) == len(set(dying))


def test_numpy_checks_shapes_once_per_input_shape(monkeypatch):
    graph, params = layer_graph()
    rng = np.random.default_rng(1)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in params.items()}
    run = NumpyBackend().compile(graph, arrays)
    calls = []
    monkeypatch.setattr(numpy_executor, "infer_shapes", lambda *a: calls.append(a) or infer_shapes(*a))

    def inputs(batch, seq):
        return {"input_ids": np.zeros((batch, seq), np.int64), "attention_mask": np.ones((batch, seq), np.int64),
                "token_type_ids": np.zeros((batch, seq), np.int64),
                "position_ids": np.zeros((batch, seq), np.int64)}

    for shape in ((2, 3), (2, 3), (1, 4), (2, 3)):
        run(inputs(*shape))
    assert len(calls) == 2
    wrong = NumpyBackend().compile(graph, {**arrays, "ffn.w": arrays["ffn.w"][:, :-1]})
    with pytest.raises(ValueError, match=r"node 'f' \(LINEAR\): operand 1 'ffn.w'"):
        wrong(inputs(2, 3))
