"""Distillation: the student initialized from the teacher's chosen layers (tensor by tensor, and as a
function), the loss terms and their gradients against DistilBERT's torch code and autograd (numpy and
MLX), ``distill`` and ``cbert train distill`` on tiny checkpoints with the teacher on every backend,
and bad students as one line, exit 2."""

# ruff: noqa: E402  (the registry loads MLX's BLAS before anything imports mlx.core)

from __future__ import annotations

from cbert.backends import backend_class

backend_class("mlx")

# isort: split

import numpy as np
import pytest
import torch
from conftest import assert_close, write_checkpoint
from safetensors import safe_open
from test_grads import exact_embedding_grads

import cbert
from cbert.adapt.student import init_student, teacher_layers
from cbert.backends import get_backend
from cbert.backends.numpy.lowering import TABLE
from cbert.backends.numpy.vjp import VJP
from cbert.families import build_graph
from cbert.ir import IGNORE_INDEX, Op
from cbert.tools.parity import scaled_max_abs_error
from cbert.train.distill import TEACHER_HIDDEN, TEACHER_LOGITS, distillation_graph

TINY = dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=4, intermediate_size=37, vocab_size=97,
            max_position_embeddings=40)
LABELS = {0: "negated", 1: "present", 2: "possible"}
TEACHERS = {
    "mlm": ("BertForMaskedLM", TINY),
    "mlm_untied": ("BertForMaskedLM", {**TINY, "tie_word_embeddings": False}),
    "seq_cls": ("BertForSequenceClassification", {**TINY, "id2label": LABELS,
                                                  "label2id": {v: k for k, v in LABELS.items()}}),
    "token_cls": ("BertForTokenClassification", {**TINY, "num_labels": 3}),
}
# BertLayer's tensors -> DistilBERT's TransformerBlock's (transformers' extract_distilbert.py pairs them so)
BERT_TO_DISTILBERT = {"attention.self.query": "attention.q_lin", "attention.self.key": "attention.k_lin",
                      "attention.self.value": "attention.v_lin", "attention.output.dense": "attention.out_lin",
                      "attention.output.LayerNorm": "sa_layer_norm", "intermediate.dense": "ffn.lin1",
                      "output.dense": "ffn.lin2", "output.LayerNorm": "output_layer_norm"}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            folder = str(tmp_path_factory.mktemp(f"teacher_{name}"))
            cls_name, kwargs = TEACHERS[name]
            cache[name] = (folder, write_checkpoint(folder, cls_name, kwargs, seed=3))
        return cache[name]

    return get


