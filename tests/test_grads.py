"""Gradients on the numpy reference: every op's VJP against central finite differences (float64),
whole models against torch autograd (float32), gradients w.r.t. a runtime input, and a dropout graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_losses import CASES, checkpoint, inputs_for, labels_for, torch_loss

import cbert
from cbert.backends.numpy import NumpyBackend, run_graph
from cbert.backends.numpy.lowering import TABLE, mask_bias
from cbert.backends.numpy.vjp import VJP
from cbert.ir import ACTIVATIONS, IGNORE_INDEX, Op
from cbert.losses import prepare_labels, with_dropout, with_losses
from cbert.tools.parity import scaled_max_abs_error

# -- every op against finite differences ---------------------------------------------------

FD_STEP = 1e-6
FD_TOL = 1e-7  # scaled max abs error of float64 central differences of smooth ops
# The forward's erf is a rational approximation accurate to float32 (~4e-7), so its finite differences
# differ from the exact GELU derivative (Phi(x) + x phi(x)) the VJP gives by up to ~1e-6.
GELU_TOL = 3e-6


def _op_cases():
    """(id, op, inputs, attrs, tolerance): small random float64 operands, integer ones where the op reads ids."""
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.normal(size=shape)

    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])  # a padded key in each row
    bias = mask_bias(mask).astype(np.float64)
    qkv = normal(2, 4, 18)  # 2 heads of size 3
    probs = rng.random((2, 2, 4, 4))
    probs /= probs.sum(-1, keepdims=True)
    labels = np.array([[0, 3, IGNORE_INDEX, 1, 2], [IGNORE_INDEX, 2, 2, 0, IGNORE_INDEX]])
    cases = [
        ("embed", Op.EMBED, (normal(6), normal(6), normal(11, 6), np.array([[1, 4, 4, 0], [10, 1, 4, 2]]),
                             normal(4, 6), np.array([[0, 0, 1, 1], [3, 3, 2, 2]])), dict(eps=1e-12), FD_TOL),
        ("mask_bias", Op.MASK_BIAS, (mask,), {}, FD_TOL),
        *[(f"linear_{a}", Op.LINEAR, (normal(2, 3, 4), normal(5, 4), normal(5)), dict(activation=a),
           GELU_TOL if a == "gelu" else FD_TOL) for a in ACTIVATIONS],
        ("attention", Op.ATTENTION, (qkv, bias), dict(heads=2), FD_TOL),
        ("attn_probs", Op.ATTN_PROBS, (qkv, bias), dict(heads=2), FD_TOL),
        ("attn_apply", Op.ATTN_APPLY, (probs, qkv), dict(heads=2), FD_TOL),
        ("add_ln", Op.ADD_LN, (normal(2, 3, 6), normal(2, 3, 6), normal(6), normal(6)), dict(eps=1e-5), FD_TOL),
        ("layernorm", Op.LAYERNORM, (normal(2, 3, 6), normal(6), normal(6)), dict(eps=1e-12), FD_TOL),
        ("first_token", Op.FIRST_TOKEN, (normal(2, 3, 4),), {}, FD_TOL),
        ("concat_rows", Op.CONCAT, (normal(2, 4), normal(3, 4), normal(1, 4)), dict(axis=0), FD_TOL),
        ("concat_columns", Op.CONCAT, (normal(3, 2), normal(3, 5)), dict(axis=1), FD_TOL),
        ("dropout", Op.DROPOUT, (normal(3, 5), np.array(7)), dict(rate=0.3, salt=2), FD_TOL),
        ("dropout_off", Op.DROPOUT, (normal(3, 5), np.array(7)), dict(rate=0.0, salt=0), FD_TOL),
        # LoRA's path: over a whole output (an activation after it) and over a part of a fused one
        ("lora_gelu", Op.LORA, (normal(2, 3, 5), normal(2, 3, 4), normal(2, 4), normal(5, 2)),
         dict(scale=1.5, offset=0, activation="gelu"), GELU_TOL),
        ("lora_part", Op.LORA, (normal(2, 3, 9), normal(2, 3, 4), normal(3, 4), normal(5, 3)),
         dict(scale=0.5, offset=2, activation="none"), FD_TOL),
        ("cross_entropy_mean", Op.CROSS_ENTROPY, (normal(2, 5, 4), labels), dict(reduction="mean"), FD_TOL),
        ("cross_entropy_sum", Op.CROSS_ENTROPY, (normal(2, 5, 4), labels), dict(reduction="sum"), FD_TOL),
        ("cross_entropy_none_counted", Op.CROSS_ENTROPY, (normal(3, 4), np.full(3, IGNORE_INDEX)),
         dict(reduction="mean"), FD_TOL),
        ("mse", Op.MSE, (normal(3, 1), normal(3, 1)), {}, FD_TOL),
        ("bce_logits", Op.BCE_LOGITS, (3 * normal(3, 2), rng.random((3, 2))), {}, FD_TOL),
        ("pick", Op.PICK, (normal(2, 3, 2),), dict(index=1), FD_TOL),
        ("weighted_sum", Op.WEIGHTED_SUM, (np.array(normal()), np.array(normal())), dict(weights=(1.0, 0.25)),
         FD_TOL),
        # distillation (cbert.train.distill): a padded position in each row is left out by the mask
        ("kl_div_masked", Op.KL_DIV, (normal(2, 4, 5), 2 * normal(2, 4, 5), mask), dict(temperature=2.0), FD_TOL),
        ("kl_div_rows", Op.KL_DIV, (normal(3, 6), normal(3, 6)), dict(temperature=1.0), FD_TOL),
        ("cosine_masked", Op.COSINE, (normal(2, 4, 6), normal(2, 4, 6), mask), {}, FD_TOL),
        ("cosine_rows", Op.COSINE, (normal(3, 5), normal(3, 5)), {}, FD_TOL),
    ]
    return cases


OP_CASES = _op_cases()


def test_every_op_has_a_vjp_and_a_finite_difference_case():
    assert set(VJP) == set(Op)
    assert {op for _, op, *_ in OP_CASES} == set(Op)


def _finite_difference(f, x: np.ndarray) -> np.ndarray:
    """d f / d x by central differences, element by element (x is changed and restored in place)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        keep = x[i]
        x[i] = keep + FD_STEP
        up = f()
        x[i] = keep - FD_STEP
        down = f()
        x[i] = keep
        grad[i] = (up - down) / (2 * FD_STEP)
    return grad


