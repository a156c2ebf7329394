"""The numpy executor: the reference backend runs the op list through the lowering table."""

from __future__ import annotations

import numpy as np

from ...ir import Graph, fold_constants
from .lowering import TABLE, concat


def run_graph(graph: Graph, env: dict, table=TABLE) -> dict[str, np.ndarray]:
    """Execute ``graph`` over ``env`` (params + inputs); values die after their last use."""
    env = dict(env)  # our own copy: dropping a name here frees activations, never a param
    last_use: dict[str, int] = {}
    for idx, n in enumerate(graph.nodes):
        for name in n.inputs:
            last_use[name] = idx
    keep = set(graph.outputs.values())
    for idx, n in enumerate(graph.nodes):
        env[n.output] = table[n.op](*(env[i] for i in n.inputs), **n.kwargs)
        for name in n.inputs:
            if last_use[name] == idx and name not in keep:
                del env[name]
    return {k: env[v] for k, v in graph.outputs.items()}


class NumpyExecutable:
    def __init__(self, graph: Graph, params: dict[str, np.ndarray]):
        self.graph, self.params = fold_constants(graph, params, concat)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_graph(self.graph, {**self.params, **inputs})


class NumpyBackend:
    """The reference backend. float32 only."""

    name = "numpy"
    dtypes = ("float32",)

    def __init__(self, dtype: str = "float32", device: str | None = None):
        if dtype != "float32":
            raise ValueError(f"backend='numpy' runs float32 only (the reference); got dtype={dtype!r}")
        if device not in (None, "cpu"):
            raise ValueError(f"backend='numpy' runs on the CPU; got device={device!r}")
        self.dtype = dtype

    def describe(self) -> str:
        return "numpy (float32 reference, CPU)"

    def compile(self, graph: Graph, params: dict[str, np.ndarray]) -> NumpyExecutable:
        return NumpyExecutable(graph, params)
