"""MLX gradients (backend.compile_grad) against torch autograd, per family and head.

Training graphs are built as a trainer builds them (cbert.losses: with_dropout, with_losses,
Graph.select) and run through ``backend.compile_grad`` directly; torch runs the same
checkpoint in eval mode, float32. Gradients are compared by the checkpoint's tensor names.
"""

# The imports below follow the registry's explicit BLAS step, which must run first.
# ruff: noqa: E402

from __future__ import annotations

# The registry loads the BLAS before mlx.core is imported (see cbert/backends/mlx/_blas.py).
from cbert.backends import backend_class

backend_class("mlx")

# isort: split

import math
import threading

import mlx.core as mx
import numpy as np
import pytest
from conftest import SHAPES, assert_close, write_checkpoint
from test_families import FAMILIES, SMALL, family_inputs

import cbert
from cbert.backends.mlx import lowering
from cbert.backends.mlx.grad import MLXGradExecutable
from cbert.losses import DROPOUT_SEED, dropout_probs, prepare_labels, with_dropout, with_losses

# name -> (transformers class, config class, config kwargs): every family x every head.
BERT = dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, **SMALL)
CASES = {
    "bert_mlm": ("BertForMaskedLM", "BertConfig", BERT),
    "bert_pretrain": ("BertForPreTraining", "BertConfig", SHAPES["head16_pretrain"][1]),
    "bert_pretrain_untied": ("BertForPreTraining", "BertConfig", SHAPES["head64_untied"][1]),
    "bert_regression": ("BertForSequenceClassification", "BertConfig", dict(BERT, num_labels=1)),
    "bert_multi_label": ("BertForSequenceClassification", "BertConfig",
                         dict(BERT, num_labels=4, problem_type="multi_label_classification")),
    **{name: FAMILIES[name] for name in ("bert_seq", "bert_tok", "bert_qa")},
    **{f"{fam}_{head}": FAMILIES[f"{fam}_{head}"] for fam in ("distil", "roberta", "albert")
       for head in ("mlm", "seq", "tok", "qa")},
}
B, S = 3, 12
GRAD_TOL = 1e-4  # scaled max abs error against torch autograd, float32


@pytest.fixture(scope="session")
def grad_checkpoints(tmp_path_factory):
    """name -> (folder, transformers model in eval mode); written once per session, lazily.

    The torch model's embeddings lose their ``padding_idx``: with it, torch's backward drops what
    the lookups of the pad token add to its row (a QA loss reaches padded positions through the
    softmax over positions), a training rule the op list does not hold (EMBED has no padding_idx),
    so the reference here is the gradient of the function both compute.
    """
    import torch

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            folder = str(tmp_path_factory.mktemp(name))
            cls_name, config_name, kwargs = CASES[name]
            hf = write_checkpoint(folder, cls_name, kwargs, config_name=config_name)
            for module in hf.modules():
                if isinstance(module, torch.nn.Embedding):
                    module.padding_idx = None
            cache[name] = (folder, hf)
        return cache[name]

    return get


