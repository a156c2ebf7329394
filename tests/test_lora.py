"""LoRA adapters against the real PEFT: adapters PEFT made run in cbert (merged at load) on every
backend, cbert's LoRA gradients equal PEFT's autograd, and what cbert trains PEFT loads."""

from __future__ import annotations

import json
import warnings

import numpy as np
import peft
import pytest
import torch
import transformers
from conftest import assert_close, write_checkpoint
from safetensors.numpy import load_file, save_file

import cbert
from cbert.adapt.lora import LoraSettings, plan_lora
from cbert.backends import get_backend
from cbert.cli import main
from cbert.errors import InputError
from cbert.families import build_graph
from cbert.heads import Heads
from cbert.losses import with_losses

SHAPE = dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=2, intermediate_size=64, vocab_size=97,
             max_position_embeddings=40)
TEXTS = ["the patient was given pain", "no fever and cough daily"]


def _hf_seq_cls(folder, labels: int = 3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        return transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=labels).eval()


def _peft_adapter(base, out, seed: int, **config):
    """A PEFT LoRA adapter over ``base`` with random non-zero B (a fresh one is all zeros)."""
    pm = peft.get_peft_model(_hf_seq_cls(base), peft.LoraConfig(**config))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
            elif "modules_to_save" in name:
                p.normal_(0, 0.5)
    pm.save_pretrained(out)
    return pm.eval()


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = root / "base"
    write_checkpoint(str(base), "BertModel", SHAPE)
    pm = _peft_adapter(base, root / "adapter", 1, r=4, lora_alpha=12, task_type="SEQ_CLS",
                       target_modules=["query", "value", "dense"])
    return base, root / "adapter", pm


def _batch(folder):
    return cbert.load(folder, backend="numpy").tokenizer(TEXTS)


def _torch_logits(model, batch) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(batch["input_ids"]),
                     attention_mask=torch.tensor(batch["attention_mask"])).logits.numpy()


@pytest.mark.parametrize("backend", ["numpy", "mlx", "wgpu"])
def test_peft_adapter_runs_merged_on_every_backend(base_and_adapter, backend):
    base, adapter, pm = base_and_adapter
    batch = _batch(base)
    model = cbert.load(base, backend=backend, adapter=adapter)
    assert model.checkpoint.architecture == "BertForSequenceClassification"
    got = model.forward(batch["input_ids"], batch["attention_mask"]).logits
    assert_close(got, _torch_logits(pm, batch), f"{backend} logits")


