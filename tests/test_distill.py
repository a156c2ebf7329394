"""Distillation: the student initialized from the teacher's chosen layers (tensor by tensor, and as a
function), the loss terms and their gradients against DistilBERT's torch code and autograd (numpy and
MLX), ``distill`` and ``cbert train distill`` on tiny checkpoints with the teacher on every backend,
and bad students as one line, exit 2."""

# ruff: noqa: E402  (the registry loads MLX's BLAS before anything imports mlx.core)

from __future__ import annotations

from cbert.backends import backend_class

backend_class("mlx")

# isort: split

import json

import numpy as np
import pytest
import torch
from conftest import assert_close, write_checkpoint
from safetensors import safe_open
from test_grads import exact_embedding_grads
from test_train_fit import tiny_data  # noqa: F401 (the fixture: tiny seq-cls train and dev files)

import cbert
from cbert.adapt.student import init_student, teacher_layers
from cbert.backends import get_backend
from cbert.backends.numpy.lowering import TABLE
from cbert.backends.numpy.vjp import VJP
from cbert.cli import main
from cbert.families import build_graph
from cbert.ir import IGNORE_INDEX, Op
from cbert.tools.parity import scaled_max_abs_error
from cbert.train.distill import TEACHER_HIDDEN, TEACHER_LOGITS, distill, distillation_graph

TINY = dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=4, intermediate_size=37, vocab_size=97,
            max_position_embeddings=40)
