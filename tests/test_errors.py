"""Every bad config, checkpoint and input is one clear error naming what is wrong."""

from __future__ import annotations

import json
import mmap
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import cbert
from cbert.checkpoint import load_checkpoint


@pytest.fixture
def ckpt(checkpoints, tmp_path):
    """A private copy of a small BertForPreTraining checkpoint to break."""
    folder, _ = checkpoints("head16_pretrain")
    dst = tmp_path / "ckpt"
    shutil.copytree(folder, dst)
    return dst


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_weights(folder, fn):
    w = load_file(folder / "model.safetensors")
    fn(w)
    save_file(w, folder / "model.safetensors")


# -- config --------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("hidden_act", "gelu_10", "hidden_act = 'gelu_10': supported activations are"),
    ("position_embedding_type", "relative_key", "position_embedding_type = 'relative_key': only 'absolute'"),
    ("is_decoder", True, "is_decoder = True: decoder configurations are not supported"),
    ("add_cross_attention", True, "add_cross_attention = True: cross-attention is not supported"),
    ("model_type", "gpt2", "model_type = 'gpt2': cbert runs"),
    ("num_attention_heads", 5, "hidden_size = 48: not divisible by num_attention_heads = 5"),
    ("architectures", ["BertForMultipleChoice"], "'BertForMultipleChoice' is not supported"),
])
def test_config_the_ir_cannot_run(ckpt, field, value, message):
    _edit_config(ckpt, **{field: value})
    with pytest.raises(cbert.CheckpointError, match="config.json") as e:
        cbert.load(ckpt, backend="numpy")
    assert message in str(e.value)


def test_config_is_forgiving_about_unknown_keys(ckpt):
    _edit_config(ckpt, some_future_field=3, id2label={"0": "A"}, hidden_act="gelu_new")
    model = cbert.load(ckpt, backend="numpy")
    assert model.config.extra["some_future_field"] == 3
    assert model.config.id2label == {0: "A"}
    assert model.config.activation == "gelu_tanh"


