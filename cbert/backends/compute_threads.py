"""How many threads a forward computes on: one process-wide setting, made before the model loads.

A BLAS reads its thread count from the environment when it loads, so the environment is set for
the libraries not loaded yet: the OpenBLAS the MLX backend loads when first asked for
(:mod:`cbert.backends.mlx._blas`), OpenMP and MKL (torch), Accelerate, and lavapipe's
``LP_NUM_THREADS`` (wgpu on the CPU). numpy's OpenBLAS was loaded with numpy, before any command
line was read, so its pool (and that of any other OpenBLAS already in the process) is set
through OpenBLAS's own ``openblas_set_num_threads``. On a small shared machine one thread per
process gave the best throughput per CPU (README, Serving).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "LP_NUM_THREADS")
# openblas_set_num_threads under the names OpenBLAS builds export it (numpy's wheels: scipy_openblas64_).
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads")


def loaded_openblas() -> list[str]:
    """The OpenBLAS libraries mapped into this process (Linux's /proc; elsewhere none are found)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "openblas" in Path(fields[5]).name and ".so" in Path(fields[5]).name:
            paths.add(fields[5])
    return sorted(paths)


def set_compute_threads(n: int) -> dict[str, int]:
    """Compute on ``n`` threads from now on; returns the loaded BLAS libraries set (path -> n)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"threads={n!r}: expected a positive integer")
    for var in THREADS_ENV:
        os.environ[var] = str(n)
    done = {}
    for path in loaded_openblas():
        lib = ctypes.CDLL(path)  # already mapped: this only takes a handle to it
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter.restype = None
                setter(n)
                done[path] = n
                break
    return done