def _tensors(folder) -> dict[str, np.ndarray]:
    with safe_open(f"{folder}/model.safetensors", "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# -- the student -------------------------------------------------------------------------------------

def test_teacher_layers_take_every_other_one():
    assert teacher_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert teacher_layers(6, 3) == [0, 2, 4]
    assert teacher_layers(6, 6) == list(range(6))
    assert teacher_layers(6, 4) == [0, 1, 3, 4] and teacher_layers(4, 1) == [0]


@pytest.mark.parametrize("name,family", [("mlm", None), ("mlm", "distilbert"), ("mlm_untied", "distilbert"),
                                         ("seq_cls", None), ("token_cls", "distilbert")])
def test_student_layers_equal_the_teachers_chosen_layers(teachers, tmp_path, name, family):
    import transformers

    folder, _ = teachers(name)
    student = init_student(folder, tmp_path / "student", 2, family=family)
    assert student.layers == [0, 2]
    t, s = _tensors(folder), _tensors(tmp_path / "student")
    compared = set()

    def same(s_name: str, want: np.ndarray) -> None:
        np.testing.assert_array_equal(s[s_name], want, err_msg=s_name)
        compared.add(s_name)

    for j, i in enumerate(student.layers):
        for key in (k for k in t if k.startswith(f"bert.encoder.layer.{i}.")):
            part = key[len(f"bert.encoder.layer.{i}."):]
            if family is None:
                same(f"bert.encoder.layer.{j}.{part}", t[key])
            else:
                stem, end = part.rsplit(".", 1)
                same(f"distilbert.transformer.layer.{j}.{BERT_TO_DISTILBERT[stem]}.{end}", t[key])
    prefix = "bert." if family is None else "distilbert."
    for key in ("word_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias"):
        same(f"{prefix}embeddings.{key}", t[f"bert.embeddings.{key}"])
    position = t["bert.embeddings.position_embeddings.weight"]
    if family is None:
        same("bert.embeddings.position_embeddings.weight", position)
        same("bert.embeddings.token_type_embeddings.weight", t["bert.embeddings.token_type_embeddings.weight"])
    else:  # no token types: row 0 is in the positions
        same("distilbert.embeddings.position_embeddings.weight",
             position + t["bert.embeddings.token_type_embeddings.weight"][0])
    heads = {k: v for k, v in t.items() if not k.startswith("bert.") or k.startswith("bert.pooler.")}
    if family is None:
        for key, value in heads.items():
            same(key, value)
    elif name.startswith("mlm"):
        for ours, theirs in (("vocab_transform", "cls.predictions.transform.dense"),
                             ("vocab_layer_norm", "cls.predictions.transform.LayerNorm")):
            same(f"{ours}.weight", t[f"{theirs}.weight"])
            same(f"{ours}.bias", t[f"{theirs}.bias"])
        # the bias BertForMaskedLM's forward adds: an untied decoder's own, where the file has one
        same("vocab_projector.bias", t.get("cls.predictions.decoder.bias", t["cls.predictions.bias"]))
        if name == "mlm_untied":
            same("vocab_projector.weight", t["cls.predictions.decoder.weight"])
    else:
        same("classifier.weight", t["classifier.weight"])
        same("classifier.bias", t["classifier.bias"])
    assert compared == set(s), sorted(set(s) - compared)  # nothing but the teacher's tensors
    # A folder transformers loads whole, with cbert's numbers
    auto = {"mlm": "AutoModelForMaskedLM", "seq_cls": "AutoModelForSequenceClassification",
            "token_cls": "AutoModelForTokenClassification"}[name.split("_untied")[0]]
    hf, info = getattr(transformers, auto).from_pretrained(tmp_path / "student", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = np.array([[2, 7, 8, 9, 10, 3], [2, 11, 12, 3, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    with torch.no_grad():
        want = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    got = cbert.load(tmp_path / "student", backend="numpy").forward(ids, mask).logits
    assert_close(got, want, f"{name} student logits")


@pytest.mark.parametrize("family", [None, "distilbert"])
def test_a_student_of_the_first_layers_computes_the_teachers_hidden_state(teachers, tmp_path, family):
    """Layers [0, 1] of the teacher: the student's output is the teacher's hidden_states[2] (one segment)."""
    import transformers

    folder, teacher = teachers("mlm")
    init_student(folder, tmp_path / "s", [0, 1], family=family)
    ids = torch.tensor([[2, 7, 8, 9, 10, 3]])
    with torch.no_grad():
        want = teacher(ids, output_hidden_states=True).hidden_states[2]
        got = transformers.AutoModel.from_pretrained(tmp_path / "s")(ids).last_hidden_state
    assert_close(got.numpy(), want.numpy(), "the student's last hidden state")


def test_a_student_of_a_student_family_keeps_its_classifier_layout(teachers, tmp_path):
    """BERT's classifier reads the pooler; DistilBERT's pre_classifier is initialized as Hugging Face does."""
    folder, _ = teachers("seq_cls")
    student = init_student(folder, tmp_path / "s", 2, family="distilbert")
    assert sorted(student.initialized) == ["classifier.bias", "classifier.weight", "pre_classifier.bias",
                                           "pre_classifier.weight"]
    cfg = cbert.load(tmp_path / "s", backend="numpy").config
    assert cfg.model_type == "distilbert" and cfg.num_hidden_layers == 2 and cfg.id2label == LABELS


# -- the loss terms against DistilBERT's code ----------------------------------------------------------

def _distiller_terms(s_logits, t_logits, s_hidden, t_hidden, mask, temperature):
    """distiller.py's loss_ce and loss_cos (transformers' examples/research_projects/distillation)."""
    m = mask.unsqueeze(-1).expand_as(s_logits).bool()
    s_slct = torch.masked_select(s_logits, m).view(-1, s_logits.size(-1))
    t_slct = torch.masked_select(t_logits, m).view(-1, s_logits.size(-1))
    loss_ce = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.nn.functional.log_softmax(s_slct / temperature, dim=-1),
        torch.nn.functional.softmax(t_slct / temperature, dim=-1)) * temperature ** 2
    m = mask.unsqueeze(-1).expand_as(s_hidden).bool()
    s_h = torch.masked_select(s_hidden, m).view(-1, s_hidden.size(-1))
    t_h = torch.masked_select(t_hidden, m).view(-1, s_hidden.size(-1))
    loss_cos = torch.nn.CosineEmbeddingLoss(reduction="mean")(s_h, t_h, s_h.new(s_h.size(0)).fill_(1))
    return loss_ce, loss_cos


def _term_inputs():
    rng = np.random.default_rng(5)
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    return (3 * rng.standard_normal((3, 5, 11)).astype(np.float32), 3 * rng.standard_normal((3, 5, 11)).astype(
        np.float32), rng.standard_normal((3, 5, 8)).astype(np.float32), rng.standard_normal((3, 5, 8)).astype(
        np.float32), mask)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_terms_and_gradients_equal_the_distillers(temperature):
    s_logits, t_logits, s_hidden, t_hidden, mask = _term_inputs()
    ts = [torch.tensor(a, requires_grad=True) for a in (s_logits, t_logits, s_hidden, t_hidden)]
    loss_ce, loss_cos = _distiller_terms(*ts, torch.tensor(mask), temperature)
    (loss_ce + loss_cos).backward()
    ce = TABLE[Op.KL_DIV](s_logits, t_logits, mask, temperature=temperature) * temperature ** 2
    cos = TABLE[Op.COSINE](s_hidden, t_hidden, mask)
    assert float(ce) == pytest.approx(loss_ce.item(), rel=1e-5)
    assert float(cos) == pytest.approx(loss_cos.item(), rel=1e-5)
    one = np.float32(1.0)
    d_ce = VJP[Op.KL_DIV](one * temperature ** 2, (s_logits, t_logits, mask), ce, temperature=temperature)
    d_cos = VJP[Op.COSINE](one, (s_hidden, t_hidden, mask), cos)
    for got, want, what in ((d_ce[0], ts[0], "student logits"), (d_ce[1], ts[1], "teacher logits"),
                            (d_cos[0], ts[2], "student hidden"), (d_cos[1], ts[3], "teacher hidden")):
        assert_close(got, want.grad.numpy(), f"d loss / d {what}", 1e-5)
    assert d_ce[2] is None and d_cos[2] is None


def test_mlx_terms_and_autodiff_equal_the_reference():
    import mlx.core as mx

    from cbert.backends.mlx import lowering
    from cbert.backends.mlx.lowering import Precision

    p = Precision(mx.float32, mx.float32, cpu=True)
    s_logits, t_logits, s_hidden, t_hidden, mask = _term_inputs()
    for op, (x, y), attrs in ((Op.KL_DIV, (s_logits, t_logits), dict(temperature=2.0)),
                              (Op.COSINE, (s_hidden, t_hidden), {})):
        for m in (mask, None):
            extra = () if m is None else (m,)
            want = TABLE[op](x, y, *extra, **attrs)

            def f(a, b, op=op, attrs=attrs, extra=extra):
                return lowering.TABLE[op](p, a, b, *[mx.array(e) for e in extra], **attrs)

            with mx.stream(mx.cpu):
                got = f(mx.array(x), mx.array(y))
                grads = mx.grad(f, argnums=(0, 1))(mx.array(x), mx.array(y))
            assert float(got) == pytest.approx(float(want), rel=1e-5), op
            for g, w in zip(grads, VJP[op](np.float32(1), (x, y, *extra), want, **attrs)):
                assert_close(np.array(g), w, f"{op.name} gradient (mask {m is not None})", 1e-5)


# -- the whole distillation graph against torch autograd ----------------------------------------------

def _torch_distill_loss(student, teacher_out, ids, mask, labels, T, A, B, C):
    out = student(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
    loss_ce, loss_cos = _distiller_terms(out.logits, torch.from_numpy(teacher_out["logits"]),
                                         out.hidden_states[-1], torch.from_numpy(teacher_out["hidden"]),
                                         torch.from_numpy(mask), T)
    loss_mlm = torch.nn.CrossEntropyLoss()(out.logits.view(-1, out.logits.size(-1)), torch.from_numpy(labels).view(-1))
    return A * loss_ce + B * loss_mlm + C * loss_cos


def test_distillation_graph_loss_and_gradients_equal_torch_autograd(teachers, tmp_path):
    """On the numpy reference (MLX differentiates the same lowerings, each held to the reference above)."""
    import transformers

    folder, _ = teachers("mlm")
    init_student(folder, tmp_path / "s", 2, family="distilbert")
    teacher = cbert.load(folder, backend="numpy")
    student = cbert.load(tmp_path / "s", backend="numpy")
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 97, (3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:], mask[2, 3:] = 0, 0
    ids[mask == 0] = 0
    labels = np.where(rng.random(ids.shape) < 0.3, ids, IGNORE_INDEX)
    labels[0, 1] = ids[0, 1]
    ids[labels != IGNORE_INDEX] = 4  # [MASK]
    t_out = teacher.forward(ids, mask)
    teacher_out = {"logits": t_out.logits, "hidden": t_out.last_hidden_state}
    T, A, B, C = 2.0, 5.0, 2.0, 1.0
    ckpt = student.checkpoint
    graph = distillation_graph(build_graph(student.config, ckpt.heads), ckpt.heads, "mlm", None, True, temperature=T,
                               alpha_ce=A, alpha_mlm=B, alpha_cos=C).select({"loss": "loss"})
    exe = get_backend("numpy").compile_grad(graph, ckpt.params_for(graph))
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": np.broadcast_to(np.arange(9), ids.shape),
            "labels": labels, TEACHER_LOGITS: teacher_out["logits"], TEACHER_HIDDEN: teacher_out["hidden"]}
    outputs, grads = exe({k: feed[k] for k in graph.inputs})

    hf = transformers.DistilBertForMaskedLM.from_pretrained(tmp_path / "s")
    exact_embedding_grads(hf)
    want = _torch_distill_loss(hf, teacher_out, ids, mask, labels, T, A, B, C)  # loss_ce holds T^2
    want.backward()
    assert float(outputs["loss"]) == pytest.approx(want.item(), rel=1e-5)
    torch_grads = {n: p.grad for n, p in hf.named_parameters()}
    for name, g in grads.items():
        ref = torch_grads.get("distilbert." + name, torch_grads.get(name))
        err = scaled_max_abs_error(exe.to_host(g), ref.numpy())
        assert err <= 1e-4, f"d loss / d {name}: scaled max abs error {err:.3g}"
