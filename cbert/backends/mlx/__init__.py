"""The MLX backend (Apple silicon GPU, CUDA, or CPU).

Importing this package does nothing: no BLAS is loaded, no ``mlx.core`` imported, no MLX
setting changed. The modules:

- ``_blas``: loads OpenBLAS into the process on Linux, which has to happen before
  ``mlx.core`` is imported. The backend registry (:func:`cbert.backends.backend_class`)
  runs ``_blas.load_blas()`` when the MLX backend is first asked for, then imports
- ``backend``: :class:`MLXBackend` and its executor (imports ``mlx.core``);
- ``lowering``: the op table as MLX array code;
- ``plan``: GEMM plans and their cache on disk (no ``mlx.core``, so ``cbert devices`` can list them);
- ``tuning``: the explicit step that measures a GEMM plan (``cbert tune``).

Without mlx installed, importing ``backend`` raises ImportError and the registry turns it
into :class:`cbert.errors.BackendUnavailable` with the install command.
"""
