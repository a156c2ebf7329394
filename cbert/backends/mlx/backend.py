"""The MLX executor: weights on the device once, the whole forward compiled per shape."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ...errors import BackendUnavailable
from ...ir import Graph, Node, Op, fold_constants
from . import _blas
from .lowering import FLOAT32_PARAMS, TABLE, Precision, concat

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
DEVICES = ("gpu", "cpu")


def _gpu_kind() -> str | None:
    if mx.metal.is_available():
        return "metal"
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "cuda"
    return None


class MLXExecutable:
    """One graph with its weights as ``mx.array``; ``mx.compile`` traces it per input shape.

    Shape class = the exact (batch, seq): ``mx.compile`` (shapeless=False) keeps one trace
    per input shape and reuses it, so a repeated shape costs no Python and no retrace.
    Padding seq to buckets would save traces but not work, and the padded columns would
    change what a fully masked row attends to (uniform over S keys in the reference).
    """

    def __init__(self, graph: Graph, params: dict[str, np.ndarray], precision: Precision, device: mx.Device):
        self.precision = precision
        self.device = device
        self.traces = 0  # how many times the forward was traced (tests read it)
        self._sized: set[tuple] = set()  # input shapes whose peak memory the MLX cache was sized for
        keep32 = {n.inputs[i] for n in graph.nodes for i in FLOAT32_PARAMS.get(n.op, ())}
        with mx.stream(device):
            arrays = {name: self._to_device(name, a, name in keep32) for name, a in params.items()}
            graph, arrays = fold_constants(graph, arrays, concat)
            if precision.cpu:
                graph, arrays = _kn_weights(graph, arrays)
            mx.eval(list(arrays.values()))
        self.graph = graph
        self.params = arrays
        self._forward = mx.compile(self._trace)

    def _to_device(self, name: str, a: np.ndarray, keep32: bool) -> mx.array:
        # One host->device copy per weight, at load. (mx.array copies, so read-only
        # memory-mapped params are fine and the mapping is not kept alive.)
        x = mx.array(np.asarray(a, dtype=np.float32))
        p = self.precision
        if keep32:
            return x
        if p.half:
            x = x.astype(p.store)  # the half model's weights ...
        # ... held in the GEMM dtype (float32 on the CPU: MLX has no fast half GEMM there).
        return x.astype(p.gemm)

    def _trace(self, params: dict[str, mx.array], inputs: dict[str, mx.array]) -> dict[str, mx.array]:
        # Runs only while mx.compile traces: once per new input shape.
        self.traces += 1
        env = {**params, **inputs}
        p = self.precision
        for n in self.graph.nodes:
            env[n.output] = TABLE[n.op](p, *(env[i] for i in n.inputs), **n.kwargs)
        return {k: env[v].astype(mx.float32) for k, v in self.graph.outputs.items()}

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {k: mx.array(np.ascontiguousarray(inputs[k], dtype=np.int32)) for k in self.graph.inputs}
        shape = tuple(tuple(a.shape) for a in arrays.values())
        first = shape not in self._sized
        if first:
            mx.reset_peak_memory()
            before = mx.get_active_memory()
        with mx.stream(self.device):
            out = self._forward(self.params, arrays)
            mx.eval(list(out.values()))  # one evaluation of the whole forward
        if first:
            self._sized.add(shape)
            # Twice the first call's peak: later calls at the shape peaked ~25% higher (measured).
            _keep_in_cache(2 * (mx.get_peak_memory() - before))
        return {k: np.array(v, copy=True) for k, v in out.items()}


def _keep_in_cache(nbytes: int) -> None:
    """Let MLX's buffer cache hold one forward's intermediates (``nbytes``), never lowering it.

    MLX caps its cache of freed buffers at 32 MiB on the CPU; a BERT-base layer at batch
    8 x 128 frees ~12 MB buffers by the dozen, and past the cap each one goes back to glibc,
    whose next malloc maps fresh pages and faults them in. Measured (BERT-base, 8 x 128,
    best of 6): 1188-1222 ms per forward at the default cap, 1146-1153 ms with it raised;
    the earlier 14-kernel GELU alone went 45 -> 17 ms. The cap is process-wide, so it is
    only ever raised.
    """
    previous = mx.set_cache_limit(int(nbytes))  # MLX has no getter: setting returns the old limit
    if previous > nbytes:
        mx.set_cache_limit(previous)


def _kn_weights(graph: Graph, arrays: dict[str, mx.array]) -> tuple[Graph, dict[str, mx.array]]:
    """Store a LINEAR weight as [K, N] where K > N (the FFN down-projection), on the CPU.

    Measured here (OpenBLAS, 2 threads, x [32, 3072] @ W -> [32, 768]): W.T of a [N, K]
    array 1.87-1.94 ms, a contiguous [K, N] array 1.04-1.07 ms; with K < N the [N, K]
    layout is as fast or faster (32x768 -> 3072: 1.07 vs 1.31 ms), and at 1024 rows both
    layouts run at 196 GFLOP/s. So only K > N weights are transposed, once, at load.
    """
    nodes, moved = [], {}
    for n in graph.nodes:
        w = n.inputs[1] if n.op is Op.LINEAR else None
        if w is not None and arrays[w].shape[1] > arrays[w].shape[0]:
            if w not in moved:
                moved[w] = mx.contiguous(arrays[w].T)
            n = Node(n.op, n.inputs, n.output, tuple(sorted((*n.attrs, ("weight_layout", "kn")))))
        nodes.append(n)
    for w, kn in moved.items():
        if all(m.op is Op.LINEAR for m in graph.nodes if w in m.inputs):
            arrays[w] = kn
        else:  # also read by another op in [N, K]: keep both
            arrays[w + ":kn"] = kn
            nodes = [Node(m.op, tuple(w + ":kn" if (i == w and dict(m.attrs).get("weight_layout") == "kn") else i
                                      for i in m.inputs), m.output, m.attrs) for m in nodes]
    return Graph(tuple(nodes), graph.inputs, graph.outputs, graph.param_shapes), arrays


class MLXBackend:
    """MLX on its default device (or ``device="cpu"``/``"gpu"``), float32 or half precision."""

    name = "mlx"
    dtypes = ("float32", "float16", "bfloat16")

    def __init__(self, dtype: str = "float32", device: str | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"backend='mlx' runs dtype float32, float16 or bfloat16; got dtype={dtype!r}")
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

    @property
    def device_name(self) -> str:
        return "cpu" if self.precision.cpu else "gpu"

    def describe(self) -> str:
        where = "CPU, " + _blas.blas_in_use() if self.precision.cpu else f"GPU ({_gpu_kind()})"
        return f"mlx {mx.__version__} ({self.dtype}, {where})"

    def compile(self, graph: Graph, params: dict[str, np.ndarray]) -> MLXExecutable:
        return MLXExecutable(graph, params, self.precision, self.device)

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