LABELS = {0: "negated", 1: "present", 2: "possible"}
TEACHERS = {
    "mlm": ("BertForMaskedLM", TINY),
    "mlm_untied": ("BertForMaskedLM", {**TINY, "tie_word_embeddings": False}),
    "seq_cls": ("BertForSequenceClassification", {**TINY, "id2label": LABELS,
                                                  "label2id": {v: k for k, v in LABELS.items()}}),
    "token_cls": ("BertForTokenClassification", {**TINY, "id2label": {0: "O", 1: "B-PROB", 2: "I-PROB"},
                                                  "label2id": {"O": 0, "B-PROB": 1, "I-PROB": 2}}),
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
            model = write_checkpoint(folder, cls_name, kwargs, seed=3)
            if name in ("seq_cls", "token_cls"):  # confident (random init gives near-uniform probabilities)
                with torch.no_grad():
                    model.classifier.weight.mul_(40.0)
                model.save_pretrained(folder, safe_serialization=True)
            cache[name] = (folder, model)
        return cache[name]

    return get


def _tensors(folder) -> dict[str, np.ndarray]:
    with safe_open(f"{folder}/model.safetensors", "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# -- the student -------------------------------------------------------------------------------------

def test_teacher_layers_take_every_other_one_and_the_last():
    assert teacher_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # extract_distilbert.py's
    assert teacher_layers(6, 3) == [0, 3, 5] and teacher_layers(4, 2) == [0, 3]
    assert teacher_layers(6, 6) == list(range(6))
    assert teacher_layers(6, 4) == [0, 2, 3, 5] and teacher_layers(4, 1) == [0]


@pytest.mark.parametrize("name,family", [("mlm", None), ("mlm", "distilbert"), ("mlm_untied", "distilbert"),
                                         ("seq_cls", None), ("token_cls", "distilbert")])
def test_student_layers_equal_the_teachers_chosen_layers(teachers, tmp_path, name, family):
    import transformers

    folder, _ = teachers(name)
    student = init_student(folder, tmp_path / "student", 2, family=family)
    assert student.layers == [0, 3]
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


@pytest.mark.parametrize("config_name,cls_name,kwargs", [
    ("RobertaConfig", "RobertaForMaskedLM", dict(hidden_size=64, num_attention_heads=2, intermediate_size=70,
                                                type_vocab_size=1, pad_token_id=1, num_hidden_layers=4, vocab_size=97,
                                                max_position_embeddings=42)),
    # ALBERT's layers share their group's weights: the student keeps every weight and runs fewer layers
    ("AlbertConfig", "AlbertForMaskedLM", dict(hidden_size=64, embedding_size=24, num_attention_heads=4,
                                              intermediate_size=90, num_hidden_layers=4, num_hidden_groups=2,
                                              vocab_size=97, max_position_embeddings=40)),
])
def test_students_of_other_families_load_in_transformers(tmp_path, config_name, cls_name, kwargs):
    import transformers

    teacher = tmp_path / "teacher"
    write_checkpoint(str(teacher), cls_name, kwargs, config_name=config_name)
    init_student(teacher, tmp_path / "s", 2)
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "s", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf.config.num_hidden_layers == 2
    ids = np.array([[0, 7, 8, 9, 10, 2]])
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    assert_close(cbert.load(tmp_path / "s", backend="numpy").forward(ids).logits, want, f"{cls_name} student")
    if config_name == "RobertaConfig":
        t, s = _tensors(teacher), _tensors(tmp_path / "s")
        np.testing.assert_array_equal(s["roberta.encoder.layer.1.output.dense.weight"],
                                      t["roberta.encoder.layer.3.output.dense.weight"])


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


# -- distill: runs on tiny checkpoints -------------------------------------------------------------------

FAST = dict(lr=2e-3, batch_size=8, backend="numpy", seed=1, log=lambda record: None)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _mean_kl(teacher: str, student, texts: list[str], temperature: float = 1.0) -> float:
    """The mean KL(teacher || student) of the classifiers' probabilities over ``texts``."""
    t, s = cbert.load(teacher, backend="numpy"), cbert.load(student, backend="numpy")
    batch = t.tokenizer(texts)
    zt = t.forward(**batch).logits / temperature
    zs = s.forward(batch["input_ids"], batch["attention_mask"]).logits / temperature
    log_p = zt - np.log(np.exp(zt - zt.max(-1, keepdims=True)).sum(-1, keepdims=True)) - zt.max(-1, keepdims=True)
    log_q = zs - np.log(np.exp(zs - zs.max(-1, keepdims=True)).sum(-1, keepdims=True)) - zs.max(-1, keepdims=True)
    return float((np.exp(log_p) * (log_p - log_q)).sum(-1).mean())


def test_distill_brings_a_classifier_student_to_its_teacher(teachers, tiny_data, tmp_path):  # noqa: F811
    import transformers

    folder, _ = teachers("seq_cls")
    train, dev = tiny_data
    texts = [json.loads(line)["text"] for line in train.read_text().splitlines()]
    runs = {}
    for cached in (False, True):
        out = tmp_path / f"run_cached{cached}"
        summary = distill(folder, train, out, student_layers=2, student_family="distilbert", eval_file=dev,
                          epochs=4, alpha_mlm=0.0, cache_teacher=cached, **FAST)
        assert summary["architecture"] == "DistilBertForSequenceClassification" and summary["steps"] == 24
        runs[cached] = [r["loss"] for r in _log(out) if "loss" in r]
    # The cache holds what the teacher computes (on batches of other lengths: equal to float32 rounding)
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)
    out = tmp_path / "run_cachedTrue"
    assert (out / "teacher-cache" / "meta.json").is_file() and (out / "student-init" / "config.json").is_file()
    before, after = _mean_kl(folder, out / "student-init", texts), _mean_kl(folder, out, texts)
    assert after < 0.5 * before, (before, after)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert hf.config.id2label == LABELS and hf.config.n_layers == 2
    batch = cbert.load(out, backend="numpy").tokenizer(texts[:4])
    with torch.no_grad():
        want = hf(torch.from_numpy(batch["input_ids"]), attention_mask=torch.from_numpy(batch["attention_mask"]))
    got = cbert.load(out, backend="numpy").forward(batch["input_ids"], batch["attention_mask"]).logits
    assert_close(got, want.logits.numpy(), "the distilled student's logits")


def test_a_token_classifier_teacher_distills_into_a_token_classifier(teachers, tmp_path):
    """Labeled token data (tokens + tags): a DistilBERT token classifier nearer its teacher, per token,
    the same losses from the cache (per-token rows), and a folder transformers loads with equal logits."""
    import transformers

    folder, _ = teachers("token_cls")
    words = "the patient was given lasix for chest pain fever cough and heart failure".split()
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(32):
        tokens = list(rng.choice(words, size=int(rng.integers(3, 8))))
        rows.append({"tokens": tokens, "tags": ["B-PROB" if w in ("pain", "fever", "cough") else "O" for w in tokens]})
    train = tmp_path / "tokens.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [" ".join(r["tokens"]) for r in rows]

    def token_kl(student) -> float:  # mean KL(teacher || student) over the real tokens
        t, s = cbert.load(folder, backend="numpy"), cbert.load(student, backend="numpy")
        batch = t.tokenizer(texts)
        zt, zs = t.forward(**batch).logits, s.forward(batch["input_ids"], batch["attention_mask"]).logits
        log_p, log_q = (z - z.max(-1, keepdims=True) for z in (zt, zs))
        log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
        log_q = log_q - np.log(np.exp(log_q).sum(-1, keepdims=True))
        kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
        return float(kl[batch["attention_mask"] == 1].mean())

    runs = {}
    for cached in (False, True):
        out = tmp_path / f"run_cached{cached}"
        summary = distill(folder, train, out, student_layers=2, student_family="distilbert", epochs=6,
                          cache_teacher=cached, **FAST)
        assert summary["architecture"] == "DistilBertForTokenClassification" and summary["steps"] == 24
        runs[cached] = [r["loss"] for r in _log(out) if "loss" in r]
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)
    before, after = token_kl(out / "student-init"), token_kl(out)
    assert after < 0.5 * before, (before, after)
    hf, info = transformers.AutoModelForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and hf.config.n_layers == 2, info
    batch = cbert.load(out, backend="numpy").tokenizer(texts[:4])
    with torch.no_grad():
        want = hf(torch.from_numpy(batch["input_ids"]), attention_mask=torch.from_numpy(batch["attention_mask"]))
    got = cbert.load(out, backend="numpy").forward(batch["input_ids"], batch["attention_mask"]).logits
    assert_close(got, want.logits.numpy(), "the distilled token classifier's logits")


