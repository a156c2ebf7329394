"""The examples run, so they cannot rot."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def run(name: str) -> str:
    r = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=600)
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
