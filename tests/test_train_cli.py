"""`cbert train` through the command line: every bad argument is one line and exit 2, before
anything in --out changes."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from test_train_fit import tiny_data  # noqa: F401, F811 (the fixture: tiny seq-cls files and their reader)

from cbert.cli import main


@pytest.fixture(scope="module")
def model(checkpoints):
    return checkpoints("odd13")[0]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "the patient denies chest pain", "label": "negated"}\n')
    return path


def _one_line_error(capsys, argv: list[str], message: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("extra,message", [
    (["--lr", "0"], "lr=0.0: expected a positive learning rate"),
    (["--lr", "nan"], "lr=nan: expected a positive learning rate"),
    (["--epochs", "0"], "epochs=0: expected a positive integer"),
    (["--batch-size", "-1"], "batch_size=-1: expected a positive integer"),
    (["--grad-accum", "0"], "grad_accum=0: expected a positive integer"),
    (["--warmup-ratio", "1.5"], "warmup_ratio=1.5: expected a fraction of the steps in [0, 1]"),
    (["--weight-decay", "-0.1"], "weight_decay=-0.1: expected a non-negative number"),
    (["--max-grad-norm", "-1"], "max_grad_norm=-1.0: expected a non-negative number"),
    (["--max-steps", "0"], "max_steps=0: expected a positive integer"),
    (["--early-stopping", "2"], "early_stopping needs an evaluation file"),
    (["--whole-word-mask"], "whole_word_mask: only the mlm task masks words"),
    (["--backend", "numpy", "--precision", "bfloat16"], "backend='numpy' trains in float32 only"),
])
def test_bad_settings_are_one_line(capsys, model, data, tmp_path, extra, message):
    out = tmp_path / "out"
    _one_line_error(capsys, ["train", "seq-cls", "--model", model, "--train", str(data), "--out", str(out),
                             "--backend", "numpy", *extra], message)
    assert not out.exists()


def test_missing_files_and_folders_are_named(capsys, model, data, tmp_path):
    out = str(tmp_path / "out")
    _one_line_error(capsys, ["train", "seq-cls", "--model", model, "--train", str(tmp_path / "nope.jsonl"),
                             "--out", out], "nope.jsonl: no such file (train_file)")
    _one_line_error(capsys, ["train", "seq-cls", "--model", model, "--train", str(data), "--eval",
                             str(tmp_path / "dev.jsonl"), "--out", out], "dev.jsonl: no such file (eval_file)")
    _one_line_error(capsys, ["train", "seq-cls", "--model", str(tmp_path / "no_model"), "--train", str(data),
                             "--out", out], "no_model: no such checkpoint folder")
    _one_line_error(capsys, ["train", "seq-cls", "--model", model, "--train", str(data), "--out", model,
                             "--backend", "numpy"], "--out is the --model folder")


def test_the_command_is_registered_and_argparse_refuses_unknown_choices():
    r = run_cli("train", "--help")
    assert r.returncode == 0 and "--grad-accum" in r.stdout and "--early-stopping" in r.stdout
    r = run_cli("train", "ner", "--model", "m", "--train", "t", "--out", "o")
    assert r.returncode == 2 and "invalid choice: 'ner'" in r.stderr
    r = run_cli("train", "qa", "--model", "m", "--train", "t", "--out", "o", "--backend", "wgpu")
    assert r.returncode == 2 and "invalid choice: 'wgpu'" in r.stderr


def test_train_runs_and_never_takes_a_folder_unasked(capsys, model, tiny_data, tmp_path):  # noqa: F811
    train, dev = tiny_data
    out = tmp_path / "run"
    argv = ["train", "seq-cls", "--model", model, "--train", str(train), "--eval", str(dev), "--out", str(out),
            "--backend", "numpy", "--batch-size", "8", "--max-steps", "2", "--lr", "1e-3"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["steps"] == 2 and summary["architecture"] == "BertForSequenceClassification"
    assert "initialized classifier.weight, classifier.bias" in captured.err and "eval at step 2" in captured.err
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-last").is_dir()
    _one_line_error(capsys, argv, "holds an earlier cbert training run; pass --resume to continue it")
    assert main([*argv, "--resume"]) == 0  # a finished run resumed: nothing left to do, nothing lost
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    argv[argv.index(str(out))] = str(theirs)
    _one_line_error(capsys, argv, "exists and is not a cbert training run; pass --overwrite")
    assert (theirs / "keep.txt").read_text() == "mine"