def _inputs(name: str) -> dict:
    cls_name, config_name, kwargs = CASES[name]
    if name in FAMILIES:
        return family_inputs(name, B, S)
    # BERT-layout extras: the same padding as the family suite, pair token types.
    rng = np.random.default_rng(0)
    ids = rng.integers(5, kwargs["vocab_size"], size=(B, S))
    mask = np.ones_like(ids)
    mask[1, S // 2:] = 0
    mask[2, 1:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, S // 3:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types * mask}


def _labels(model: cbert.Model, inputs: dict, seed: int = 1) -> dict:
    """Labels for every head the model has, as a collator makes them (-100 on padding)."""
    heads, cfg = model.checkpoint.heads, model.config
    rng = np.random.default_rng(seed)
    pad = inputs["attention_mask"] == 0
    out = {}
    if heads.mlm:
        labels = rng.integers(0, cfg.vocab_size, size=(B, S))
        labels[(rng.random((B, S)) < 0.5) | pad] = -100
        out["labels"] = labels
    if heads.nsp:
        out["next_sentence_label"] = np.array([0, 1, 1])
    if heads.seq_cls == 1:
        out["labels"] = rng.normal(size=B).astype(np.float32)
    elif heads.seq_cls and cfg.extra.get("problem_type") == "multi_label_classification":
        out["labels"] = rng.integers(0, 2, size=(B, heads.seq_cls)).astype(np.float32)
    elif heads.seq_cls:
        out["labels"] = rng.integers(0, heads.seq_cls, size=B)
    if heads.token_cls:
        labels = rng.integers(0, heads.token_cls, size=(B, S))
        labels[pad] = -100
        out["labels"] = labels
    if heads.qa:
        # Answers inside each row's tokens (a row's last is its length - 1); one past the end: clamped,
        # then ignored.
        last = inputs["attention_mask"].sum(axis=1) - 1
        out["start_positions"] = np.array([2, 0, S + 3])
        out["end_positions"] = np.minimum([5, S - 1, 1], last)
    return out


def training_graph(model: cbert.Model, inputs: dict, labels: dict, dropout: bool = False):
    """(training graph, its params, its runtime inputs) the way a trainer builds them."""
    ck = model.checkpoint
    given, problem = prepare_labels(model.config, ck.heads, B, S, labels)
    graph = with_dropout(ck.graph, *dropout_probs(model.config)) if dropout else ck.graph
    graph = with_losses(graph, ck.heads, frozenset(given), problem)
    graph = graph.select({k: v for k, v in graph.outputs.items() if k in ("loss", "mlm_loss", "nsp_loss")})
    feed = {**model.check_inputs(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"), None),
            **given}
    return graph, ck.params_for(graph), {k: feed[k] for k in graph.inputs if k != DROPOUT_SEED}


def torch_loss_and_grads(hf, inputs: dict, labels: dict, hidden_state_0: bool = False):
    """(loss, grads by parameter name (aliases of a tied weight included), d loss / d hidden_states[0])."""
    import torch

    hf.zero_grad()
    t = {k: torch.from_numpy(v) for k, v in {**inputs, **labels}.items()}
    out = hf(**t, output_hidden_states=hidden_state_0, return_dict=True)
    if hidden_state_0:
        out.hidden_states[0].retain_grad()
    out.loss.backward()
    grads = {name: p.grad for name, p in hf.named_parameters(remove_duplicate=False)}
    h0 = (out.hidden_states[0].detach().numpy(), out.hidden_states[0].grad.numpy()) if hidden_state_0 else None
    return float(out.loss.detach()), grads, h0


@pytest.mark.parametrize("name", list(CASES))
def test_grads_match_torch(grad_checkpoints, name):
    folder, hf = grad_checkpoints(name)
    model = cbert.load(folder, backend="mlx")
    inputs = _inputs(name)
    labels = _labels(model, inputs)
    graph, params, feed = training_graph(model, inputs, labels)
    exe = model.backend.compile_grad(graph, params)
    outputs, grads = exe(feed)
    loss, want, _ = torch_loss_and_grads(hf, inputs, labels)
    assert abs(float(outputs["loss"]) - loss) <= 1e-5 * max(1.0, abs(loss))
    assert set(grads) == set(graph.params)
    names = model.checkpoint.tensor_names
    for param, g in grads.items():
        assert g.dtype == mx.float32
        ref = want[names[param]]
        ref = np.zeros(g.shape, np.float32) if ref is None else ref.numpy()
        assert_close(exe.to_host(g), ref, f"{name}: d loss / d {names[param]}", GRAD_TOL)
    # No parameter torch trains is missing from ours.
    ours = {names[p] for p in grads}
    trained = {n for n, g in want.items() if g is not None and float(g.abs().max()) > 0}
    aliases = {n: {m for m, _ in _aliases(hf, n)} for n in trained}
    assert all(aliases[n] & ours for n in trained), sorted(n for n in trained if not aliases[n] & ours)


def _aliases(hf, name: str):
    """Every name under which the parameter called ``name`` appears (a tied weight has several)."""
    params = dict(hf.named_parameters(remove_duplicate=False))
    return [(n, p) for n, p in params.items() if p is params[name]]


@pytest.mark.parametrize("name", ["bert_seq", "albert_tok", "roberta_qa"])
def test_grad_wrt_the_embedding_output(grad_checkpoints, name):
    """A graph cut at hidden_states.0 takes it as a runtime input; its gradient is torch's."""
    folder, hf = grad_checkpoints(name)
    model = cbert.load(folder, backend="mlx")
    inputs = _inputs(name)
    labels = _labels(model, inputs)
    graph, params, feed = training_graph(model, inputs, labels)
    h0 = model.checkpoint.graph.outputs["hidden_states.0"]
    cut = graph.select(graph.outputs, inputs=[h0])
    loss, want, (h0_value, h0_grad) = torch_loss_and_grads(hf, inputs, labels, hidden_state_0=True)
    feed = {k: feed[k] for k in cut.inputs if k != h0}
    exe = model.backend.compile_grad(cut, model.checkpoint.params_for(cut))
    outputs, grads = exe({**feed, h0: h0_value}, wrt=[h0], trainable=())
    assert set(grads) == {h0}
    assert abs(float(outputs["loss"]) - loss) <= 1e-5 * max(1.0, abs(loss))
    assert_close(exe.to_host(grads[h0]), h0_grad, f"{name}: d loss / d hidden_states.0", GRAD_TOL)
    # Parameters and the input together, in one call.
    _, both = exe({**feed, h0: h0_value}, wrt=[h0])
    assert set(both) == set(cut.params) | {h0}
    assert_close(exe.to_host(both[h0]), h0_grad, "with params too", GRAD_TOL)


def test_trainable_loss_scale_eval_forward_and_replaced_params(grad_checkpoints):
    folder, _ = grad_checkpoints("bert_seq")
    model = cbert.load(folder, backend="mlx")
    inputs = _inputs("bert_seq")
    graph, params, feed = training_graph(model, inputs, _labels(model, inputs))
    exe = model.backend.compile_grad(graph, params)
    outputs, full = exe(feed)
    # An eval forward: no parameter, no input asked for -> no gradients, the same loss.
    eval_out, none = exe(feed, trainable=())
    assert none == {} and eval_out["loss"] == pytest.approx(float(outputs["loss"]), rel=1e-6)
    subset = ["classifier.weight", "encoder.layer.1.attention.self.key.bias"]
    _, some = exe(feed, trainable=subset, loss_scale=8.0)
    assert set(some) == set(subset)
    for k in subset:
        assert_close(exe.to_host(some[k]), 8.0 * exe.to_host(full[k]), k, 1e-5)
    # A trainer replaces a weight; the next call reads it.
    exe.params["classifier.bias"] = exe.from_host(np.asarray(params["classifier.bias"]) + 1.0)
    shifted, _ = exe(feed, trainable=())
    assert shifted["loss"] != outputs["loss"]


def test_dropout_is_seeded(grad_checkpoints):
    folder, _ = grad_checkpoints("bert_seq")
    model = cbert.load(folder, backend="mlx")
    inputs = _inputs("bert_seq")
    graph, params, feed = training_graph(model, inputs, _labels(model, inputs), dropout=True)
    assert any(n.op.value == "dropout" for n in graph.nodes)
    exe = model.backend.compile_grad(graph, params)
    runs = [exe({**feed, DROPOUT_SEED: np.array(seed)}) for seed in (7, 7, 8)]
    (out_a, g_a), (out_b, g_b), (out_c, g_c) = runs
    assert out_a["loss"] == out_b["loss"]
    for k in g_a:
        np.testing.assert_array_equal(exe.to_host(g_a[k]), exe.to_host(g_b[k]), err_msg=k)
    assert out_a["loss"] != out_c["loss"]
    assert not np.array_equal(exe.to_host(g_a["encoder.layer.0.output.dense.weight"]),
                              exe.to_host(g_c["encoder.layer.0.output.dense.weight"]))
    # Dropout is off in the graph without it: the eval loss differs from both.
    eval_graph, _, _ = training_graph(model, inputs, _labels(model, inputs))
    eval_out, _ = model.backend.compile_grad(eval_graph, params)(feed, trainable=())
    assert eval_out["loss"] not in (out_a["loss"], out_c["loss"])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_grads_near_float32(grad_checkpoints, dtype):
    """Half compute, float32 master weights: gradients float32, finite, near float32's."""
    folder, _ = grad_checkpoints("bert_pretrain")
    model32 = cbert.load(folder, backend="mlx")
    half = cbert.load(folder, backend="mlx", dtype=dtype)
    inputs = _inputs("bert_pretrain")
    labels = _labels(model32, inputs)
    graph, params, feed = training_graph(model32, inputs, labels)
    _, want = model32.backend.compile_grad(graph, params)(feed)
    exe = half.backend.compile_grad(graph, params)
    assert all(w.dtype == mx.float32 for w in exe.params.values())
    scale = 1024.0  # as a float16 trainer scales its loss
    outputs, got = exe(feed, loss_scale=scale)
    assert np.isfinite(outputs["loss"])
    for k, g in got.items():
        assert g.dtype == mx.float32
        host = exe.to_host(g) / scale
        assert np.isfinite(host).all(), k
        assert_close(host, exe.to_host(want[k]), f"{dtype} d loss / d {k}", 5e-2)


# -- the exact op's gradient where a lowering approximates -----------------------------------


def _finite_difference(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    return (f(x + h) - f(x - h)) / (2 * h)


def _exact_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def test_gelu_polynomial_has_the_exact_gelu_gradient():
    x = np.concatenate([np.linspace(-12, 12, 240_001), [0.0, 1e-30, -1e-30, 40.0, -40.0]]).astype(np.float32)
    with mx.stream(mx.cpu):
        got = np.array(mx.grad(lambda a: lowering.gelu(a, True).sum())(mx.array(x)))
    x = x.astype(np.float64)  # the reference at the float32 points themselves
    want = _finite_difference(_exact_gelu, x)
    # 2.4e-7 measured; autodiff of the polynomial itself is 1.05e-6 off (near x = -0.08).
    err = np.abs(got - want)
    assert err.max() <= 5e-7, f"max abs error {err.max():.3g} at x={x[err.argmax()]}"
    # The GPU form (mx.erf) is differentiated by MLX itself: the same gradient.
    with mx.stream(mx.cpu):
        gpu = np.array(mx.grad(lambda a: lowering.gelu(a, False).sum())(mx.array(x.astype(np.float32))))
    assert np.abs(gpu - want).max() <= 5e-7


def test_exp_nonpositive_has_exps_gradient():
    x = np.linspace(-80, 0, 8_001).astype(np.float32)
    with mx.stream(mx.cpu):
        got = np.array(mx.grad(lambda a: lowering.exp_nonpositive(a).sum())(mx.array(x)))
    want = _finite_difference(np.exp, x.astype(np.float64))
    rel = np.abs(got - want) / want
    assert rel.max() <= 1e-6, f"max relative error {rel.max():.3g} at x={x[rel.argmax()]}"


def test_cpu_and_gpu_formulations_give_the_same_grads(grad_checkpoints):
    """The CPU lowering (GELU polynomial, bit-trick exp, unnormalised attention, GEMV row sums) and
    the GPU one (mx.erf, mx.fast.scaled_dot_product_attention, mx.fast.layer_norm), both run on
    the CPU: the same gradients, so the GPU path's VJPs (MLX's own) hold too."""
    folder, _ = grad_checkpoints("bert_mlm")
    model = cbert.load(folder, backend="mlx")
    inputs = _inputs("bert_mlm")
    graph, params, feed = training_graph(model, inputs, _labels(model, inputs))
    results = []
    for cpu in (True, False):
        precision = lowering.Precision(store=mx.float32, gemm=mx.float32, cpu=cpu)
        results.append(MLXGradExecutable(graph, params, precision, mx.Device(mx.cpu))(feed))
    (out_cpu, g_cpu), (out_gpu, g_gpu) = results
    assert out_cpu["loss"] == pytest.approx(float(out_gpu["loss"]), rel=1e-5)
    for k in g_cpu:
        assert_close(np.array(g_cpu[k]), np.array(g_gpu[k]), k, 1e-5)


def test_one_executable_per_thread(grad_checkpoints):
    folder, _ = grad_checkpoints("distil_seq")
    model = cbert.load(folder, backend="mlx")
    inputs = _inputs("distil_seq")
    graph, params, feed = training_graph(model, inputs, _labels(model, inputs))
    want_out, want = model.backend.compile_grad(graph, params)(feed)
    want = {k: np.array(v) for k, v in want.items()}
    results: dict[int, tuple] = {}

    def work(i: int) -> None:
        exe = model.backend.compile_grad(graph, params)
        for _ in range(2):
            out, grads = exe(feed)
        results[i] = (out["loss"], {k: exe.to_host(v) for k, v in grads.items()})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2]
    for loss, grads in results.values():
        assert loss == want_out["loss"]
        for k in want:
            np.testing.assert_array_equal(grads[k], want[k], err_msg=k)


def test_bad_arguments_name_what_is_wrong(grad_checkpoints):
    folder, _ = grad_checkpoints("bert_seq")
    model = cbert.load(folder, backend="mlx")
    inputs = _inputs("bert_seq")
    graph, params, feed = training_graph(model, inputs, _labels(model, inputs))
    exe = model.backend.compile_grad(graph, params)
    with pytest.raises(ValueError, match=r"wrt: 'nope' is not a runtime input"):
        exe(feed, wrt=["nope"])
    with pytest.raises(ValueError, match=r"wrt: 'input_ids' holds int64 values"):
        exe(feed, wrt=["input_ids"])
    with pytest.raises(ValueError, match=r"trainable: 'bert.pooler.dense.weight' is not a parameter"):
        exe(feed, trainable=["bert.pooler.dense.weight"])
    with pytest.raises(ValueError, match=r"inputs: no 'labels'"):
        exe({k: v for k, v in feed.items() if k != "labels"})
    with pytest.raises(ValueError, match=r"the graph has no 'loss' output"):
        model.backend.compile_grad(model.checkpoint.graph, model.checkpoint.params)
    with pytest.raises(ValueError, match=r"params has no 'classifier.weight'"):
        model.backend.compile_grad(graph, {k: v for k, v in params.items() if k != "classifier.weight"})