def test_merged_weight_is_base_plus_scaled_BA(tmp_path):
    """rsLoRA and a per-module alpha: W + alpha / sqrt(r) * B A, and PEFT's merge_and_unload agrees."""
    base = tmp_path / "base"
    write_checkpoint(str(base), "BertForSequenceClassification", dict(SHAPE, num_labels=3))
    pm = _peft_adapter(base, tmp_path / "adapter", 2, r=4, lora_alpha=6, use_rslora=True, alpha_pattern={"value": 3},
                       target_modules=["query", "value"])
    lora = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    plain = cbert.load(base, backend="numpy").checkpoint.params
    merged = cbert.load(base, backend="numpy", adapter=tmp_path / "adapter").checkpoint.params
    reference = {k: v.numpy() for k, v in pm.merge_and_unload().state_dict().items()}
    for layer in range(SHAPE["num_hidden_layers"]):
        for module, alpha in (("query", 6), ("value", 3)):
            name = f"encoder.layer.{layer}.attention.self.{module}"
            a = lora[f"base_model.model.bert.{name}.lora_A.weight"]
            b = lora[f"base_model.model.bert.{name}.lora_B.weight"]
            expected = plain[name + ".weight"] + alpha / np.sqrt(4) * (b @ a)
            np.testing.assert_allclose(merged[name + ".weight"], expected, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(merged[name + ".weight"], reference[f"bert.{name}.weight"], rtol=1e-5,
                                       atol=1e-6)
    untouched = "encoder.layer.0.attention.self.key.weight"
    assert np.array_equal(merged[untouched], plain[untouched])


def test_merge_adapter_writes_a_folder_transformers_loads(base_and_adapter, tmp_path, capsys):
    base, adapter, pm = base_and_adapter
    out = tmp_path / "merged"
    assert main(["merge-adapter", str(base), str(adapter), str(out)]) == 0
    assert not (out / "adapter_config.json").exists()
    batch = _batch(base)
    assert_close(_torch_logits(_hf_seq_cls(out), batch), _torch_logits(pm, batch), "merged folder in transformers")
    assert main(["merge-adapter", str(base), str(adapter), str(out)]) == 2  # never over a folder unasked
    assert "--overwrite" in capsys.readouterr().err


def _lora_grads(backend_name, folder, plan_targets, lora_params, batch, labels, save=()):
    """cbert's gradients of the seq-cls loss w.r.t. the adapters, the head and the modules ``save``
    names, the rest of the base frozen."""
    ckpt = cbert.load(folder, backend="numpy").checkpoint
    heads = Heads(seq_cls=3, pooler=True)
    graph = build_graph(ckpt.config, heads)
    plan = plan_lora(LoraSettings(4, 12.0, plan_targets, save), ckpt.config, graph, heads, ())
    train = with_losses(plan.graph(graph), heads, frozenset({"labels"}), "single_label_classification")
    train = train.select({"loss": train.outputs["loss"]})
    exe = get_backend(backend_name).compile_grad(train, {**ckpt.params, **lora_params})
    S = batch["input_ids"].shape[1]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "token_type_ids": np.zeros_like(batch["input_ids"]),
              "position_ids": np.broadcast_to(np.arange(S), batch["input_ids"].shape), "labels": labels}
    outputs, grads = exe({k: inputs[k] for k in train.inputs}, trainable=plan.trainable)
    assert set(grads) == set(plan.trainable)  # no base weight's gradient comes back
    return plan, float(outputs["loss"]), {k: np.asarray(exe.to_host(v)) for k, v in grads.items()}


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_lora_gradients_match_peft_autograd(tmp_path, backend):
    base = tmp_path / "base"
    write_checkpoint(str(base), "BertForSequenceClassification", dict(SHAPE, num_labels=3))
    targets = ("query", "value", "intermediate.dense")
    pm = _peft_adapter(base, tmp_path / "adapter", 3, r=4, lora_alpha=12, target_modules=list(targets),
                       task_type="SEQ_CLS", modules_to_save=["pooler"])  # and the classifier (SEQ_CLS adds it)
    batch, labels = _batch(base), np.array([2, 0])
    out = pm(input_ids=torch.tensor(batch["input_ids"]), attention_mask=torch.tensor(batch["attention_mask"]),
             labels=torch.tensor(labels))
    out.loss.backward()
    torch_grads = {n.replace("base_model.model.", "").replace(".modules_to_save", "").replace(".default", ""):
                   p.grad.numpy() for n, p in pm.named_parameters() if p.grad is not None}
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    lora = {n.removeprefix("base_model.model.").removeprefix("bert."): v for n, v in saved.items()}
    plan, loss, grads = _lora_grads(backend, base, targets, lora, batch, labels, ("pooler",))
    assert abs(loss - out.loss.item()) < 1e-5
    assert len(plan.adapted) == 3 * SHAPE["num_hidden_layers"]
    assert {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight"} <= set(grads)
    for name, g in grads.items():
        hf = plan.hf_names[name]
        assert_close(g, torch_grads[hf], f"{backend} d loss / d {hf}", tol=1e-4)


def _rows(path, n=24):
    words = ["pain", "fever", "cough", "chest", "heart failure", "copd", "mg po", "daily"]
    rows = [{"text": f"the patient was given {words[i % 8]}", "label": "yes" if i % 2 else "no"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lora_training_saves_what_peft_loads(base_and_adapter, tmp_path):
    base = base_and_adapter[0]
    out = tmp_path / "run"
    summary = cbert.train.fit("seq-cls", base, _rows(tmp_path / "train.jsonl"), out, epochs=1, batch_size=8, lr=1e-2,
                              backend="numpy", lora=LoraSettings(4, 16.0, ("query", "value")), log=lambda r: None)
    assert summary["steps"] == 3
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (4, 16.0, ["query", "value"])
    assert config["modules_to_save"] == ["classifier"] and config["task_type"] == "SEQ_CLS"
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight" in saved
    assert any(np.abs(v).max() > 0 for k, v in saved.items() if "lora_B" in k)  # the adapters learned
    # Optimizer state for the adapters and the head only.
    moments = load_file(str(out / "checkpoint-last" / "optimizer.safetensors"))
    assert moments and all("lora_" in k or "classifier" in k for k in moments)
    pm = peft.PeftModel.from_pretrained(_hf_seq_cls(base, 2), out).eval()
    model = cbert.load(base, backend="numpy", adapter=out)
    assert model.config.id2label == {0: "no", 1: "yes"}
    batch = _batch(base)
    assert_close(model.forward(batch["input_ids"], batch["attention_mask"]).logits, _torch_logits(pm, batch),
                 "trained adapter: cbert vs peft")


def test_lora_modules_to_save_trains_the_pooler_as_peft_loads(base_and_adapter, tmp_path):
    """--lora-modules-to-save pooler: the base's pooler trains whole beside the classifier and is saved
    under PEFT's names; "dense" adapts the encoder's dense layers but not the pooler's (saved whole)."""
    base = base_and_adapter[0]
    out = tmp_path / "run"
    cbert.train.fit("seq-cls", base, _rows(tmp_path / "train.jsonl"), out, epochs=1, batch_size=8, lr=1e-2,
                    backend="numpy", lora=LoraSettings(4, 8.0, ("query", "dense"), ("pooler",)), log=lambda r: None)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier", "pooler"]
    saved = load_file(str(out / "adapter_model.safetensors"))
    before = load_file(str(base / "model.safetensors"))
    pooler = {k: v for k, v in saved.items() if ".pooler." in k}
    assert sorted(pooler) == ["base_model.model.bert.pooler.dense.bias", "base_model.model.bert.pooler.dense.weight"]
    assert all(np.abs(v - before[k.replace("base_model.model.bert.", "")]).max() > 0 for k, v in pooler.items())
    assert "base_model.model.bert.encoder.layer.0.output.dense.lora_A.weight" in saved
    moments = load_file(str(out / "checkpoint-last" / "optimizer.safetensors"))
    assert any("pooler" in k for k in moments)
    pm = peft.PeftModel.from_pretrained(_hf_seq_cls(base, 2), out).eval()
    batch = _batch(base)
    got = cbert.load(base, backend="numpy", adapter=out).forward(batch["input_ids"], batch["attention_mask"]).logits
    assert_close(got, _torch_logits(pm, batch), "trained pooler: cbert vs peft")


# -- bad inputs: one line, exit status 2 -------------------------------------------------------------

def test_adapter_for_another_base_is_named(base_and_adapter, tmp_path, capsys):
    _, adapter, _ = base_and_adapter
    other = tmp_path / "other"
    write_checkpoint(str(other), "BertModel", dict(SHAPE, hidden_size=36, intermediate_size=50))
    capsys.readouterr()
    with pytest.raises(InputError, match=r"adapter_model.safetensors: tensor .* has shape .*another base model"):
        cbert.load(other, backend="numpy", adapter=adapter)
    assert main(["merge-adapter", str(other), str(adapter), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another base model" in err and not (tmp_path / "out").exists()


def test_adapter_on_a_module_that_is_no_linear(base_and_adapter, tmp_path):
    base, adapter, _ = base_and_adapter
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    tensors = {"base_model.model.bert.embeddings.LayerNorm.lora_A.weight": np.zeros((4, 48), np.float32),
               "base_model.model.bert.embeddings.LayerNorm.lora_B.weight": np.zeros((48, 4), np.float32)}
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(InputError, match="embeddings.LayerNorm.*not a linear layer"):
        cbert.load(base, backend="numpy", adapter=bad)


def test_lora_targets_that_name_no_linear(base_and_adapter, tmp_path, capsys):
    base = base_and_adapter[0]
    args = ["train", "seq-cls", "--model", str(base), "--train", str(_rows(tmp_path / "t.jsonl")), "--out",
            str(tmp_path / "run"), "--backend", "numpy", "--lora", "4", "--lora-targets", "query,LayerNorm"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'LayerNorm' names no linear layer" in err and "query" in err
    assert not (tmp_path / "run").exists()
    assert main(args[:-4] + ["--lora-alpha", "4"]) == 2
    assert "--lora-alpha needs --lora R" in capsys.readouterr().err
    assert main(args[:-4] + ["--lora", "0"]) == 2
    assert capsys.readouterr().err.endswith("--lora 0: expected a positive rank R\n")
    assert main(args[:-2] + ["--lora-alpha", "nan"]) == 2
    assert capsys.readouterr().err.endswith("--lora-alpha nan: expected a positive number\n")
    assert main(args[:-2] + ["--lora-modules-to-save", "pooler,decoder"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'decoder' names no module" in err and "pooler" in err


FAMILIES = {  # family -> (transformers class, config class, shape): heads PEFT saves whole differ by family
    "distilbert": ("DistilBertModel", "DistilBertConfig", dict(dim=32, hidden_dim=40, n_heads=2, n_layers=2,
                                                               vocab_size=97, max_position_embeddings=40)),
    "roberta": ("RobertaModel", "RobertaConfig", dict(hidden_size=32, intermediate_size=40, num_attention_heads=2,
                                                      num_hidden_layers=2, vocab_size=97, max_position_embeddings=40,
                                                      pad_token_id=1)),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_round_trip_other_families(tmp_path, family):
    """DistilBERT's pre_classifier and RoBERTa's two-layer head train whole; "dense" adapts the encoder's
    dense layers but not the head's (PEFT never adapts a module it saves whole)."""
    cls, config, shape = FAMILIES[family]
    base = tmp_path / "base"
    write_checkpoint(str(base), cls, shape, config_name=config)
    targets = ("query", "value", "dense") if family == "roberta" else None
    out = tmp_path / "run"
    cbert.train.fit("seq-cls", base, _rows(tmp_path / "train.jsonl", 12), out, epochs=1, batch_size=6, lr=2e-2,
                    backend="numpy", lora=LoraSettings(4, 8.0, targets), log=lambda r: None)
    config = json.loads((out / "adapter_config.json").read_text())
    expected = {"distilbert": (["q_lin", "v_lin"], ["classifier", "pre_classifier"]),
                "roberta": (["dense", "query", "value"], ["classifier"])}[family]
    assert (config["target_modules"], config["modules_to_save"]) == expected
    pm = peft.PeftModel.from_pretrained(_hf_seq_cls(base, 2), out).eval()
    batch = _batch(base)
    got = cbert.load(base, backend="numpy", adapter=out).forward(batch["input_ids"], batch["attention_mask"]).logits
    assert_close(got, _torch_logits(pm, batch), f"{family}: cbert vs peft")
