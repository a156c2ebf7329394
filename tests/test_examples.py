"""The examples run, so they cannot rot."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def run(name: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_embed_notes_ranks_the_heart_failure_note_first():
    lines = run("embed_notes.py").splitlines()
    assert "CHF" in lines[1], lines


def test_compare_backends_reports_every_backend():
    out = run("compare_backends.py")
    assert "numpy  float32  max abs error 0.00e+00" in out
    assert "FAIL" not in out and "not available" not in out, out
    for line in out.splitlines():
        if "max abs error" in line and "float32" in line:
            assert float(line.split("max abs error")[1].split()[0]) < 1e-3, line


def test_finetune_assertion_learns_on_a_slice():
    # --quick: 320 rows, one epoch (20 steps) of the offline MiniLM; the full run's accuracy is in the README
    lines = run("finetune_assertion.py", "--quick").splitlines()
    accuracy = float(next(x for x in lines if x.startswith("test accuracy:")).split()[2])
    baseline = float(next(x for x in lines if x.startswith("bag-of-words baseline:")).split()[2])
    assert accuracy >= 0.5, lines  # three balanced classes: chance is 1/3
    assert 0.4 < baseline < 0.9, lines


def test_probe_assertion_compares_with_its_baselines_on_a_slice():
    # --quick: 150 training and 60 test rows, 3 folds; the full figures are in the README
    lines = run("probe_assertion.py", "--quick").splitlines()
    assert lines[0].startswith("probe: mean pooling, 384 features") and len(lines) == 10, lines
    scores = dict(part.rsplit(" ", 1) for part in lines[-1].removeprefix("test accuracy: ").split(", "))
    assert set(scores) == {"probe", "majority-class", "bag-of-words"}, lines
    assert float(scores["probe"]) > float(scores["majority-class"]) + 0.15, lines  # the embedding carries the task


def test_make_assertion_writes_the_shipped_data(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLES / "data" / "make_assertion.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for split in ("train", "dev", "test"):  # the seed decides: the committed files are what it writes
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (EXAMPLES / "data" / "assertion" / f"{split}.jsonl"
                                                              ).read_bytes()
