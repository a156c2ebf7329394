"""The numpy executor: the reference backend runs the op list through the lowering table.

Thread safety: a compiled graph holds only read-only parameters and a cache of the input
shapes already checked; every forward works in its own dict, so any number of threads may
call one executable at once.
"""

from __future__ import annotations

import numpy as np

from ...ir import Graph, fold_constants, free_after, infer_shapes
from .lowering import TABLE, concat

# Input shapes remembered as checked; past this many distinct ones the memory starts over.
_CHECKED_SHAPES = 4096


def run_graph(graph: Graph, env: dict, table=TABLE, dead=None) -> dict[str, np.ndarray]:
    """Execute ``graph`` over ``env`` (params + inputs); values die after their last use.

    ``dead`` is :func:`cbert.ir.free_after` of the graph, when the caller has it already.
    """
    env = dict(env)  # our own copy: dropping a name here frees an activation, never the caller's
    for n, dying in zip(graph.nodes, dead if dead is not None else free_after(graph)):
        env[n.output] = table[n.op](*(env[i] for i in n.inputs), **n.kwargs)
        for name in dying:
            del env[name]
    return {k: env[v] for k, v in graph.outputs.items()}


class NumpyExecutable:
    def __init__(self, graph: Graph, params: dict[str, np.ndarray]):
        self.graph, self.params = fold_constants(graph, params, concat)
        self.param_shapes = {name: np.shape(self.params[name]) for name in self.graph.params}
        self.dead = free_after(self.graph)
        self.checked: set[tuple] = set()

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        """Every node's operand shapes, once per distinct set of input shapes (the parameters with them)."""
        key = tuple(np.shape(inputs[name]) for name in self.graph.inputs)
        if key in self.checked:
            return
        infer_shapes(self.graph, self.param_shapes, dict(zip(self.graph.inputs, key)))
        if len(self.checked) >= _CHECKED_SHAPES:
            self.checked = set()
        self.checked.add(key)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(inputs)
        return run_graph(self.graph, {**self.params, **inputs}, dead=self.dead)


class NumpyBackend:
    """The reference backend. float32 only."""

    name = "numpy"
    dtypes = ("float32",)
    # Nothing is prepared per input shape here, so callers pad a batch to its longest row, not to a
    # sequence bucket (cbert.batching): bucket padding would only add work (~15% on mixed notes).
    bucketed_shapes = False

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

    def compile_grad(self, graph: Graph, params: dict[str, np.ndarray]):
        """The gradient executable of a training graph (:class:`cbert.backends.numpy.grad.NumpyGradExecutable`)."""
        from .grad import NumpyGradExecutable  # grad builds on this module's executor

        return NumpyGradExecutable(graph, params)