def test_missing_or_broken_config(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(cbert.CheckpointError, match=r"config.json: not valid JSON"):
        cbert.load(ckpt, backend="numpy")
    (ckpt / "config.json").unlink()
    with pytest.raises(cbert.CheckpointError, match=r"no config.json"):
        cbert.load(ckpt, backend="numpy")


def test_no_such_folder(tmp_path):
    with pytest.raises(cbert.CheckpointError, match="no such checkpoint folder"):
        cbert.load(tmp_path / "nope", backend="numpy")


# -- weights -------------------------------------------------------------------------------

def test_missing_tensor(ckpt):
    _edit_weights(ckpt, lambda w: w.pop("bert.encoder.layer.1.output.dense.weight"))
    with pytest.raises(cbert.CheckpointError,
                       match=r"model.safetensors: missing tensor encoder.layer.1.output.dense.weight"):
        cbert.load(ckpt, backend="numpy")


def test_unexpected_tensor(ckpt):
    _edit_weights(ckpt, lambda w: w.update({"bert.encoder.layer.9.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(cbert.CheckpointError, match=r"unexpected tensor bert.encoder.layer.9.extra.weight"):
        cbert.load(ckpt, backend="numpy")


def test_misshaped_tensor(ckpt):
    _edit_weights(ckpt, lambda w: w.update({"bert.encoder.layer.0.intermediate.dense.weight":
                                             np.zeros((95, 48), np.float32)}))
    with pytest.raises(cbert.CheckpointError,
                       match=r"tensor 'bert.encoder.layer.0.intermediate.dense.weight' has shape \[95, 48\], "
                             r"expected \[96, 48\]"):
        cbert.load(ckpt, backend="numpy")


def test_config_that_does_not_match_the_tensors(ckpt):
    _edit_config(ckpt, num_hidden_layers=4)
    with pytest.raises(cbert.CheckpointError, match=r"missing tensors encoder.layer.3.*config.json says 4 layers"):
        cbert.load(ckpt, backend="numpy")
    _edit_config(ckpt, num_hidden_layers=3, hidden_size=96, num_attention_heads=3)
    with pytest.raises(cbert.CheckpointError, match=r"has shape \[97, 48\], expected \[97, 96\]"):
        cbert.load(ckpt, backend="numpy")


def test_truncated_file(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(cbert.CheckpointError, match=r"model.safetensors: truncated: tensor '.*' ends at byte"):
        cbert.load(ckpt, backend="numpy")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 a zip file",
                                     b"\x10\x00\x00\x00\x00\x00\x00\x00not json!!!!!!!!"])
def test_not_a_safetensors_file(ckpt, content):
    (ckpt / "model.safetensors").write_bytes(content)
    with pytest.raises(cbert.CheckpointError, match=r"model.safetensors: not a safetensors file"):
        cbert.load(ckpt, backend="numpy")


def test_nan_in_weights(ckpt):
    def poison(w):
        w["bert.pooler.dense.bias"][3] = np.nan
    _edit_weights(ckpt, poison)
    with pytest.raises(cbert.CheckpointError, match=r"'bert.pooler.dense.bias' holds NaN"):
        cbert.load(ckpt, backend="numpy")


def test_no_weights_or_only_pytorch_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(cbert.CheckpointError, match=r"no model.safetensors in this folder"):
        cbert.load(ckpt, backend="numpy")
    (ckpt / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(cbert.CheckpointError, match=r"only PyTorch/TensorFlow weights; convert them"):
        cbert.load(ckpt, backend="numpy")


def test_weights_without_the_bert_prefix_and_in_half_precision(ckpt, checkpoints):
    folder, _ = checkpoints("head16_pretrain")

    def strip_and_halve(w):
        for k in list(w):
            v = w.pop(k)
            w[k.removeprefix("bert.")] = v.astype(np.float16) if v.dtype == np.float32 else v
    _edit_weights(ckpt, strip_and_halve)
    ids = [[5, 6, 7, 8]]
    a = cbert.load(ckpt, backend="numpy").forward(ids)
    b = cbert.load(folder, backend="numpy").forward(ids)
    np.testing.assert_allclose(a.prediction_logits, b.prediction_logits, atol=0.05)


def test_weights_are_memory_mapped_not_copied(checkpoints):
    folder, _ = checkpoints("odd13")
    ck = load_checkpoint(folder)
    w = ck.params["encoder.layer.0.output.dense.weight"]
    base = w
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    assert not w.flags.writeable


# -- inputs --------------------------------------------------------------------------------

@pytest.fixture
def model(checkpoints):
    folder, _ = checkpoints("head16_pretrain")
    return cbert.load(folder, backend="numpy")


@pytest.mark.parametrize("kwargs,message", [
    (dict(input_ids=[[1, 2, 97]]), r"input_ids\[0, 2\] = 97 is outside \[0, 97\) \(vocab_size\)"),
    (dict(input_ids=[[1, -4, 2]]), r"input_ids\[0, 1\] = -4 is outside"),
    (dict(input_ids=[[1.5, 2.0]]), r"input_ids must hold integers; got dtype float64"),
    (dict(input_ids=np.zeros((0, 4), np.int64)), r"input_ids is empty \(shape \[0, 4\]\)"),
    (dict(input_ids=np.zeros((2, 0), np.int64)), r"input_ids is empty"),
    (dict(input_ids=np.zeros((1, 2, 3), np.int64)), r"input_ids must be \[batch, seq\]; got shape \[1, 2, 3\]"),
    (dict(input_ids=np.ones((1, 49), np.int64)), r"seq length 49, more than the model.s maximum of 48"),
    (dict(input_ids=[[1, 2, 3]], attention_mask=[[1, 1]]),
     r"attention_mask has shape \[1, 2\] but input_ids has \[1, 3\]"),
    (dict(input_ids=[[1, 2, 3]], attention_mask=[[1, 2, 1]]), r"attention_mask\[0, 1\] = 2 is outside \[0, 2\)"),
    (dict(input_ids=[[1, 2, 3]], token_type_ids=[[0, 2, 1]]),
     r"token_type_ids\[0, 1\] = 2 is outside \[0, 2\) \(type_vocab_size\)"),
    (dict(input_ids=[[1, 2, 3]], token_type_ids=[[0, 1]]), r"token_type_ids has shape \[1, 2\]"),
    (dict(input_ids=[[1, 2, 3]], position_ids=[[0, 1, 48]]), r"position_ids\[0, 2\] = 48 is outside \[0, 48\)"),
    (dict(input_ids=[[1, 2, 3]], position_ids=[[0, 1]]), r"position_ids has shape \[1, 2\]"),
])
def test_bad_inputs(model, kwargs, message):
    with pytest.raises(cbert.InputError, match=message):
        model.forward(**kwargs)


def test_rows_of_pure_padding_give_finite_outputs(model):
    out = model.forward([[5, 6, 7], [0, 0, 0]], attention_mask=[[1, 1, 1], [0, 0, 0]])
    assert all(np.isfinite(v).all() for v in out.values() if isinstance(v, np.ndarray))


def test_bad_task_arguments(model, checkpoints):
    with pytest.raises(ValueError, match=r"pooling='sum'; choose one of cls, mean, max"):
        model.embed(["x"], pooling="sum")
    with pytest.raises(ValueError, match=r"batch_size=0"):
        model.embed(["x"], batch_size=0)
    with pytest.raises(cbert.InputError, match=r"texts is empty"):
        model.embed([])
    with pytest.raises(cbert.InputError, match=r"texts\[1\] is a int, expected str"):
        model.tokenizer(["a", 3])
    with pytest.raises(cbert.InputError, match=r"text_pair has 1 texts but texts has 2"):
        model.tokenizer(["a", "b"], text_pair=["c"])
    with pytest.raises(cbert.InputError, match=r"no \[MASK\] token"):
        model.fill_mask("nothing to fill")
    with pytest.raises(cbert.InputError, match=r"hidden must be \[batch, seq, 48\]"):
        model.mlm_logits(np.zeros((1, 2, 5)))
    folder, _ = checkpoints("odd13")
    with pytest.raises(ValueError, match=r"has no masked-LM head"):
        cbert.load(folder, backend="numpy").mlm_logits(np.zeros((1, 2, 52)))


def test_bad_load_arguments(checkpoints):
    folder, _ = checkpoints("odd13")
    with pytest.raises(ValueError, match=r"unknown backend='cuda'; choose one of: auto, numpy"):
        cbert.load(folder, backend="cuda")
    with pytest.raises(ValueError, match=r"backend='numpy' does not run dtype='float16'"):
        cbert.load(folder, backend="numpy", dtype="float16")
    with pytest.raises(ValueError, match=r"unknown dtype='int8'"):
        cbert.load(folder, backend="numpy", dtype="int8")
    with pytest.raises(ValueError, match=r"mlm_mode='cpu'; choose one of auto, in_graph, host"):
        cbert.load(folder, backend="numpy", mlm_mode="cpu")