def test_the_teacher_runs_on_every_backend_with_the_same_targets(teachers, tiny_data, tmp_path):  # noqa: F811
    """One step with the teacher on numpy, MLX and wgpu: the same loss (the student trains on numpy)."""
    folder, _ = teachers("seq_cls")
    train, _ = tiny_data
    first = {}
    for backend in ("numpy", "mlx", "wgpu"):
        out = tmp_path / backend
        distill(folder, train, out, student_layers=1, teacher_backend=backend, max_steps=1, **FAST)
        first[backend] = _log(out)[-2]["loss"]
    assert first["mlx"] == pytest.approx(first["numpy"], rel=1e-5)
    assert first["wgpu"] == pytest.approx(first["numpy"], rel=1e-5)


def test_masked_lm_distillation_into_distilbert_and_from_unlabeled_text(teachers, tmp_path):
    folder, _ = teachers("mlm")
    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(["the patient denies chest pain and fever", "given iv lasix for heart failure",
                                "copd admitted with cough", "no pain on discharge"] * 4) + "\n")
    out = tmp_path / "mlm"
    summary = distill(folder, notes, out, student_family="distilbert", eval_file=notes, epochs=2, **FAST)
    assert summary["architecture"] == "DistilBertForMaskedLM" and np.isfinite(summary["metrics"]["perplexity"])
    settings = json.loads((out / "cbert-run.json").read_text())["settings"]
    assert settings["student_layers"] == [0, 3] and settings["temperature"] == 2.0 and settings["alpha_ce"] == 5.0
    assert cbert.load(out, backend="numpy").config.num_hidden_layers == 2
    # A classifier teacher labels plain texts: no labels, no hard term, the soft targets alone
    folder, _ = teachers("token_cls")
    out = tmp_path / "unlabeled"
    distill(folder, notes, out, student_layers=[0, 3], max_steps=2, **FAST)
    messages = [r["message"] for r in _log(out) if "message" in r]
    assert any("has no labels: the loss has no hard term" in m for m in messages), messages


# -- the command line and bad inputs ------------------------------------------------------------------

