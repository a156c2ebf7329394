"""The MLX executor: weights on the device once, every choice made at compile, the forward traced per shape.

Import this module only through the backend registry (``cbert.backends.backend_class("mlx")``),
which loads the BLAS first (see ``_blas.py``): it imports ``mlx.core``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ...errors import BackendUnavailable
from ...ir import Graph, Op, fold_constants
from . import _blas
from .lowering import FLOAT32_PARAMS, TABLE, Precision, concat, kn_layout, linear, linear_split
from .plan import NO_PLAN, ROW_RANGES, GemmPlan, find_plan, gemm_shapes, row_range

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
DEVICES = ("gpu", "cpu")


def _gpu_kind() -> str | None:
    if mx.metal.is_available():
        return "metal"
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "cuda"
    return None


@dataclass(frozen=True)
class LinearPlan:
    """How the executor runs one LINEAR node: its own choice, made at compile; the graph stays as given.

    ``weight`` names the node's [N, K] weight. With ``transposed``, one BLAS call reads the
    executor's [K, N] copy of it instead (see ``lowering.kn_layout``). ``chunks`` holds, per
    row range of ``plan.ROW_RANGES``, the column chunk ``linear_split`` runs at (reading the
    [N, K] weight), or None for one BLAS call.
    """

    weight: str
    transposed: bool
    chunks: tuple[int | None, ...]

    def chunk(self, rows: int) -> int | None:
        r = row_range(rows)
        return None if r is None else self.chunks[r]


class MLXExecutable:
    """One graph with its weights as ``mx.array``; ``mx.compile`` traces it per input shape.

    Compiling (this constructor) makes every choice, once: weights converted to the device
    dtype, the fused QKV weight folded, each LINEAR's ``LinearPlan`` read off the GEMM plan
    (with the [K, N] and [N, K] copies it needs, in the executor's own dicts), and MLX's
    buffer cache raised to hold a forward (:func:`_keep_in_cache`, process-wide, explicit
    here). A call converts the inputs, runs the compiled forward and reads the outputs back.

    Shape class = the exact (batch, seq): ``mx.compile`` (shapeless=False) keeps one trace
    per input shape and reuses it, so a repeated shape costs no Python and no retrace.
    ``shapeless=True`` cannot serve: the lowering reshapes by the traced B and S, and a
    shapeless trace keeps those numbers (mlx 0.32: "Slice cannot infer output shapes", then
    reshape errors at the next shape). The tasks and the server bound the shapes instead:
    they pad to the sequence buckets of :mod:`cbert.batching`, so a corpus meets a handful
    of shapes and this executor traces a handful (``traced`` lists them). MLX caches the
    C++ it compiles for a trace's fused kernels on disk (``/tmp/mlx/<version>/cpu``),
    named by the kernel's ops, not its shape: a new shape's cost is its trace.

    Threads: one executable may be called from any number of threads at once, each getting
    the serial result. MLX (0.31.2 on) gives every thread its own streams: an array on a
    stream made by another thread fails with "There is no Stream(cpu, N) in current
    thread" (what broke a model loaded in one thread and run in another), and
    ``mx.compile`` keeps its traces per thread. So nothing here holds a stream: a call runs
    on its own thread's default stream for the device (``mx.stream(device)``), and each
    thread makes, the first time it calls, its own compiled forward and, the first time it
    traces a split, its own second stream for ``linear_split``. Each thread traces a shape
    once, and MLX keeps an OS thread for every stream ever made (measured: 50 short-lived
    threads left 100 behind), so call from a fixed pool of threads, not a new thread per
    request. (One compiled function shared by threads also works, but with mlx 0.32.4 it
    aborted the interpreter at exit, "terminate called without an active exception", in 9
    of 16 runs of a 4-line script; one per thread, 0 of 24.) The weights, evaluated at
    compile, are only read. No lock is taken: 8 threads x 8 calls of all-MiniLM-L6-v2 on
    mixed shapes (2 cores shared with other jobs) took 15.3, 21.4 and 30.4 s without a lock
    and 15.6, 25.7 and 25.2 s in runs paired with those with one around each call: no
    difference beyond the noise (the BLAS fills the cores either way), and a lock would
    serialise the traces too.
    """

    def __init__(self, graph: Graph, params: dict[str, np.ndarray], precision: Precision, device: mx.Device,
                 gemm_plan: GemmPlan | None, backend: MLXBackend | None = None):
        self.precision = precision
        self.device = device
        self.backend = backend
        keep32 = {n.inputs[i] for n in graph.nodes for i in FLOAT32_PARAMS.get(n.op, ())}
        with mx.stream(device):
            weights = {name: self._to_device(name, a, keep32) for name, a in params.items()}
            graph, weights = fold_constants(graph, weights, concat)
        self.graph = graph
        shapes = gemm_shapes(graph, {name: tuple(w.shape) for name, w in weights.items()})
        # The split and the [K, N] copies pay off on the CPU's BLAS only.
        self.gemm_plan = NO_PLAN if not precision.cpu else gemm_plan if gemm_plan is not None else find_plan(shapes)
        self.linears = {n.output: self._linear_plan(n.inputs[1], weights) for n in graph.nodes if n.op is Op.LINEAR}
        with mx.stream(device):
            # [K, N] copies where a whole call reads one; the [N, K] array is dropped where
            # nothing else reads it (BERT-base: the FFN down-projections, 28 MB).
            self.weights_kn = {p.weight: mx.contiguous(weights[p.weight].T)
                               for p in self.linears.values() if p.transposed}
            needs_nk = {i for n in graph.nodes if n.op is not Op.LINEAR for i in n.inputs}
            needs_nk |= {p.weight for p in self.linears.values() if not p.transposed or any(p.chunks)}
            self.weights = {name: w for name, w in weights.items() if name in needs_nk or name not in self.weights_kn}
            mx.eval(list(self.weights.values()) + list(self.weights_kn.values()))
        self._threads = threading.local()  # per thread: the compiled forward, linear_split's second stream
        self._split_counts: dict[tuple, tuple[int, int]] = {}  # input shape -> (GEMMs split, GEMMs whole)
        self.traced: list[tuple] = []  # the input shapes traced, one entry per trace (append is thread safe)
        resident = sum(w.nbytes for w in self.weights.values()) + sum(w.nbytes for w in self.weights_kn.values())
        _keep_in_cache(resident)

    def _to_device(self, name: str, a: np.ndarray, keep32: set[str]) -> mx.array:
        # One host->device copy per weight, at load. (mx.array copies, so read-only
        # memory-mapped params are fine and the mapping is not kept alive.)
        x = mx.array(np.asarray(a, dtype=np.float32))
        p = self.precision
        if name in keep32:
            return x
        if p.half:
            x = x.astype(p.store)  # the half model's weights ...
        # ... held in the GEMM dtype (float32 on the CPU: MLX has no fast half GEMM there).
        return x.astype(p.gemm)

    def _linear_plan(self, weight: str, weights: dict[str, mx.array]) -> LinearPlan:
        n, k = weights[weight].shape
        chunks = tuple(self.gemm_plan.chunks.get((k, n, r)) for r in range(len(ROW_RANGES)))
        return LinearPlan(weight, self.precision.cpu and kn_layout(k, n), chunks)

    def _forward(self) -> Callable:
        """This thread's compiled forward (see the class docstring: one per thread)."""
        forward = getattr(self._threads, "forward", None)
        if forward is None:
            forward = self._threads.forward = mx.compile(self._trace)
        return forward

    def _aux_stream(self) -> mx.Stream:
        """This thread's second CPU stream for linear_split (MLX streams belong to the thread that made them)."""
        aux = getattr(self._threads, "aux", None)
        if aux is None:
            aux = self._threads.aux = mx.new_stream(self.device)
        return aux

    def _trace(self, weights: dict[str, mx.array], weights_kn: dict[str, mx.array],
               inputs: dict[str, mx.array]) -> dict[str, mx.array]:
        # Runs only while mx.compile traces: once per new input shape in each thread.
        p = self.precision
        env = {**weights, **inputs}
        split = whole = 0
        for n in self.graph.nodes:
            if n.op is not Op.LINEAR:
                env[n.output] = TABLE[n.op](p, *[env[i] for i in n.inputs], **n.kwargs)
                continue
            plan, x, b = self.linears[n.output], env[n.inputs[0]], env[n.inputs[2]]
            chunk = plan.chunk(x.size // x.shape[-1])
            act = n.kwargs["activation"]
            if chunk:
                env[n.output] = linear_split(p, x, env[plan.weight], b, act, chunk, self._aux_stream())
            elif plan.transposed:
                env[n.output] = linear(p, x, weights_kn[plan.weight], b, act, "kn")
            else:
                env[n.output] = linear(p, x, env[plan.weight], b, act)
            split, whole = split + bool(chunk), whole + (not chunk)
        shapes = tuple(tuple(a.shape) for a in inputs.values())
        self._split_counts[shapes] = (split, whole)
        self.traced.append(shapes)
        return {k: env[v].astype(mx.float32) for k, v in self.graph.outputs.items()}

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {k: mx.array(np.ascontiguousarray(inputs[k], dtype=np.int32)) for k in self.graph.inputs}
        with mx.stream(self.device):
            out = self._forward()(self.weights, self.weights_kn, arrays)
            mx.eval(list(out.values()))  # one evaluation of the whole forward
        if self.backend is not None:
            split, whole = self._split_counts[tuple(tuple(a.shape) for a in arrays.values())]
            self.backend.record({"gemm_plan": self.gemm_plan.source, "gemms_split": split, "gemms_whole": whole})
        return {k: np.array(v, copy=True) for k, v in out.items()}


def _keep_in_cache(nbytes: int) -> None:
    """Let MLX's buffer cache hold ``nbytes`` of freed buffers, never lowering it. Called at compile.

    MLX caps its cache of freed buffers at 32 MiB on the CPU; a BERT-base layer at batch
    8 x 128 frees ~12 MB buffers by the dozen, and past the cap each one goes back to glibc,
    whose next malloc maps fresh pages and faults them in. Measured (BERT-base, 8 x 128,
    best of 6): 1188-1222 ms per forward at the default cap, 1146-1153 ms with it raised;
    the earlier 14-kernel GELU alone went 45 -> 17 ms. The compiled model raises the cap to
    its own size: memory held beyond the model's is then at most the model again, and that
    holds a whole forward's intermediates up to about 3,000 tokens (measured: BERT-base at
    8 x 128 peaks 139 MB above its 433 MB; the cap used to be raised per shape to twice a
    forward's peak, 277 MB there). The cap is process-wide, so it is only ever raised, and
    set here, when a graph is compiled, never by a forward.
    """
    previous = mx.set_cache_limit(int(nbytes))  # MLX has no getter: setting returns the old limit
    if previous > nbytes:
        mx.set_cache_limit(previous)


class MLXBackend:
    """MLX on its default device (or ``device="cpu"``/``"gpu"``), float32 or half precision.

    ``gemm_plan``: the GEMM plan every compiled graph uses on the CPU (see ``plan.py``);
    None reads the plan ``cbert tune`` cached for this machine and the graph's GEMM shapes,
    and with none on disk runs every GEMM as one BLAS call.
    """

    name = "mlx"
    dtypes = ("float32", "float16", "bfloat16")
    bucketed_shapes = True  # each new input shape is traced: callers pad to the sequence buckets

    def __init__(self, dtype: str = "float32", device: str | None = None, gemm_plan: GemmPlan | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"backend='mlx' runs dtype float32, float16 or bfloat16; got dtype={dtype!r}")
        if gemm_plan is not None and not isinstance(gemm_plan, GemmPlan):
            raise ValueError(f"backend='mlx' gemm_plan: expected a cbert.backends.mlx.plan.GemmPlan or None; "
                             f"got {type(gemm_plan).__name__}")
        if device is None:
            dev = mx.default_device()
        elif device in DEVICES:
            dev = mx.gpu if device == "gpu" else mx.cpu
            if not mx.is_available(dev):
                raise BackendUnavailable(
                    f"backend='mlx' device={device!r}: this MLX build has no GPU (no Metal, no CUDA); "
                    "use device='cpu', or install mlx with Metal (macOS) or mlx[cuda]")
        else:
            raise ValueError(f"backend='mlx' device={device!r}; choose 'gpu' or 'cpu' (or leave it unset)")
        self.dtype = dtype
        self.device = mx.Device(dev) if isinstance(dev, mx.DeviceType) else dev
        cpu = self.device.type == mx.DeviceType.cpu
        store = DTYPES[dtype]
        self.precision = Precision(store=store, gemm=mx.float32 if cpu else store, cpu=cpu)
        self.gemm_plan = gemm_plan
        self._stats: dict = {}

    def describe(self) -> str:
        where = "CPU, " + _blas.blas_in_use() if self.precision.cpu else f"GPU ({_gpu_kind()})"
        return f"mlx {mx.__version__} ({self.dtype}, {where})"

    def compile(self, graph: Graph, params: dict[str, np.ndarray]) -> MLXExecutable:
        return MLXExecutable(graph, params, self.precision, self.device, self.gemm_plan, self)

    def stats(self) -> dict:
        """What the most recent forward did: the GEMM plan it used and how many GEMMs it split.

        With threads, "most recent" is whichever call finished last.
        """
        if not self._stats:
            raise RuntimeError("backend='mlx' has run no forward yet")
        return dict(self._stats)

    def record(self, stats: dict) -> None:
        self._stats = stats

    def mlm_in_graph(self, batch: int, seq: int) -> bool:
        """Whether the MLM head runs inside the compiled forward (else numpy on the host).

        Measured on the CPU (2-layer BERT-base, vocab 28996, 2 threads, median of 5):
        1x32 in-graph 27.6 ms vs host 43.8; 4x64 166.6 vs 216.9; 8x128 614.8 vs 726.5.
        In-graph wins at every size: same BLAS either way, and the host path pays an extra
        hand-off of the hidden states plus numpy's unfused GELU/LayerNorm. On Metal the
        memory is shared, so in-graph costs no copy either. On CUDA (not measured here;
        the seed's rule for that engine) a large batch's [B, S, V] logits cross PCIe, so
        batches of 32 or more run the head on the host.
        """
        return not (_gpu_kind() == "cuda" and not self.precision.cpu and batch >= 32)

    @classmethod
    def probe(cls) -> dict:
        gpu = _gpu_kind()
        return {
            "available": True,
            "accelerated": gpu is not None,
            "device": f"gpu ({gpu})" if gpu else "cpu",
            "blas": _blas.blas_in_use(),
            "version": mx.__version__,
        }

    def compile_grad(self, graph: Graph, params: dict[str, np.ndarray]):
        """A training graph's loss and gradients (cbert.backends.mlx.grad.MLXGradExecutable)."""
        from .grad import MLXGradExecutable

        return MLXGradExecutable(graph, params, self.precision, self.device)
