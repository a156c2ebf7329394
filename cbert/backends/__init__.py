"""The backend table. A backend is a lowering of the op list plus a small executor.

Each entry is imported lazily: ``import cbert`` never needs mlx or wgpu, and asking for
a backend whose package is missing raises :class:`cbert.errors.BackendUnavailable` with
the command that installs it.

A backend class has ``name``, ``dtypes``, ``__init__(dtype, device)``, ``describe()`` and
``compile(graph, params) -> callable(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]``;
optionally ``probe()`` (a classmethod returning a dict for ``cbert devices`` and for
``backend="auto"``: at least ``{"available": bool, "accelerated": bool}``). ``bucketed_shapes``
(optional, default True): whether callers should pad a batch to its sequence bucket
(:mod:`cbert.batching`) because each new input shape costs the backend a preparation. A backend that
must change the process before its library loads names that step in ``BEFORE_IMPORT``;
importing a backend's package never does it by itself.
"""

from __future__ import annotations

import importlib

from ..errors import BackendUnavailable

# name -> (module, class, pip extra that installs what it needs)
BACKENDS = {
    "numpy": ("cbert.backends.numpy", "NumpyBackend", None),
    "mlx": ("cbert.backends.mlx.backend", "MLXBackend", "mlx"),
    "wgpu": ("cbert.backends.wgpu", "WgpuBackend", "wgpu"),
}

# name -> "module:function" run once before the backend's module is first imported, for a
# process-wide step that must come before its library loads. MLX: OpenBLAS goes into the
# process before mlx.core binds its BLAS (see cbert/backends/mlx/_blas.py; the call is
# idempotent, and it says so, without loading, when mlx.core was imported first).
BEFORE_IMPORT = {
    "mlx": "cbert.backends.mlx._blas:load_blas",
}

# backend="auto" tries these in order and takes the first that runs on an accelerator;
# the numpy reference when none does.
AUTO_ORDER = ("mlx", "wgpu")


def backend_class(name: str):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend={name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    module, cls, extra = BACKENDS[name]
    try:
        if name in BEFORE_IMPORT:
            setup_module, setup = BEFORE_IMPORT[name].split(":")
            getattr(importlib.import_module(setup_module), setup)()
        mod = importlib.import_module(module)
    except ImportError as e:
        if isinstance(e, BackendUnavailable):
            raise
        hint = f'pip install "cbert[{extra}]"' if extra else "reinstall cbert"
        raise BackendUnavailable(f"backend={name!r} is not available ({e}); install it with: {hint}") from None
    return getattr(mod, cls)


def backend_dtypes() -> list[tuple[str, str]]:
    """Every (backend, dtype) cbert has: the one list the parity tool, the tests and the examples
    run. A backend that is not installed raises BackendUnavailable (a missing install is an
    error to the tests, not a skip)."""
    return [(name, dtype) for name in BACKENDS for dtype in backend_class(name).dtypes]


def probe(name: str) -> dict:
    """What ``cbert devices`` prints for one backend; never raises."""
    try:
        cls = backend_class(name)
    except (BackendUnavailable, ImportError) as e:
        return {"available": False, "accelerated": False, "why": str(e)}
    except Exception as e:  # a half-installed or broken backend must not break the others
        return {"available": False, "accelerated": False, "why": f"{type(e).__name__}: {e}"}
    if hasattr(cls, "probe"):
        try:
            return cls.probe()
        except Exception as e:  # a broken driver must not break `cbert devices`
            return {"available": False, "accelerated": False, "why": f"{type(e).__name__}: {e}"}
    return {"available": True, "accelerated": False}


DTYPES = ("float32", "float16", "bfloat16")


def _runs(name: str, found: dict, dtype: str) -> bool:
    """Whether an available backend runs ``dtype`` here (wgpu's float16 needs shader-f16)."""
    if not found.get("available"):
        return False
    return dtype in backend_class(name).dtypes and (dtype != "float16" or found.get("f16", True))


def auto_backend(dtype: str = "float32") -> str:
    """The first accelerated backend that runs ``dtype``; else the numpy reference for float32, or
    the first installed backend that runs ``dtype`` on the CPU (MLX, wgpu) for half precision."""
    probes = {name: probe(name) for name in AUTO_ORDER}
    for name, found in probes.items():
        if found.get("accelerated") and _runs(name, found, dtype):
            return name
    if dtype in backend_class("numpy").dtypes:
        return "numpy"
    for name, found in probes.items():
        if _runs(name, found, dtype):
            return name
    raise BackendUnavailable(f"backend='auto' dtype={dtype!r}: no installed backend runs {dtype} here "
                             f"(MLX runs it: pip install \"cbert[mlx]\"; wgpu on an adapter with shader-f16)")


def get_backend(name: str = "auto", dtype: str = "float32", device: str | None = None):
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype={dtype!r}; choose {', '.join(DTYPES)}")
    if name == "auto":
        name = auto_backend(dtype)
    cls = backend_class(name)
    if dtype not in cls.dtypes:
        raise ValueError(f"backend={name!r} does not run dtype={dtype!r}; it runs {', '.join(cls.dtypes)}")
    return cls(dtype=dtype, device=device)
