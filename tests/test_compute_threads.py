"""set_compute_threads reaches the BLAS pools already loaded (numpy's OpenBLAS), the environment
of those not loaded yet (MLX's OpenBLAS), and `cbert serve --threads` calls it before the model
loads. threadpoolctl (scikit-learn's, in the test extra) is the independent reader."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import threadpoolctl

from cbert.backends.compute_threads import THREADS_ENV, set_compute_threads
from cbert.cli import main
from cbert.errors import UsageError

REPO = Path(__file__).parent.parent


def numpy_blas_threads() -> int:
    import numpy  # noqa: F401  (its OpenBLAS is the pool read)

    (info,) = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]
    return info["num_threads"]


@pytest.fixture
def restore_threads(monkeypatch):
    """Put numpy's pool and the environment back as they were after the test."""
    for var in THREADS_ENV:  # monkeypatch records each variable and restores it after this fixture's teardown
        monkeypatch.delenv(var, raising=False)
    before = numpy_blas_threads()
    yield before
    set_compute_threads(before)


def test_sets_numpys_loaded_openblas_and_the_environment(restore_threads):
    for n in (1, 3):
        done = set_compute_threads(n)
        assert numpy_blas_threads() == n
        assert any("openblas" in path for path in done) and set(done.values()) == {n}
        assert all(os.environ[var] == str(n) for var in THREADS_ENV)
    with pytest.raises(ValueError, match="threads=0: expected a positive integer"):
        set_compute_threads(0)


def test_an_openblas_loaded_later_reads_it():
    # A fresh process: the MLX backend loads the system OpenBLAS only when first asked for.
    script = textwrap.dedent("""
        from cbert.backends.compute_threads import set_compute_threads
        set_compute_threads(1)
        from cbert.backends import backend_class
        backend_class("mlx")
        from cbert.backends.mlx._blas import LOADED, blas_threads
        print(LOADED is not None, blas_threads())
    """)
    env = {k: v for k, v in os.environ.items() if k not in THREADS_ENV}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded, threads = out.stdout.split()
    if loaded == "True":  # an OpenBLAS was there to load (else MLX keeps its own BLAS: nothing to set)
        assert threads == "1", out.stdout


def test_serve_threads_is_set_before_the_model_loads(monkeypatch, restore_threads, checkpoints):
    folder, _ = checkpoints("odd13")
    seen = {}

    def load_model(args):  # stands in for the model load, then stops the command before it serves
        seen["numpy"], seen["env"] = numpy_blas_threads(), os.environ["OPENBLAS_NUM_THREADS"]
        raise UsageError("stop here")

    monkeypatch.setattr("cbert.cli.serve.load_model", load_model)
    other = 2 if restore_threads == 1 else 1
    assert main(["serve", "--model", folder, "--port", "0", "--threads", str(other)]) == 2
    assert seen == {"numpy": other, "env": str(other)}
    seen.clear()
    set_compute_threads(restore_threads)
    assert main(["serve", "--model", folder, "--port", "0"]) == 2  # no --threads: the library's own
    assert seen["numpy"] == restore_threads
