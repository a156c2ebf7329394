"""The numpy reference's gradients: a training graph run forward through ``TABLE``, then backward
through ``VJP`` in reverse order (the contract every training backend keeps: LEARNING.md's
``compile_grad``).

The graph keeps its CONCAT nodes (the fused Q/K/V weight): they run in each forward, since a
trainer replaces the parameters between calls, and their backward splits the cotangent back into
the query, key and value parameters. A value read by several nodes (the word embeddings read by the
embeddings and by a tied masked-LM decoder, ALBERT's shared layers) sums the cotangents of its readers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import numpy as np

from ...ir import Graph, free_after
from .backend import NumpyExecutable, run_graph
from .lowering import F32, TABLE
from .vjp import NEEDS_NEEDED, VJP


class NumpyGradExecutable(NumpyExecutable):
    """``exe(inputs, wrt=(), trainable=None, loss_scale=1.0) -> (outputs, grads)`` over ``graph``.

    ``params`` (float32 numpy arrays by the graph's parameter names) may be replaced, entry by entry
    or whole, between calls. One call at a time per executable: a trainer is one thread.
    """

    xp = np

    def __init__(self, graph: Graph, params: dict[str, np.ndarray]):
        if "loss" not in graph.outputs:
            raise ValueError(f"a training graph outputs 'loss'; this one outputs {sorted(graph.outputs)}")
        missing = [name for name in graph.params if name not in params]
        if missing:
            raise ValueError(f"no array for parameter {missing[0]!r} of the training graph")
        # No fold_constants: the CONCATs are differentiated like any node.
        self.graph = graph
        self.params = {name: params[name] for name in graph.params}
        self.param_shapes = {name: np.shape(a) for name, a in self.params.items()}
        self.dead = free_after(graph)
        self.checked: set[tuple] = set()

    def to_host(self, array) -> np.ndarray:
        return np.asarray(array)

    def from_host(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def __call__(self, inputs: dict[str, np.ndarray], wrt: Iterable[str] = (),
                 trainable: Collection[str] | None = None, loss_scale: float = 1.0):
        graph = self.graph
        missing = [name for name in graph.inputs if name not in inputs]
        if missing:
            raise ValueError(f"missing runtime input {missing[0]!r}; the graph reads {', '.join(graph.inputs)}")
        inputs = {name: inputs[name] for name in graph.inputs}
        self.check(inputs)
        leaves = self._leaves(inputs, tuple(wrt), trainable)
        env = {**self.params, **inputs}
        if not leaves:  # an eval forward: nothing to differentiate, values freed as they die
            return _host(run_graph(graph, env, dead=self.dead)), {}
        # Forward, keeping every value: the backward reads each node's inputs and output.
        for n in graph.nodes:
            env[n.output] = TABLE[n.op](*(env[i] for i in n.inputs), **n.kwargs)
        outputs = _host({k: env[v] for k, v in graph.outputs.items()})
        loss = env[graph.outputs["loss"]]
        cotangents = {graph.outputs["loss"]: np.asarray(loss_scale, loss.dtype)}
        on_path = _depends_on(graph, leaves)
        for n in reversed(graph.nodes):
            ct = cotangents.pop(n.output, None)
            if ct is not None and n.output in on_path:
                attrs = n.kwargs
                if n.op in NEEDS_NEEDED:
                    attrs["needed"] = tuple(i in on_path for i in n.inputs)
                grads = VJP[n.op](ct, tuple(env[i] for i in n.inputs), env[n.output], **attrs)
                for name, g in zip(n.inputs, grads):
                    if g is not None and name in on_path:
                        # Never in place: one VJP may return one array for two inputs (ADD_LN).
                        cotangents[name] = g if name not in cotangents else cotangents[name] + g
            del env[n.output]  # its readers' and its own backward have run
        return outputs, {name: np.asarray(cotangents[name], F32) if name in cotangents
                         else np.zeros(np.shape(env[name]), F32) for name in leaves}

    def _leaves(self, inputs: dict, wrt: tuple[str, ...], trainable) -> tuple[str, ...]:
        """The parameters and runtime inputs to differentiate, each checked."""
        params = self.graph.params if trainable is None else tuple(trainable)
        for name in params:
            if name not in self.params:
                raise ValueError(f"trainable: {name!r} is not a parameter of the training graph")
        for name in wrt:
            if name not in inputs:
                raise ValueError(f"wrt: {name!r} is not a runtime input of the graph ({', '.join(inputs)})")
            if not np.issubdtype(np.asarray(inputs[name]).dtype, np.floating):
                raise ValueError(f"wrt: {name!r} holds {np.asarray(inputs[name]).dtype}; only a float input "
                                 "has a gradient")
        return tuple(dict.fromkeys(params + wrt))


def _depends_on(graph: Graph, leaves: Iterable[str]) -> set[str]:
    """The leaves and every node output computed from one of them: the values a backward visits."""
    found = set(leaves)
    for n in graph.nodes:
        if any(i in found for i in n.inputs):
            found.add(n.output)
    return found


def _host(values: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, F32) for k, v in values.items()}
