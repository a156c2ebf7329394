"""The MLX executor: weights on the device once, the whole forward compiled per shape."""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np

from ...errors import BackendUnavailable
from ...ir import Graph, Node, Op, fold_constants
from . import _blas
from .lowering import FLOAT32_PARAMS, TABLE, Precision, concat, linear, linear_split

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
DEVICES = ("gpu", "cpu")
# linear_split is tried at these column chunks, and only up to this many rows: past a few
# hundred rows one BLAS call already runs at the GEMM peak (196 GFLOP/s at 1024 rows here).
SPLIT_CHUNKS = (32, 16, 8)
SPLIT_MAX_ROWS = 256


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
        # The CPU's second stream (linear_split runs half of its GEMMs there), and per GEMM
        # shape (rows, K, N) the column chunk linear_split takes, or None for one BLAS call.
        self._aux = mx.new_stream(device) if precision.cpu else None
        self.gemm_plan: dict[tuple[int, int, int], int | None] = {}
        self.force_split: int | None = None  # tests: linear_split at this chunk wherever it fits

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
        env = self._lower({**params, **inputs})
        return {k: env[v].astype(mx.float32) for k, v in self.graph.outputs.items()}

    def _lower(self, env: dict[str, mx.array], linears: dict | None = None) -> dict[str, mx.array]:
        """Every node's lowering into ``env``; ``linears`` collects (rows, K, N) -> LINEAR nodes."""
        p = self.precision
        for n in self.graph.nodes:
            args = [env[i] for i in n.inputs]
            chunk = None
            if n.op is Op.LINEAR:
                if linears is not None:
                    linears.setdefault(_gemm_shape(n, args[0], args[1]), []).append(n)
                chunk = self._split_chunk(n, args[0], env)
            if chunk:
                w = env[_nk_name(n)]
                env[n.output] = linear_split(p, args[0], w, args[2], n.kwargs["activation"], chunk, self._aux)
            else:
                env[n.output] = TABLE[n.op](p, *args, **n.kwargs)
        return env

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {k: mx.array(np.ascontiguousarray(inputs[k], dtype=np.int32)) for k in self.graph.inputs}
        shape = tuple(tuple(a.shape) for a in arrays.values())
        first = shape not in self._sized
        if first:
            if self._aux is not None:
                with mx.stream(self.device):
                    self._plan_gemms(arrays)
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

    def _split_chunk(self, n: Node, x: mx.array, env: dict) -> int | None:
        if self._aux is None or _nk_name(n) not in env:
            return None
        m, k, cols = _gemm_shape(n, x, env[n.inputs[1]])
        if self.force_split:
            return self.force_split if cols % (2 * self.force_split) == 0 else None
        return self.gemm_plan.get((m, k, cols))

    def _plan_gemms(self, arrays: dict[str, mx.array]) -> None:
        """Time one BLAS call against linear_split for each new GEMM shape of these inputs.

        The graph is built lazily on the real inputs (MLX computes nothing until eval) to
        learn each LINEAR's rows; each shape is then timed over all its weights. Where the
        split is taken, every weight of that shape gets an [N, K] copy if it is stored
        [K, N] (BERT-base: the FFN down-projections, +28 MB).
        """
        shapes: dict[tuple[int, int, int], list[Node]] = {}
        self._lower({**self.params, **arrays}, shapes)  # lazy: builds the graph, computes nothing
        new = {key: nodes for key, nodes in shapes.items() if key not in self.gemm_plan}
        nk = {key: self._nk_weights(nodes) for key, nodes in shapes.items()
              if _chunks(key) and (self.force_split or key in new)}
        if self.force_split is None and new:
            # All or nothing: a threaded BLAS call leaves OpenBLAS's worker spinning for a
            # while, and beside the two split streams that is three busy threads on two
            # cores (measured: a forward with one GEMM shape left whole ran at 77 ms median
            # against 55 with all four split). So the split is taken for every new shape
            # where it fits, if all of them together beat the whole calls by 5%.
            timed = {key: self._time_split(key, nodes, nk.get(key)) for key, nodes in new.items()}
            whole = sum(t[None] for t in timed.values())
            best = {key: min((c for c in t if c), key=t.get, default=None) for key, t in timed.items()}
            split = sum(t[best[key]] for key, t in timed.items())
            take = split <= 0.95 * whole
            for key in new:
                self.gemm_plan[key] = best[key] if take else None
        for key, nodes in shapes.items():
            if key in nk and (self.gemm_plan.get(key) or self.force_split):
                self.params.update({_nk_name(n): w for n, w in zip(nodes, nk[key])})
        mx.eval(list(self.params.values()))

    def _nk_weights(self, nodes: list[Node]) -> list[mx.array]:
        """Each node's weight as [N, K]: itself, or a transposed copy of one stored [K, N]."""
        return [self.params[_nk_name(n)] if _nk_name(n) in self.params
                else mx.contiguous(self.params[n.inputs[1]].T) for n in nodes]

    def _time_split(self, key: tuple[int, int, int], nodes: list[Node],
                    ws_nk: list[mx.array] | None) -> dict[int | None, float]:
        """Seconds for one BLAS call (None) and for linear_split at each chunk that fits, per forward.

        Timed over every weight of the shape, as the forward meets them: a weight that
        stays in cache between repeats would hide the packing cost the split avoids.
        """
        m, k, _ = key
        p, layout = self.precision, nodes[0].kwargs.get("weight_layout", "nk")
        ws = [self.params[n.inputs[1]] for n in nodes]
        bs = [self.params[n.inputs[2]] for n in nodes]
        x = mx.random.normal((m, k), key=mx.random.key(0)).astype(p.gemm)
        plain = mx.compile(lambda x, ws, bs: [linear(p, x, w, b, "none", layout) for w, b in zip(ws, bs)])
        times: dict[int | None, float] = {None: _best_time(lambda: plain(x, ws, bs))}
        for c in _chunks(key):
            split = mx.compile(lambda x, ws, bs, c=c: [linear_split(p, x, w, b, "none", c, self._aux)
                                                      for w, b in zip(ws, bs)])
            times[c] = _best_time(lambda split=split: split(x, ws_nk, bs))
        return times


def _chunks(key: tuple[int, int, int]) -> list[int]:
    """The linear_split chunks worth timing for a GEMM of (rows, K, N)."""
    m, _, cols = key
    return [c for c in SPLIT_CHUNKS if cols % (2 * c) == 0] if m <= SPLIT_MAX_ROWS else []


def _nk_name(n: Node) -> str:
    """The name of the node's weight in [N, K] layout (the weight itself unless stored [K, N])."""
    w = n.inputs[1]
    return w + ":nk" if n.kwargs.get("weight_layout") == "kn" else w


def _gemm_shape(n: Node, x: mx.array, w: mx.array) -> tuple[int, int, int]:
    k = x.shape[-1]
    return x.size // k, k, w.shape[1] if n.kwargs.get("weight_layout") == "kn" else w.shape[0]


def _best_time(run, repeats: int = 3) -> float:
    mx.eval(run())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(run())
        best = min(best, time.perf_counter() - t)
    return best


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
