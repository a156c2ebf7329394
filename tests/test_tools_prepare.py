"""`cbert prepare` through a subprocess: every snapshot layout it reads, and the bad ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from conftest import assert_close, hf_forward, make_inputs, write_vocab
from conftest import run_cli as run

import cbert


def assert_one_line_error(r: subprocess.CompletedProcess, message: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def assert_runs_like(folder, hf_model, cfg: dict) -> None:
    """The prepared folder gives transformers' outputs (numpy reference)."""
    inputs = make_inputs(cfg, 2, 9)
    got = cbert.load(folder, backend="numpy").forward(**inputs)
    want = hf_forward(hf_model, inputs, output_hidden_states=True)
    assert_close(got.last_hidden_state, want.hidden_states[-1].numpy(), "last_hidden_state")
    for k in ("prediction_logits", "logits", "seq_relationship_logits"):
        if k in want:
            assert_close(got[k], want[k].numpy(), k)


@pytest.fixture(scope="module")
def pretrain(checkpoints):
    return checkpoints("head16_pretrain")


CFG = {"vocab_size": 97}


def copy_meta(src, dst) -> None:
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, name), dst / name)


def test_safetensors_snapshot(pretrain, tmp_path):
    folder, model = pretrain
    r = run("prepare", folder, str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert "BertForPreTraining" in r.stdout and "uncased (do_lower_case=True in tokenizer_config.json)" in r.stdout
    assert_runs_like(tmp_path / "out", model, CFG)
    # the tokenizer.json written gives the same ids as the folder's vocab.txt
    text = "The patient denies chest pain"
    a = cbert.load(tmp_path / "out", backend="numpy").tokenizer([text])["input_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = cbert.load(folder, backend="numpy").tokenizer([text])["input_ids"]
    np.testing.assert_array_equal(a, b)


def save_bin(model, folder, shards: int) -> None:
    """pytorch_model.bin as transformers 4 wrote it, or shards with a pytorch_model.bin.index.json."""
    import torch

    folder.mkdir()
    state = model.state_dict()
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    names = list(state)
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("shards", [1, 3])
def test_pytorch_bin_and_shards(pretrain, tmp_path, shards):
    folder, model = pretrain
    src = tmp_path / "src"
    save_bin(model, src, shards)
    copy_meta(folder, src)
    r = run("prepare", str(src), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "pytorch_model" in r.stdout
    assert_runs_like(tmp_path / "out", model, CFG)


def test_sharded_safetensors(pretrain, tmp_path):
    folder, model = pretrain
    src = tmp_path / "src"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(src, safe_serialization=True, max_shard_size="40KB")
    copy_meta(folder, src)
    assert (src / "model.safetensors.index.json").is_file()
    # the loader itself refuses shards and points at prepare
    assert "cbert prepare" in run("info", str(src)).stderr
    r = run("prepare", str(src), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert_runs_like(tmp_path / "out", model, CFG)


def test_old_pytorch_pretrained_bert_layout(tmp_path):
    """Huang's ClinicalBERT: bert_config.json, LayerNorm gamma/beta, a cased vocab.txt, no tokenizer_config."""
    import torch
    import transformers

    torch.manual_seed(1)
    kw = dict(vocab_size=320, hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=40,
              max_position_embeddings=32)
    model = transformers.BertForMaskedLM(transformers.BertConfig(**kw, attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    src = tmp_path / "src"
    src.mkdir()
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in model.state_dict().items()}
    assert any(k.endswith("gamma") for k in state)
    torch.save(state, src / "pytorch_model.bin")
    (src / "bert_config.json").write_text(json.dumps(kw))
    write_vocab(str(src), 100)
    os.remove(src / "tokenizer_config.json")
    words = (src / "vocab.txt").read_text().splitlines()
    words += [f"Word{i}" for i in range(kw["vocab_size"] - len(words))]  # 220 capitalised tokens: a cased vocab
    (src / "vocab.txt").write_text("\n".join(words) + "\n")

    r = run("prepare", str(src), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "TF-ported names renamed" in r.stdout
    assert "tokenizer: cased (no do_lower_case in tokenizer_config.json; vocab.txt has 220 tokens" in r.stdout
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "bert"
    tok = cbert.load(tmp_path / "out", backend="numpy").tokenizer
    assert tok.casing.startswith("cased")
    assert tok(["Word7"])["input_ids"][0, 1] == words.index("Word7")  # not lowercased
    assert_runs_like(tmp_path / "out", model, {"vocab_size": 100})


def test_folder_without_weights(pretrain, tmp_path):
    copy_meta(pretrain[0], tmp_path)
    (tmp_path / "tf_model.h5").write_bytes(b"\0")
    assert_one_line_error(run("prepare", str(tmp_path), str(tmp_path / "out")),
                          "no weights: no model.safetensors, pytorch_model.bin or *.index.json (only tf_model.h5")


def test_corrupt_bin(pretrain, tmp_path):
    copy_meta(pretrain[0], tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    assert_one_line_error(run("prepare", str(tmp_path), str(tmp_path / "out")),
                          "pytorch_model.bin: not a readable PyTorch checkpoint")


def test_bin_without_torch_says_how_to_install(pretrain, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    copy_meta(pretrain[0], src)
    (src / "pytorch_model.bin").write_bytes(b"anything")
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\nclass B:\n    def find_spec(self, name, *a):\n"
        "        if name == 'torch': raise ImportError('blocked')\nsys.meta_path.insert(0, B())\n")
    r = run("prepare", str(src), str(tmp_path / "out"), env={"PYTHONPATH": str(block)})
    assert_one_line_error(r, "reading pytorch_model.bin needs torch")
    assert "pip install torch==2.13.0" in r.stderr


def test_missing_config_and_missing_folder(pretrain, tmp_path):
    shutil.copy(os.path.join(pretrain[0], "model.safetensors"), tmp_path / "model.safetensors")
    assert_one_line_error(run("prepare", str(tmp_path), str(tmp_path / "out")), "no config.json or bert_config.json")
    assert_one_line_error(run("prepare", str(tmp_path / "nope"), str(tmp_path / "out")), "no such snapshot folder")
