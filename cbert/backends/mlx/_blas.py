"""Load an optimized BLAS into the process before ``mlx.core``, and say which one MLX uses.

The Linux ``mlx[cpu]`` wheel links the netlib reference BLAS it bundles (about 2.5
GFLOP/s for a BERT-base GEMM on this project's 2-core CI machine, against about 97 with
OpenBLAS: ~40x). libmlx resolves ``cblas_sgemm`` through the global symbol scope before
its own dependencies, so a BLAS opened with RTLD_GLOBAL first takes over every float32
GEMM. libmlx binds the symbol when it loads, so this has to happen before anything
imports ``mlx.core`` (measured: loading OpenBLAS afterwards leaves GEMMs at 2.5 GFLOP/s).
This module imports nothing from mlx, so that it can run first.

Nothing here runs at import. Loading a library into the process is process-wide, so it is
one explicit step: the backend registry (:func:`cbert.backends.backend_class`) calls
:func:`load_blas` when the MLX backend is first asked for, before it imports
:mod:`cbert.backends.mlx.backend` (the module that imports ``mlx.core``). A program that
imports ``mlx.core`` itself should call ``cbert.backends.backend_class("mlx")`` first.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

# Set CBERT_BLAS to a library path to load that BLAS instead, or to "none" to keep MLX's own.
ENV_VAR = "CBERT_BLAS"


def _candidates() -> list[str]:
    arch = platform.machine()
    triplet = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "arm64": "aarch64-linux-gnu"}.get(arch)
    paths = []
    if triplet:
        # Debian/Ubuntu: libopenblas0-pthread, -openmp, -serial (pthread is the default one).
        for flavour in ("openblas-pthread", "openblas-openmp", "openblas-serial"):
            paths.append(f"/usr/lib/{triplet}/{flavour}/libopenblas.so.0")
    # Fedora/RHEL name their threaded build libopenblasp.
    paths += ["/usr/lib64/libopenblasp.so.0", "/usr/lib64/libopenblas.so.0"]
    return paths


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


# What load_blas() did: the path it opened (or None) and why.
LOADED: str | None = None
NOTE = ""
TOO_LATE = False  # mlx.core was already loaded, bound to its own BLAS


def load_blas() -> str | None:
    """Open the first optimized BLAS found with RTLD_GLOBAL; returns its path or None."""
    global LOADED, NOTE, TOO_LATE
    if LOADED is not None or TOO_LATE or not sys.platform.startswith("linux"):
        return LOADED
    choice = os.environ.get(ENV_VAR, "")
    if choice.lower() == "none":
        NOTE = f"{ENV_VAR}=none"
        return None
    if "mlx.core" in sys.modules:
        TOO_LATE = True
        NOTE = "mlx.core was imported before cbert.backends.mlx could load OpenBLAS; import cbert's backend first"
        return None
    for path in [choice] if choice else _candidates():
        if Path(path).exists():
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError as e:
                NOTE = f"could not load {path}: {e}"
                continue
            LOADED = path
            return path
    if choice:
        NOTE = f"{ENV_VAR}={choice} does not exist"
    return None


def blas_in_use() -> str:
    """The BLAS that serves libmlx's cblas_sgemm on the CPU, in words."""
    if sys.platform == "darwin":
        return "Accelerate"
    bundled = "MLX's bundled reference BLAS (slow: ~40x behind OpenBLAS; apt-get install libopenblas0-pthread)"
    if TOO_LATE:
        return f"{bundled}; {NOTE}"
    try:
        scope = ctypes.CDLL(None)  # the global scope libmlx looked in first when it loaded
        sgemm = scope.cblas_sgemm
    except (OSError, AttributeError):
        return bundled + (f"; {NOTE}" if NOTE else "")
    info = _DlInfo()
    where = "?"
    if scope.dladdr(ctypes.cast(sgemm, ctypes.c_void_p), ctypes.byref(info)) and info.dli_fname:
        where = os.path.realpath(info.dli_fname.decode())
    try:
        get_config = scope.openblas_get_config
        get_config.restype = ctypes.c_char_p
        return f"{get_config().decode().strip()} ({where})"
    except AttributeError:
        return f"cblas from {where}"


def blas_threads() -> int | None:
    """How many threads the loaded OpenBLAS runs a GEMM on (None: not OpenBLAS, or not known)."""
    try:
        get = ctypes.CDLL(None).openblas_get_num_threads
    except (OSError, AttributeError):
        return None
    get.restype = ctypes.c_int
    return int(get())
