"""The trainer: saved folders load in transformers with every weight and the logits of cbert.load,
heads initialized where the base lacks them, length-grouped batches as transformers groups them,
and fit's runs (learning, resume, NaN, folders) on tiny checkpoints."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
from conftest import write_checkpoint

import cbert
import cbert.cli
import cbert.train
from cbert.checkpoint import load_checkpoint
from cbert.families import build_graph
from cbert.files import staged_folder
from cbert.train.fit import initial_params, length_grouped_batches, task_heads
from cbert.train.save import OutputModel, write_into_new

SMALL = dict(num_hidden_layers=2, vocab_size=97, max_position_embeddings=40)
# name -> (transformers class, config class, kwargs): base models without heads, and one with its own.
BASES = {
    "bert": ("BertModel", "BertConfig", dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, **SMALL)),
    "distilbert": ("DistilBertModel", "DistilBertConfig",
                   dict(dim=48, n_heads=3, n_layers=2, hidden_dim=37, vocab_size=97, max_position_embeddings=40)),
    "roberta": ("RobertaModel", "RobertaConfig",
                dict(hidden_size=64, num_attention_heads=2, intermediate_size=70, type_vocab_size=1, pad_token_id=1,
                     **{**SMALL, "max_position_embeddings": 42})),
    "albert": ("AlbertModel", "AlbertConfig",
               dict(hidden_size=64, embedding_size=24, num_attention_heads=4, intermediate_size=90,
                    num_hidden_layers=4, num_hidden_groups=2, vocab_size=97, max_position_embeddings=40)),
    "bert_pretraining": ("BertForPreTraining", "BertConfig",
                         dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, **SMALL)),
    "bert_untied": ("BertForMaskedLM", "BertConfig",
                    dict(hidden_size=48, num_attention_heads=3, intermediate_size=37, tie_word_embeddings=False,
                         **SMALL)),
}
AUTO = {"mlm": "AutoModelForMaskedLM", "seq-cls": "AutoModelForSequenceClassification",
        "token-cls": "AutoModelForTokenClassification", "qa": "AutoModelForQuestionAnswering"}
LABELS = ("present", "negated", "hypothetical")


@pytest.fixture(scope="session")
def bases(tmp_path_factory):
    cache: dict = {}

    def get(name: str) -> str:
        if name not in cache:
            folder = str(tmp_path_factory.mktemp(f"base_{name}"))
            cls_name, config_name, kwargs = BASES[name]
            write_checkpoint(folder, cls_name, kwargs, config_name=config_name)
            cache[name] = folder
        return cache[name]

    return get


def _inputs(cfg, batch: int = 3, seq: int = 11, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, cfg.vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, seq // 2:] = 0
    ids[mask == 0] = cfg.pad_token_id
    out = {"input_ids": ids, "attention_mask": mask}
    if cfg.type_vocab_size > 1:
        out["token_type_ids"] = (np.arange(seq)[None] >= seq // 3).astype(np.int64).repeat(batch, 0) * mask
    return out


def _save_from(base: str, task: str, out, labels=LABELS, problem=None, seed=0):
    """The folder fit would save for ``task`` from ``base``, its weights perturbed as training would."""
    ckpt = load_checkpoint(base)
    data = types.SimpleNamespace(label_names=list(labels) if labels else None, problem_type=problem)
    heads, problem = task_heads(task, data, ckpt)
    graph = build_graph(ckpt.config, heads)
    params, initialized = initial_params(ckpt.config, graph, ckpt.params, seed)
    rng = np.random.default_rng(seed + 1)
    params = {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in params.items()}
    model = OutputModel(ckpt.path, ckpt.config, task, heads, tuple(labels) if labels else None, problem)
    with staged_folder(out) as tmp:
        write_into_new(tmp, model.files(params))
    return model, initialized


CASES = [("bert", "seq-cls"), ("bert", "token-cls"), ("bert", "qa"), ("bert", "mlm"),
         ("distilbert", "seq-cls"), ("distilbert", "token-cls"), ("roberta", "seq-cls"), ("roberta", "qa"),
         ("roberta", "mlm"), ("albert", "seq-cls"), ("albert", "mlm"), ("bert_pretraining", "mlm"),
         ("bert_pretraining", "seq-cls"), ("bert_untied", "mlm")]


@pytest.mark.parametrize("base,task", CASES)
def test_saved_folder_loads_in_transformers_with_equal_logits(bases, tmp_path, base, task):
    import torch
    import transformers

    labels = LABELS if task == "seq-cls" else ("O", "B-X", "I-X", "B-Y", "I-Y") if task == "token-cls" else None
    model, initialized = _save_from(bases(base), task, tmp_path / "out", labels)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf, info = getattr(transformers, AUTO[task]).from_pretrained(out, output_loading_info=True)
    hf.eval()
    assert type(hf).__name__ == model.architecture
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ours = cbert.load(out, backend="numpy")
    assert ours.checkpoint.architecture == model.architecture
    inputs = _inputs(ours.config)
    with torch.no_grad():
        ref = hf(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    got = ours.forward(**inputs)
    names = ("start_logits", "end_logits") if task == "qa" else ("logits",)
    for name in names:
        np.testing.assert_allclose(got[name], getattr(ref, name).numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
    if labels:
        assert hf.config.id2label == dict(enumerate(labels)) and ours.config.id2label == dict(enumerate(labels))
    # the tokenizer came along, and config.json kept the base's own spelling of its keys
    assert (out / "vocab.txt").read_bytes() == (model.base / "vocab.txt").read_bytes()
    raw = json.loads((out / "config.json").read_text())
    base_raw = json.loads((model.base / "config.json").read_text())
    assert {k for k in base_raw if k not in ("architectures",)} <= set(raw)


def test_missing_head_is_initialized_as_hugging_face_does(bases, tmp_path):
    _, initialized = _save_from(bases("bert"), "seq-cls", tmp_path / "out")
    assert initialized == ["classifier.weight", "classifier.bias"]
    _, initialized = _save_from(bases("distilbert"), "seq-cls", tmp_path / "out2")
    assert set(initialized) == {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight",
                                "classifier.bias"}
    _, initialized = _save_from(bases("bert_pretraining"), "mlm", tmp_path / "out3")
    assert initialized == []  # its masked-LM head is reused; the NSP head is not part of the class saved
    ckpt = load_checkpoint(bases("bert"))
    heads, _ = task_heads("mlm", types.SimpleNamespace(label_names=None, problem_type=None), ckpt)
    graph = build_graph(ckpt.config, heads)
    params, initialized = initial_params(ckpt.config, graph, ckpt.params, seed=3)
    t = "cls.predictions.transform."
    assert set(initialized) == {t + "dense.weight", t + "dense.bias", t + "LayerNorm.weight", t + "LayerNorm.bias",
                                "cls.predictions.bias"}
    assert (params[t + "LayerNorm.weight"] == 1).all()
    assert (params[t + "LayerNorm.bias"] == 0).all() and (params["cls.predictions.bias"] == 0).all()
    w = params["cls.predictions.transform.dense.weight"]
    assert abs(w.std() - 0.02) < 0.004 and abs(w.mean()) < 0.004  # normal(0, initializer_range)
    again, _ = initial_params(ckpt.config, graph, ckpt.params, seed=3)
    assert all((again[k] == v).all() for k, v in params.items())  # the seed decides


def test_length_grouped_batches_equal_transformers(monkeypatch):
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    rng = np.random.default_rng(0)
    for n, batch in ((7, 2), (50, 3), (1000, 4), (33, 16)):
        lengths = rng.integers(1, 100, n).tolist()
        perm = rng.permutation(n)
        monkeypatch.setattr(torch, "randperm", lambda *a, perm=perm, **k: torch.from_numpy(perm.copy()))
        flat = get_length_grouped_indices(lengths, batch)
        ours = length_grouped_batches(lengths, batch, perm)
        assert [i for b in ours for i in b] == list(flat)
        assert all(len(b) == batch for b in ours[:-1]) and 0 < len(ours[-1]) <= batch
        assert lengths[ours[0][0]] == max(lengths)


# -- fit: runs on a tiny checkpoint, reading its data with cbert.train.data --------------------------------

@pytest.fixture
def tiny_data(tmp_path):
    """Assertion-style sentences (negated when they say "denies" or "no"), train and dev files."""
    rng = np.random.default_rng(0)
    words = "the patient was given for pain chest fever cough and with heart failure copd".split()

    def write(name: str, n: int):
        lines = []
        for i in range(n):
            body = list(rng.choice(words, size=int(rng.integers(2, 7))))
            negated = i % 2 == 1
            if negated:
                body.insert(int(rng.integers(0, len(body))), str(rng.choice(["denies", "no"])))
            lines.append(json.dumps({"text": " ".join(body), "label": "negated" if negated else "present"}))
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return tmp_path / name

    return write("train.jsonl", 48), write("dev.jsonl", 24)


FAST = dict(lr=2e-3, batch_size=8, backend="numpy", seed=1)


def test_fit_learns_and_saves_a_folder_transformers_loads(checkpoints, tiny_data, tmp_path):
    import transformers

    base, _ = checkpoints("odd13")  # a BertModel: the classifier is new
    train, dev = tiny_data
    out = tmp_path / "run"
    records: list[dict] = []
    summary = cbert.train.fit("seq-cls", base, train, out, eval_file=dev, epochs=6, warmup_ratio=0.1,
                              weight_decay=0.01, log=records.append, **FAST)
    assert summary["steps"] == 6 * 6 and summary["architecture"] == "BertForSequenceClassification"
    evals = [r for r in records if "eval" in r]
    assert len(evals) == 6
    assert summary["best"]["value"] >= 0.9, [e["eval"]["accuracy"] for e in evals]
    assert evals[0]["eval"]["loss"] > evals[-1]["eval"]["loss"]
    assert records[0]["message"].startswith("initialized classifier.weight, classifier.bias as Hugging Face does")
    steps = [r for r in records if "loss" in r and "eval" not in r]
    assert [r["step"] for r in steps] == list(range(1, 37))
    assert all(k in steps[0] for k in ("lr", "grad_norm", "tokens_per_s", "eta_s", "epoch"))
    assert steps[0]["lr"] == 0.0 and steps[4]["lr"] == pytest.approx(2e-3)  # warm-up (4 steps), then decay
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [r["step"] for r in records]
    # The folder at OUT's top is the best evaluation's model: transformers and cbert agree on it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert hf.config.id2label == {0: "negated", 1: "present"}
    model = cbert.load(out, backend="numpy")
    predicted = [r["label"] for r in model.classify([json.loads(x)["text"] for x in open(dev)])]
    truth = [json.loads(x)["label"] for x in open(dev)]
    assert np.mean([p == t for p, t in zip(predicted, truth)]) == pytest.approx(summary["best"]["value"])


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(checkpoints, tiny_data, tmp_path):
    from safetensors.numpy import load_file

    base, _ = checkpoints("odd13")
    train, dev = tiny_data
    kw = dict(eval_file=dev, epochs=2, grad_accum=2, warmup_ratio=0.2, save_steps=2, **FAST)
    whole: list[dict] = []
    cbert.train.fit("seq-cls", base, train, tmp_path / "whole", log=whole.append, **kw)

    def kill_at_step_5(rec):
        if rec.get("step") == 5 and "loss" in rec:
            raise KeyboardInterrupt  # as a killed process: checkpoint-last is the one of step 4

    with pytest.raises(KeyboardInterrupt):
        cbert.train.fit("seq-cls", base, train, tmp_path / "cut", log=kill_at_step_5, **kw)
    state = json.loads((tmp_path / "cut" / "checkpoint-last" / "trainer_state.json").read_text())
    assert state["step"] == 4
    resumed: list[dict] = []
    cbert.train.fit("seq-cls", base, train, tmp_path / "cut", resume=True, log=resumed.append, **kw)
    assert resumed[0]["message"].startswith("resumed from") and resumed[1]["step"] == 5
    for name in ("model.safetensors", "checkpoint-last/model.safetensors", "checkpoint-last/optimizer.safetensors"):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "cut" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]), (name, k)
    strip = ("tokens_per_s", "eta_s", "message")
    logs = [[{k: v for k, v in json.loads(line).items() if k not in strip}
             for line in (tmp_path / run / "log.jsonl").read_text().splitlines() if "message" not in line]
            for run in ("whole", "cut")]
    assert logs[0] == logs[1]


def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(checkpoints, tiny_data, tmp_path, capsys):
    base, _ = checkpoints("odd13")
    train, _ = tiny_data
    out = tmp_path / "run"
    code = cbert.cli.main(["train", "seq-cls", "--model", base, "--train", str(train), "--out", str(out),
                           "--backend", "numpy", "--lr", "1e30", "--batch-size", "8", "--max-grad-norm", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("cbert train: error: step 2: the training loss is nan; training stopped. Nothing was "
                              "saved yet"), err[-1]
    out2 = tmp_path / "run2"
    with pytest.raises(cbert.InputError, match=r"step 2: .*Kept: .*checkpoint-last \(the state of step 1\)"):
        cbert.train.fit("seq-cls", base, train, out2, lr=1e30, max_grad_norm=0, save_steps=1, log=lambda r: None,
                        **{k: v for k, v in FAST.items() if k != "lr"})
    assert json.loads((out2 / "checkpoint-last" / "trainer_state.json").read_text())["step"] == 1


def test_out_folders_are_never_taken_unasked(checkpoints, tiny_data, tmp_path):
    base, _ = checkpoints("odd13")
    train, _ = tiny_data
    quiet = dict(max_steps=1, log=lambda r: None, **FAST)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(cbert.InputError, match="exists and is not a cbert training run; pass --overwrite"):
        cbert.train.fit("seq-cls", base, train, theirs, **quiet)
    assert (theirs / "notes.txt").read_text() == "keep me"
    with pytest.raises(cbert.InputError, match="not a cbert training run .* nothing to resume"):
        cbert.train.fit("seq-cls", base, train, theirs, resume=True, **quiet)
    run = tmp_path / "run"
    cbert.train.fit("seq-cls", base, train, run, **quiet)
    with pytest.raises(cbert.InputError, match="holds an earlier cbert training run; pass --resume"):
        cbert.train.fit("seq-cls", base, train, run, **quiet)
    with pytest.raises(cbert.InputError, match=r"--resume: lr = 0.1 differs from the run's 0.002"):
        cbert.train.fit("seq-cls", base, train, run, resume=True, **{**quiet, "lr": 0.1})
    cbert.train.fit("seq-cls", base, train, theirs, overwrite=True, **quiet)
    assert not (theirs / "notes.txt").exists() and (theirs / "model.safetensors").is_file()


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_fit_on_mlx_in_half_precision_learns(checkpoints, tiny_data, tmp_path, precision):
    base, _ = checkpoints("odd13")
    train, dev = tiny_data
    records: list[dict] = []
    summary = cbert.train.fit("seq-cls", base, train, tmp_path / "a", eval_file=dev, epochs=8, precision=precision,
                              log=records.append, **{**FAST, "backend": "mlx"})
    assert summary["best"]["value"] >= 0.9, [r["eval"]["accuracy"] for r in records if "eval" in r]
    steps = [r for r in records if "loss" in r and "eval" not in r]
    assert all(np.isfinite(r["loss"]) for r in steps)
    if precision == "float16":  # dynamic loss scaling, logged with every step
        assert steps[0]["loss_scale"] == 2.0 ** 16 and all("skipped" in r for r in steps)
    else:
        assert "loss_scale" not in steps[0]


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_fit_on_mlx_repeats_itself(checkpoints, tiny_data, tmp_path, precision):
    from safetensors.numpy import load_file

    base, _ = checkpoints("odd13")
    train, _ = tiny_data
    for run in ("a", "b"):
        cbert.train.fit("seq-cls", base, train, tmp_path / run, max_steps=3, precision=precision, log=lambda r: None,
                        **{**FAST, "backend": "mlx"})
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the same seed gives the same weights
