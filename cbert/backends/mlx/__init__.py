"""The MLX backend (Apple silicon GPU, CUDA, or CPU).

``_blas.load_blas()`` runs before anything imports ``mlx.core``: on Linux it puts
OpenBLAS in the process so MLX's CPU GEMMs use it instead of the reference BLAS the wheel
bundles. Without mlx installed, the import below raises ImportError and the backend
registry turns it into :class:`cbert.errors.BackendUnavailable` with the install command.
"""

from ._blas import load_blas

load_blas()

from .backend import MLXBackend, MLXExecutable  # noqa: E402  (after the BLAS is in place)

__all__ = ["MLXBackend", "MLXExecutable"]
