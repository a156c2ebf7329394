"""The CLI's one error path: expected failures are one line and exit 2, anything else an
internal error with its traceback saved to a file; `--out` is exactly the file written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli as run

import cbert.cli.tasks
from cbert.cli import main


@pytest.fixture(scope="module")
def model(checkpoints):
    return checkpoints("odd13")[0]


def _one_line_error(r, message: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("arg,message", [
    ("notes_typo.txt", "notes_typo.txt: no such file"),
    ("missing/notes", "missing/notes: no such file"),
    ("/dev/null", "/dev/null: not a regular file"),
    (".", ".: not a regular file"),
])
def test_a_path_that_is_not_a_text_file_is_an_error(model, arg, message):
    """Regression: `cbert embed notes_typo.txt` embedded the literal string "notes_typo.txt"."""
    _one_line_error(run("embed", "--model", model, "--backend", "numpy", arg), message)


def test_texts_with_slashes_and_spaces_are_still_texts(model):
    r = run("embed", "--model", model, "--backend", "numpy", "BP 132/84, HR 80", "lasix 40 mg/day")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2


def test_out_is_the_exact_file_and_never_replaced_unasked(model, tmp_path):
    out = tmp_path / "vectors"  # no .npy suffix: np.save would have written vectors.npy
    r = run("embed", "--model", model, "--backend", "numpy", "--out", str(out), "chest pain", "fever")
    assert r.returncode == 0, r.stderr
    assert out.is_file() and not (tmp_path / "vectors.npy").exists()
    assert np.load(out, allow_pickle=False).shape == (2, 52)
    assert [p.name for p in tmp_path.iterdir()] == ["vectors"]  # no temporary file left behind
    _one_line_error(run("embed", "--model", model, "--backend", "numpy", "--out", str(out), "x"),
                    "already exists; pass --overwrite to replace it")
    r = run("embed", "--model", model, "--backend", "numpy", "--out", str(out), "--overwrite", "x")
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (1, 52)


@pytest.mark.parametrize("where,message", [
    ("missing/v.npy", "does not exist"),
    ("", "is a folder"),
])
def test_bad_out_is_refused_before_any_work(model, tmp_path, where, message):
    _one_line_error(run("embed", "--model", model, "--backend", "numpy", "--out", str(tmp_path / where), "x"),
                    message)


def test_out_through_a_symlink_is_refused(model, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "link.npy").symlink_to(target)
    _one_line_error(run("embed", "--model", model, "--backend", "numpy", "--overwrite", "--out",
                        str(tmp_path / "link.npy"), "x"), "is a symbolic link")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("modules,message", [
    ("[not json", "modules.json: not valid JSON"),
    ('{"type": "x"}', "modules.json: expected a JSON list of module objects"),
    ('[{"type": "sentence_transformers.models.Pooling", "path": "../../etc"}]', "points outside the checkpoint"),
    ('[{"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}]', "has no config.json"),
])
def test_malformed_modules_json_is_one_line(model, tmp_path, modules, message):
    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    (folder / "modules.json").write_text(modules)
    _one_line_error(run("embed", "--model", str(folder), "--backend", "numpy", "x"), message)


def test_modules_json_declares_the_cli_default(model, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    r = run("embed", "--model", str(folder), "--backend", "numpy", "x")
    assert r.returncode == 0, r.stderr
    assert "pooling=cls, normalize=True" in r.stderr
    assert np.linalg.norm(json.loads(r.stdout)) == pytest.approx(1.0, abs=1e-5)


def test_an_unexpected_exception_is_an_internal_error_with_a_saved_traceback(model, monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something cbert did not expect")

    monkeypatch.setattr(cbert.cli.tasks, "cmd_embed", broken)
    assert main(["embed", "--model", model, "x"]) == 1
    err = capsys.readouterr().err
    assert "cbert embed: internal error" in err and "traceback saved to " in err
    saved = err.strip().split("traceback saved to ")[1]
    text = open(saved).read()
    assert "RuntimeError: something cbert did not expect" in text and "Traceback" in text


def test_file_system_errors_are_one_line(model):
    r = run("embed", "--model", model, "--backend", "numpy", "--out", "/proc/v.npy", "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("cbert embed: error: /proc/v.npy: cannot write in /proc")


def test_the_first_command_prints_no_vulkan_loader_noise():
    """`cbert embed` with backend auto lists wgpu adapters; without XDG_RUNTIME_DIR Mesa's Vulkan
    drivers printed "XDG_RUNTIME_DIR is invalid or not set" four times. The CLI sets it for itself."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    r = subprocess.run([sys.executable, "-m", "cbert.cli", "embed", "Patient denies chest pain."],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "XDG_RUNTIME_DIR" not in r.stderr, r.stderr