def _one_line_error(capsys, argv: list[str], message: str) -> None:
    capsys.readouterr()  # what the fixtures printed (transformers' progress bars)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_cbert_train_distill_runs(capsys, teachers, tiny_data, tmp_path):  # noqa: F811
    folder, _ = teachers("seq_cls")
    train, dev = tiny_data
    out = tmp_path / "run"
    code = main(["train", "distill", "--teacher", folder, "--train", str(train), "--eval", str(dev), "--out", str(out),
                 "--student-layers", "0,2", "--temperature", "3", "--alpha-cos", "0", "--cache-teacher",
                 "--backend", "numpy", "--epochs", "1", "--batch-size", "8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["architecture"] == "BertForSequenceClassification" and "accuracy" in summary["metrics"]
    assert "teacher layers [0, 2]" in captured.err
    settings = json.loads((out / "cbert-run.json").read_text())["settings"]
    assert settings["temperature"] == 3.0 and settings["alpha_cos"] == 0.0 and settings["cache_teacher"]
    # resuming with another loss is refused, naming the setting
    _one_line_error(capsys, ["train", "distill", "--teacher", folder, "--train", str(train), "--out", str(out),
                             "--student-layers", "0,2", "--temperature", "2", "--alpha-cos", "0", "--resume"],
                    "--resume: temperature = 2.0 differs from the run's 3.0")


@pytest.fixture(scope="module")
def strangers(tmp_path_factory):
    """A wider BERT and one with another vocabulary, as would-be students of the tiny teachers."""
    wide = str(tmp_path_factory.mktemp("wide"))
    write_checkpoint(wide, "BertForMaskedLM", {**TINY, "hidden_size": 60, "num_attention_heads": 3,
                                               "num_hidden_layers": 1})
    other = str(tmp_path_factory.mktemp("other_vocab"))
    write_checkpoint(other, "BertForMaskedLM", {**TINY, "num_hidden_layers": 1})
    words = (other + "/vocab.txt")
    lines = open(words).read().splitlines()
    lines[20], lines[21] = lines[21], lines[20]  # the same size, two tokens swapped
    open(words, "w").write("\n".join(lines) + "\n")
    return wide, other


@pytest.mark.parametrize("extra,message", [
    (["--student", "{wide}"], "the student is wider than its teacher (hidden_size 60 > 48"),
    (["--student", "{other}"], "token id 20 is"),
    (["--student-layers", "5"], "student_layers=5: expected 1 to 4"),
    (["--student-layers", "0,9"], "student_layers=[0, 9]: expected a number of layers (1 to 4) or a list"),
    (["--student", "{wide}", "--student-layers", "2"], "student_dir and student_layers: give one"),
    (["--temperature", "0"], "temperature=0.0: expected a positive number"),
    (["--alpha-ce", "-1"], "alpha_ce=-1.0: expected a non-negative weight"),
    (["--alpha-ce", "0", "--alpha-mlm", "0", "--alpha-cos", "0"], "alpha_ce, alpha_mlm and alpha_cos are all 0"),
    (["--cache-teacher"], "cache_teacher: masked-LM batches are masked anew"),
    (["--model", "{wide}"], "--model is for the other tasks; give --teacher"),
    (["--eval", "{notes}"], None),  # a masked-LM teacher evaluates on text: not an error
])
def test_bad_students_and_settings_are_one_line(capsys, teachers, strangers, tmp_path, extra, message):
    folder, _ = teachers("mlm")
    notes = tmp_path / "notes.txt"
    notes.write_text("the patient denies chest pain\n")
    wide, other = strangers
    extra = [e.format(wide=wide, other=other, notes=notes) for e in extra]
    out = tmp_path / "out"
    argv = ["train", "distill", "--teacher", folder, "--train", str(notes), "--out", str(out), "--backend", "numpy",
            "--max-steps", "1", *extra]
    if message is None:
        assert main(argv) == 0, capsys.readouterr().err
        return
    _one_line_error(capsys, argv, message)
    assert not out.exists()


def test_distill_options_belong_to_distill(capsys, teachers, tmp_path):
    folder, _ = teachers("seq_cls")
    _one_line_error(capsys, ["train", "seq-cls", "--model", folder, "--train", "t.jsonl", "--out", str(tmp_path / "o"),
                             "--teacher", folder], "--teacher is an option of cbert train distill")
    _one_line_error(capsys, ["train", "seq-cls", "--train", "t.jsonl", "--out", str(tmp_path / "o")],
                    "cbert train seq-cls: --model DIR is required")
    _one_line_error(capsys, ["train", "distill", "--train", "t.jsonl", "--out", str(tmp_path / "o")],
                    "--teacher DIR is required")
    _one_line_error(capsys, ["train", "distill", "--teacher", folder, "--train", "t.txt", "--eval", "t.txt",
                             "--out", str(tmp_path / "o")], "no such file")


# -- the example: a distilled MiniLM on the assertion data ---------------------------------------------

def test_distill_assertion_example_runs_on_a_slice(tmp_path):
    """examples/distill_assertion.py --quick: the real MiniLM teacher fine-tuned and distilled on a small
    slice; its figures are reported (accuracy and speed are the full run's, in the README, not asserted)."""
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "distill_assertion.py"
    figures = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, str(example), "--quick", "--json", str(figures)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(figures.read_text())
    assert result["teacher_layers"] == 6 and result["student_layers"] == 3
    assert result["student_from_teacher_layers"] == [0, 3, 5] and result["train_rows"] == 48
    assert 0 <= result["student_accuracy"] <= 1 and 0 <= result["teacher_accuracy"] <= 1
    assert result["speed"]["sentences"] == 16 and result["speed"]["ratio"] > 0
    assert "student: 3 layers (the teacher's [0, 3, 5])" in r.stdout and "x faster" in r.stdout
