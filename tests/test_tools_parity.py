"""`cbert parity` through a subprocess, and its comparison rule on arrays."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKEND_DTYPES
from conftest import run_cli as run

from cbert.tools.parity import compare


@pytest.fixture(scope="module")
def pretrain(checkpoints):
    return checkpoints("head16_pretrain")[0]


def test_every_backend_and_dtype_agrees(pretrain):
    backends = sorted({b for b, _ in BACKEND_DTYPES})
    r = run("parity", pretrain, "--backends", ",".join(backends), "--dtypes", "float32,float16")
    assert r.returncode == 0, r.stdout + r.stderr
    for output in ("last_hidden_state", "pooler_output", "prediction_logits", "seq_relationship_logits"):
        assert f"\n{output}\n" in r.stdout
    for b, d in BACKEND_DTYPES:
        if d in ("float32", "float16") and (b, d) != ("numpy", "float32"):
            assert f"{b} {d}" in r.stdout
    assert "numpy float32    transformers" in r.stdout  # the reference itself, against transformers
    assert "FAIL" not in r.stdout and "comparisons within tolerance" in r.stdout


def test_outside_tolerance_exits_1(pretrain):
    # numpy and transformers sum in different orders: a zero tolerance cannot hold
    r = run("parity", pretrain, "--backends", "numpy", "--dtypes", "float32", "--reference", "transformers",
            "--max-error", "0")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL: scaled max abs error" in r.stdout
    assert "outside: numpy float32 vs transformers" in r.stdout


def test_compare_rule():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 5, 7)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    assert compare("logits", ref.copy(), ref, mask, half=False)["ok"]
    noisy = ref.copy()
    noisy[1, 4] += 100  # a padded position: not compared
    assert compare("logits", noisy, ref, mask, half=False)["ok"]
    flipped = ref.copy()
    row = flipped[0, 0]
    row[[row.argmax(), row.argmin()]] = row[[row.argmin(), row.argmax()]]  # a clear top-1 flip
    m = compare("logits", flipped, ref, mask, half=True, min_cosine=-1)
    assert not m["ok"] and m["top1"] == pytest.approx(6 / 7) and "top-1 disagreement" in m["why"]
    # a near-tie may flip either way: not a failure when the reference's margin is within the tolerance
    tie = np.array([[1.0, 1.0 + 1e-6, 0.0]], np.float32)
    m = compare("logits", tie[:, [1, 0, 2]], tie, None, half=False)
    assert m["top1"] == 0.0 and m["ok"]
    m = compare("last_hidden_state", -ref, ref, mask, half=True)
    assert not m["ok"] and "cosine" in m["why"] and m["top1"] is None


@pytest.mark.parametrize("args,message", [
    (("--backends", "mlx"), "backend='mlx' is not available"),
    (("--backends", "cuda"), "unknown backend='cuda'"),
    (("--dtypes", "int8"), "unknown dtype 'int8'"),
])
def test_bad_backends(pretrain, tmp_path, args, message):
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nclass B:\n    def find_spec(self, name, *a):\n"
        "        if name == 'mlx': raise ImportError('No module named mlx')\nsys.meta_path.insert(0, B())\n")
    r = run("parity", pretrain, *args, env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_numpy_alone_is_checked_against_transformers(pretrain):
    """Regression: `--backends numpy` with the default dtypes (float32,float16) exited 2 with
    "none of the backends numpy runs dtype float32, float16"."""
    r = run("parity", pretrain, "--backends", "numpy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "numpy float32    transformers" in r.stdout


@pytest.mark.parametrize("args,message", [
    (("--backends", "numpy", "--reference", "none"), "nothing to compare: --reference none"),
    (("--max-error", "nan"), "--max-error nan: expected a number >= 0"),
    (("--min-cosine", "nan"), "--min-cosine nan: expected a number in [-1, 1]"),
    (("--backends", "numpy", "--dtypes", "float16"), "--backends numpy runs dtype float32, none of --dtypes float16"),
])
def test_nothing_to_compare_or_a_meaningless_tolerance_is_an_error(pretrain, args, message):
    """Regression: `--reference none` printed "0/0 within tolerance" and exited 0; a NaN tolerance passed."""
    r = run("parity", pretrain, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_skipped_transformers_check_is_said(pretrain, tmp_path):
    # a None entry in sys.modules is how Python marks a module as not importable
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['transformers'] = None\n")
    r = run("parity", pretrain, "--backends", "numpy,wgpu", "--dtypes", "float32", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "note: numpy was not checked against transformers: transformers not installed" in r.stdout
