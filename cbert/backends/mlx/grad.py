"""MLX gradients: ``mx.value_and_grad`` of the inference lowering, compiled once per shape.

The training graph runs through the same :data:`lowering.TABLE` a forward runs (never a second
model); where a lowering approximates its op (the CPU's GELU polynomial and bit-trick exp), the
table's ``mx.custom_function`` VJPs give the exact op's gradient. What inference does differently
is left out here because the weights change every step: no GEMM plan, no [K, N] copies, no
``linear_split`` and no folding of the fused QKV weight (the CONCAT nodes run inside the
differentiated function, so query, key and value get their own gradients).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable

import mlx.core as mx
import numpy as np

from ...ir import Graph, Op
from .lowering import FLOAT32_PARAMS, TABLE, Precision

F32 = mx.float32
# Float runtime inputs a loss reads as its target, by (op, input position): they stay float32 in
# every dtype; every other float input is an activation and is rounded to the compute dtype.
_TARGETS = {Op.MSE: 1, Op.BCE_LOGITS: 1, Op.KL_DIV: 1, Op.COSINE: 1}


class MLXGradExecutable:
    """A training graph's loss, outputs and gradients on MLX (the gradient contract of LEARNING.md).

    ``params`` holds float32 ``mx.array`` master weights by the graph's (unfolded) parameter
    names; a trainer may replace entries or the whole dict between calls. The backend's dtype is
    the compute dtype: inside the differentiated function each weight is rounded to it as the
    inference executor rounds its weights at load (LayerNorm's stay float32; on the CPU the GEMMs
    then run in float32 on the rounded values), so gradients come back float32 through the casts.

    Compiling: one ``mx.compile``-d function per (trainable set, wrt) key, made the first time a
    thread asks for that key; MLX retraces it for every new input shape (batch, seq, and the
    shapes of the labels) and for a new set of parameter shapes or dtypes, and reuses the trace
    otherwise. A new ``loss_scale`` or dropout seed is an input, not a retrace.

    One call at a time per executable (a trainer is one thread). Another thread may use its own
    executable at the same time: the compiled functions are kept per thread, because MLX keeps
    streams and compiled traces per thread (see ``MLXExecutable``), and a call runs on the calling
    thread's default stream.
    """

    xp = mx

    def __init__(self, graph: Graph, params: dict[str, np.ndarray], precision: Precision, device: mx.Device):
        if "loss" not in graph.outputs:
            raise ValueError(f"compile_grad: the graph has no 'loss' output (it has {', '.join(graph.outputs)}); "
                             "build it with cbert.losses.with_losses")
        missing = [name for name in graph.params if name not in params]
        if missing:
            raise ValueError(f"compile_grad: params has no {missing[0]!r} (the graph reads {len(graph.params)} "
                             "parameters)")
        self.graph = graph
        self.precision = precision
        self.device = device
        keep32 = {n.inputs[i] for n in graph.nodes for i in FLOAT32_PARAMS.get(n.op, ())}
        self._rounded = frozenset(graph.params) - keep32 if precision.half else frozenset()
        self._targets = {n.inputs[i] for n in graph.nodes if n.op in _TARGETS for i in (_TARGETS[n.op],)}
        with mx.stream(device):
            self.params = {name: self.from_host(params[name]) for name in graph.params}
            mx.eval(list(self.params.values()))
        self._threads = threading.local()  # per thread: key -> compiled function

    # -- host <-> device --------------------------------------------------------------------

    def to_host(self, array: mx.array) -> np.ndarray:
        return np.array(array, copy=True)

    def from_host(self, a: np.ndarray) -> mx.array:
        a = np.asarray(a)
        return mx.array(a.astype(np.float32, copy=False) if np.issubdtype(a.dtype, np.floating) else a)

    # -- the function MLX differentiates ----------------------------------------------------

    def _weight(self, name: str, w: mx.array) -> mx.array:
        """A master weight as the forward computes with it (see ``MLXExecutable._to_device``)."""
        p = self.precision
        if name not in self._rounded:
            return w
        w = w.astype(p.store)
        return w if p.gemm == p.store else w.astype(p.gemm)

    def _outputs(self, params: dict[str, mx.array], inputs: dict[str, mx.array]) -> dict[str, mx.array]:
        p = self.precision
        env = {name: self._weight(name, w) for name, w in params.items()}
        for name, x in inputs.items():
            is_activation = mx.issubdtype(x.dtype, mx.floating) and name not in self._targets
            env[name] = x.astype(p.store) if is_activation and x.dtype != p.store else x
        for n in self.graph.nodes:
            env[n.output] = TABLE[n.op](p, *[env[i] for i in n.inputs], **n.kwargs)
        return {k: env[v] for k, v in self.graph.outputs.items()}

    def _objective(self, trained: dict, wrt_inputs: dict, frozen: dict, inputs: dict, scale: mx.array):
        outputs = self._outputs({**frozen, **trained}, {**inputs, **wrt_inputs})
        return outputs["loss"].astype(F32) * scale, outputs

    def _compiled(self, key: tuple[frozenset[str], tuple[str, ...]]) -> Callable:
        """This thread's compiled function for (trainable set, wrt)."""
        fns = getattr(self._threads, "fns", None)
        if fns is None:
            fns = self._threads.fns = {}
        fn = fns.get(key)
        if fn is None:
            if key[0] or key[1]:
                fn = mx.value_and_grad(self._objective, argnums=(0, 1))
            else:  # an eval forward: no backward to build
                def fn(trained, wrt_inputs, frozen, inputs, scale):
                    return self._objective(trained, wrt_inputs, frozen, inputs, scale), ({}, {})
            fn = fns[key] = mx.compile(fn)
        return fn

    # -- a call -----------------------------------------------------------------------------

    def _check(self, inputs: dict, wrt: Iterable[str], trainable: Collection[str] | None
               ) -> tuple[frozenset[str], tuple[str, ...]]:
        missing = [name for name in self.graph.inputs if name not in inputs]
        if missing:
            raise ValueError(f"inputs: no {missing[0]!r}; the graph reads {', '.join(self.graph.inputs)}")
        wrt = tuple(dict.fromkeys(wrt))
        for name in wrt:
            if name not in self.graph.inputs:
                raise ValueError(f"wrt: {name!r} is not a runtime input of the graph "
                                 f"({', '.join(self.graph.inputs)})")
            if not np.issubdtype(np.asarray(inputs[name]).dtype, np.floating):
                raise ValueError(f"wrt: {name!r} holds {np.asarray(inputs[name]).dtype} values; only a float "
                                 "input has a gradient")
        names = frozenset(self.params) if trainable is None else frozenset(trainable)
        unknown = sorted(names - set(self.params))
        if unknown:
            raise ValueError(f"trainable: {unknown[0]!r} is not a parameter of the graph")
        return names, wrt

    def __call__(self, inputs: dict[str, np.ndarray], wrt: Iterable[str] = (),
                 trainable: Collection[str] | None = None, loss_scale: float = 1.0
                 ) -> tuple[dict[str, np.ndarray], dict[str, mx.array]]:
        """(every graph output as host float32, d(loss_scale * loss)/dx for the parameters in
        ``trainable`` (None: all) and the float inputs in ``wrt``, as float32 ``mx.array``)."""
        names, wrt = self._check(inputs, wrt, trainable)
        arrays = {}
        for name in self.graph.inputs:
            a = np.ascontiguousarray(inputs[name])
            arrays[name] = mx.array(a.astype(np.float32 if np.issubdtype(a.dtype, np.floating) else np.int32))
        trained = {k: v for k, v in self.params.items() if k in names}
        frozen = {k: v for k, v in self.params.items() if k not in names}
        wrt_inputs = {k: arrays.pop(k) for k in wrt}
        with mx.stream(self.device):
            (_, outputs), (g_params, g_inputs) = self._compiled((names, wrt))(
                trained, wrt_inputs, frozen, arrays, mx.array(loss_scale, F32))
            grads = {**g_params, **g_inputs}
            mx.eval(list(outputs.values()), list(grads.values()))
        host = {k: np.array(v.astype(F32) if v.dtype != F32 else v, copy=True) for k, v in outputs.items()}
        return host, grads
