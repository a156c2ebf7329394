"""The numpy reference backend: the op definitions (``lowering``) and their executor (``backend``)."""

from .backend import NumpyBackend, NumpyExecutable, run_graph

__all__ = ["NumpyBackend", "NumpyExecutable", "run_graph"]