@pytest.mark.parametrize("name,op,inputs,attrs,tol", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_vjp_matches_finite_differences(name, op, inputs, attrs, tol):
    inputs = tuple(np.array(a) for a in inputs)  # our own copies: the differences change them in place
    out = TABLE[op](*inputs, **attrs)
    if any(np.issubdtype(a.dtype, np.floating) for a in inputs):  # (MASK_BIAS reads only a mask)
        assert out.dtype == np.float64, f"{name}: the forward left float64 ({out.dtype})"
    ct = np.random.default_rng(1).normal(size=out.shape)

    def f() -> float:  # <ct, op(inputs)>: its gradient is the VJP of ct
        return float((TABLE[op](*inputs, **attrs) * ct).sum())

    grads = VJP[op](ct, inputs, out, **attrs)
    assert len(grads) == len(inputs)
    for k, (x, g) in enumerate(zip(inputs, grads)):
        if not np.issubdtype(x.dtype, np.floating):
            assert g is None, f"{name}: integer operand {k} got a cotangent"
            continue
        assert g.shape == x.shape and g.dtype == np.float64, f"{name}: operand {k}: {g.shape} {g.dtype}"
        err = scaled_max_abs_error(g, _finite_difference(f, x))
        assert err <= tol, f"{name}: operand {k}: scaled max abs error {err:.3g} > {tol:g}"


# -- whole models against torch autograd ----------------------------------------------------

def exact_embedding_grads(model) -> None:
    """Make torch's embeddings give the exact gradient: nn.Embedding(padding_idx=p) drops the lookups of
    row p (the pad token's row, and RoBERTa's padding position) from its gradient, a training convention
    the op list has no way to express; cbert's EMBED VJP is the exact one."""
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.padding_idx = None


@pytest.mark.parametrize("family,head", CASES)
def test_grads_match_torch(tmp_path_factory, family, head):
    folder, hf = checkpoint(tmp_path_factory, family, head)
    inputs = inputs_for(family)
    labels = labels_for(family, head, inputs)
    exact_embedding_grads(hf)
    hf.zero_grad()
    want_loss = torch_loss(hf, inputs, labels)
    want_loss.backward()
    loss, grads = cbert.load(folder, backend="numpy").loss_and_grads(**inputs, **labels)
    assert loss == pytest.approx(want_loss.item(), rel=1e-5)
    with safe_open(f"{folder}/model.safetensors", "np") as f:
        assert set(grads) == set(f.keys())  # the file's names; a tied decoder has none of its own
    by_name = hf.state_dict(keep_vars=True)  # the tied decoder's weight is the word embeddings' tensor
    for name, g in grads.items():
        assert g.dtype == np.float32 and g.shape == tuple(by_name[name].shape), name
        err = scaled_max_abs_error(g, by_name[name].grad.numpy())
        assert err <= 1e-4, f"{family} {head}: {name}: scaled max abs error {err:.3g}"


@pytest.fixture
def bert_seq_cls(tmp_path_factory):
    """(numpy model, transformers model, inputs, checked labels, problem type) of BERT's classifier."""
    folder, hf = checkpoint(tmp_path_factory, "bert", "seq_cls")
    model = cbert.load(folder, backend="numpy")
    inputs = inputs_for("bert")
    labels = labels_for("bert", "seq_cls", inputs)
    ckpt = model.checkpoint
    given, problem = prepare_labels(model.config, ckpt.heads, *inputs["input_ids"].shape, labels)
    return model, hf, inputs, given, problem


def _loss_graph(model, graph, given, problem, cut=None):
    full = with_losses(graph, model.checkpoint.heads, frozenset(given), problem)
    return full.select({"loss": full.outputs["loss"]}, inputs=cut)


def test_grads_of_a_runtime_input_match_torch(bert_seq_cls):
    """A graph cut at the embeddings' output: d loss / d hidden_states.0 against torch's grad of it."""
    model, hf, inputs, given, problem = bert_seq_cls
    graph = _loss_graph(model, model.checkpoint.graph, given, problem, cut=["hidden_states.0"])
    assert "hidden_states.0" in graph.inputs and "input_ids" not in graph.inputs
    exe = NumpyBackend().compile_grad(graph, model.checkpoint.params_for(graph))
    hidden0 = model.forward(**inputs, output_hidden_states=True).hidden_states[0]
    feed = {"hidden_states.0": hidden0, "attention_mask": inputs["attention_mask"], **given}
    outputs, grads = exe(feed, wrt=["hidden_states.0"], trainable=())
    assert set(grads) == {"hidden_states.0"}

    out = hf(**{k: torch.from_numpy(v) for k, v in {**inputs, "labels": given["labels"]}.items()},
             output_hidden_states=True)
    out.hidden_states[0].retain_grad()
    out.loss.backward()
    assert float(outputs["loss"]) == pytest.approx(out.loss.item(), rel=1e-5)
    err = scaled_max_abs_error(grads["hidden_states.0"], out.hidden_states[0].grad.numpy())
    assert err <= 1e-4, f"d loss / d hidden_states.0: scaled max abs error {err:.3g}"


def test_trainable_subset_loss_scale_and_eval_forward(bert_seq_cls):
    model, _, inputs, given, problem = bert_seq_cls
    graph = _loss_graph(model, model.checkpoint.graph, given, problem)
    exe = model.backend.compile_grad(graph, model.checkpoint.params_for(graph))
    feed = {**{k: v for k, v in model.check_inputs(**inputs).items() if k in graph.inputs}, **given}
    outputs, every = exe(feed)
    assert set(every) == set(graph.params)  # the unfolded names: query, key and value apart
    assert "encoder.layer.0.attention.self.query.weight" in every
    _, some = exe(feed, trainable=["classifier.weight", "encoder.layer.1.output.dense.bias"])
    assert set(some) == {"classifier.weight", "encoder.layer.1.output.dense.bias"}
    for name, g in some.items():
        np.testing.assert_array_equal(g, every[name])
    _, scaled = exe(feed, trainable=["classifier.weight"], loss_scale=1024.0)
    np.testing.assert_allclose(scaled["classifier.weight"], 1024.0 * every["classifier.weight"], rtol=1e-6)
    eval_outputs, none = exe(feed, trainable=())
    assert none == {} and eval_outputs["loss"] == outputs["loss"]
    with pytest.raises(ValueError, match="'pooler.nope' is not a parameter"):
        exe(feed, trainable=["pooler.nope"])
    with pytest.raises(ValueError, match="'input_ids' holds int64; only a float input has a gradient"):
        exe(feed, wrt=["input_ids"])


def test_a_dropout_graph_matches_finite_differences(bert_seq_cls):
    """With dropout on, a fixed seed: the same masks forward and backward (redrawn from seed and salt)."""
    model, _, inputs, given, problem = bert_seq_cls
    graph = _loss_graph(model, with_dropout(model.checkpoint.graph, 0.1, 0.2, 0.3), given, problem)
    assert sum(n.op is Op.DROPOUT for n in graph.nodes) > 3
    params = {k: v.astype(np.float64) for k, v in model.checkpoint.params_for(graph).items()}
    feed = {**{k: v for k, v in model.check_inputs(**inputs).items() if k in graph.inputs}, **given,
            "dropout_seed": np.array(3)}
    exe = NumpyBackend().compile_grad(graph, params)
    _, grads = exe(feed)

    rng = np.random.default_rng(2)
    direction = {k: rng.normal(size=v.shape) for k, v in params.items()}

    def loss(t: float) -> float:
        return float(run_graph(graph, {**{k: p + t * direction[k] for k, p in params.items()}, **feed})["loss"])

    h = 1e-5
    numeric = (loss(h) - loss(-h)) / (2 * h)
    analytic = sum(float((grads[k].astype(np.float64) * direction[k]).sum()) for k in params)
    assert analytic == pytest.approx(numeric, rel=1e-5)
    assert loss(0.0) != float(run_graph(graph, {**params, **feed, "dropout_seed": np.array(4)})["loss"])


def test_a_backend_without_gradients_says_which_have_them(tmp_path_factory):
    folder, _ = checkpoint(tmp_path_factory, "bert", "seq_cls")
    model = cbert.load(folder, backend="wgpu")
    with pytest.raises(cbert.InputError, match="backend='wgpu' computes no gradients; use backend='numpy' or 'mlx'"):
        model.loss_and_grads(**inputs_for("bert"), labels=np.array([0, 1, 2]))
