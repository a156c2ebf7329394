"""The lowering table: each op -> the dispatches that compute it for one (batch, seq).

A dispatch names its kernel (file, entry point, const and override values), the buffer
range bound at each binding, its uniform parameters and its grid. Buffers are named
symbolically (a value, a parameter, the inputs buffer); the executor resolves them. Any
tensor range larger than maxStorageBufferBindingSize is split here, into several
dispatches over sub-ranges, so the adapter's limit is never hit as a validation error.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod

import numpy as np

from ...ir import ACTIVATIONS, Graph, Node
from .planner import infer_shapes

ROW_THREADS = 128  # RW in rows.wgsl
GEMM_TN = 64  # TN in gemm.wgsl
GEMM_TMS = (32, 64)  # the row-tile variants of gemm.wgsl, one pipeline each, all built at warm-up
GEMM_WIDE_GRID = 32  # fewer 64-row workgroups than this cannot fill even a small GPU: take 32-row tiles
ATTN_ROWS = 32  # QT in attention.wgsl
MAX_GROUPS = 65535  # WebGPU's guaranteed maxComputeWorkgroupsPerDimension

U, R, W = "uniform", "read", "write"
GEMM_BINDINGS = ((0, U), (1, R), (2, R), (3, R), (4, W))
LN_BINDINGS = ((0, U), (1, R), (3, R), (4, R), (5, W))
ADD_LN_BINDINGS = ((0, U), (1, R), (2, R), (3, R), (4, R), (5, W))
EMBED_BINDINGS = ((0, U), (3, R), (4, R), (5, W), (6, R), (7, R), (8, R), (9, R))
MASK_BINDINGS = ((0, U), (6, R), (10, W))
FIRST_BINDINGS = ((0, U), (1, R), (5, W))
ATTN_BINDINGS = ((0, U), (1, R), (2, R), (3, W))
APPLY_BINDINGS = ((0, U), (1, R), (3, W), (4, R))


@dataclass(frozen=True)
class Kernel:
    file: str
    entry: str
    consts: tuple = ()
    overrides: tuple = ()
    bindings: tuple = ()


@dataclass
class Dispatch:
    kernel: Kernel
    views: dict  # binding -> (ref, byte offset, byte size); ref is ("value"|"param"|"inputs", name)
    params: tuple  # u32 uniforms, in the order of the kernel's Params struct
    grid: tuple


class Lowering:
    def __init__(self, graph: Graph, param_shapes: dict, itemsize: int, max_binding: int, align: int,
                 wg_storage: int):
        self.graph, self.param_shapes, self.el = graph, param_shapes, itemsize
        self.align = align
        # Room for rounding a range down to the offset alignment and its size up to 4 bytes.
        self.limit = max_binding - align - 4
        self.wg_storage = wg_storage

    # -- helpers ---------------------------------------------------------------------------

    def ref(self, name: str) -> tuple:
        return ("param", name) if name in self.param_shapes else ("value", name)

    def view(self, ref: tuple, start: int, count: int, itemsize: int) -> tuple[tuple, int]:
        """The aligned binding that covers elements [start, start + count) and the start's index in it."""
        lo_byte = start * itemsize
        lo = lo_byte - lo_byte % self.align
        hi = -(-(lo_byte + count * itemsize) // 4) * 4
        return (ref, lo, hi - lo), (lo_byte - lo) // itemsize

    def chunk(self, total: int, item_bytes: list[int], what: str, multiple: int = 1) -> int:
        """How many items (rows, batches) fit one binding for every operand."""
        n = self.limit // max(item_bytes)
        if n < 1:
            raise ValueError(f"backend='wgpu': one row of {what} ({max(item_bytes)} bytes) exceeds this adapter's "
                             f"maxStorageBufferBindingSize ({self.limit} usable bytes)")
        if n >= total:
            return total
        return max(multiple, n // multiple * multiple) if n >= multiple else n

    def param_itemsize(self, name: str) -> int:
        return self.el if len(self.param_shapes[name]) >= 2 else 4

    # -- lowering --------------------------------------------------------------------------

    def lower(self, shapes: dict, batch: int, seq: int) -> list[Dispatch]:
        out: list[Dispatch] = []
        for n in self.graph.nodes:
            out += getattr(self, "_" + n.op.value)(n, shapes, batch, seq)
        return out

    def _rows(self, n: Node, shapes: dict, kernel: Kernel, operands: list[str], fixed: dict) -> list[Dispatch]:
        """A one-workgroup-per-row kernel over [rows, H] operands, split into binding-sized row ranges."""
        H = shapes[n.output][-1]
        rows = prod(shapes[n.output][:-1])
        step = min(MAX_GROUPS, self.chunk(rows, [H * self.el], n.output))
        out = []
        for r0 in range(0, rows, step):
            m = min(step, rows - r0)
            views, bases = dict(fixed), {}
            for binding, name in zip((1, 2, 5), operands):
                if name is not None:
                    views[binding], bases[binding] = self.view(self.ref(name), r0 * H, m * H, self.el)
            out.append(Dispatch(kernel, views, (m, bases.get(1, 0), bases.get(2, 0), bases[5], 0, 0, 0, 0), (m, 1, 1)))
        return out

    def _ln_kernel(self, entry: str, H: int, eps: float, bindings: tuple, ntab: int = 0) -> Kernel:
        overrides = (("EPS", float(eps)),) + ((("NTAB", ntab),) if ntab else ())
        return Kernel("rows.wgsl", entry, (("H", H), ("ROW_PT", ceil(H / ROW_THREADS))), overrides, bindings)

    def _vec(self, name: str) -> tuple:
        return self.view(self.ref(name), 0, self.param_shapes[name][0], 4)[0]

    def _layernorm(self, n: Node, shapes: dict, batch: int, seq: int) -> list[Dispatch]:
        x, w, b = n.inputs
        k = self._ln_kernel("layernorm", shapes[x][-1], n.kwargs["eps"], LN_BINDINGS)
        return self._rows(n, shapes, k, [x, None, n.output], {3: self._vec(w), 4: self._vec(b)})

    def _add_ln(self, n: Node, shapes: dict, batch: int, seq: int) -> list[Dispatch]:
        x, res, w, b = n.inputs
        k = self._ln_kernel("add_ln", shapes[x][-1], n.kwargs["eps"], ADD_LN_BINDINGS)
        return self._rows(n, shapes, k, [x, res, n.output], {3: self._vec(w), 4: self._vec(b)})

    def _embed(self, n: Node, shapes: dict, batch: int, seq: int) -> list[Dispatch]:
        w, b, *pairs = n.inputs
        tables, ids = pairs[::2], pairs[1::2]
        if not 1 <= len(tables) <= 3:
            raise ValueError(f"backend='wgpu': EMBED sums 1 to 3 tables; node {n.output!r} has {len(tables)}")
        H = shapes[n.output][-1]
        fixed = {3: self._vec(w), 4: self._vec(b)}
        for binding, t in zip((7, 8, 9), tables + tables[:1] * (3 - len(tables))):
            size = prod(self.param_shapes[t]) * self.el
            if size > self.limit:
                # A gather reads any row, so it cannot be split by rows like a GEMM.
                raise ValueError(f"backend='wgpu': embedding table {t} ({size} bytes) exceeds this adapter's "
                                 f"maxStorageBufferBindingSize ({self.limit} usable bytes)")
            fixed[binding] = self.view(self.ref(t), 0, prod(self.param_shapes[t]), self.el)[0]
        inputs = self.graph.inputs
        fixed[6] = self.view(("inputs", ""), 0, len(inputs) * batch * seq, 4)[0]
        sections = [inputs.index(i) * batch * seq for i in ids] + [0] * (3 - len(ids))
        k = self._ln_kernel("embed", H, n.kwargs["eps"], EMBED_BINDINGS, ntab=len(tables))
        out, r0 = self._rows(n, shapes, k, [None, None, n.output], fixed), 0
        for d in out:
            # Each row range reads its own slice of the id sections.
            d.params = (d.params[0], 0, 0, d.params[3], *(s + r0 for s in sections), 0)
            r0 += d.params[0]
        return out

    def _mask_bias(self, n: Node, shapes: dict, batch: int, seq: int) -> list[Dispatch]:
        count = batch * seq
        inputs = self.view(("inputs", ""), 0, len(self.graph.inputs) * count, 4)[0]
        y, yb = self.view(self.ref(n.output), 0, count, 4)
        k = Kernel("rows.wgsl", "mask_bias", (("H", 1), ("ROW_PT", 1)), (), MASK_BINDINGS)
        start = self.graph.inputs.index(n.inputs[0]) * count
        return [Dispatch(k, {6: inputs, 10: y}, (0, 0, 0, yb, start, 0, 0, count), (ceil(count / 256), 1, 1))]

    def _first_token(self, n: Node, shapes: dict, batch: int, seq: int) -> list[Dispatch]:
        B, S, H = shapes[n.inputs[0]]
        x, xb = self.view(self.ref(n.inputs[0]), 0, B * S * H, self.el)
        y, yb = self.view(self.ref(n.output), 0, B * H, self.el)
        k = Kernel("rows.wgsl", "first_token", (("H", H), ("ROW_PT", ceil(H / ROW_THREADS))), (), FIRST_BINDINGS)
        return [Dispatch(k, {1: x, 5: y}, (B, xb, 0, yb, 0, 0, 0, S), (ceil(B * H / 256), 1, 1))]

    def gemm_kernel(self, activation: str, tm: int) -> Kernel:
        # The deepest K step whose two tiles fit workgroup memory: fewer barriers per FLOP.
        tk = 32 if (tm + GEMM_TN) * 32 * 4 <= self.wg_storage else 16
        return Kernel("gemm.wgsl", "main", (("TM", tm), ("TK", tk)), (("ACT", ACTIVATIONS.index(activation)),),
                      GEMM_BINDINGS)

    @staticmethod
    def gemm_rows(M: int, N: int) -> int:
        """The row tile for an M x N product: 64 (more FMAs per staged element) unless it leaves
        32 or more padded rows idle, or gives a GPU too few workgroups to fill it (small M)."""
        if ceil(M / 64) * 64 - M >= 32 or ceil(M / 64) * ceil(N / GEMM_TN) < GEMM_WIDE_GRID:
            return 32
        return 64

    def _linear(self, n: Node, shapes: dict, batch: int, seq: int) -> list[Dispatch]:
        x, w, b = n.inputs
        K = shapes[x][-1]
        M = prod(shapes[x][:-1])
        N = self.param_shapes[w][0]
        el = self.el
        n_step = self.chunk(N, [K * el], w, GEMM_TN)
        m_step = self.chunk(M, [K * el, N * el], n.output, max(GEMM_TMS))
        out = []
        for m0 in range(0, M, m_step):
            m = min(m_step, M - m0)
            xv, xb = self.view(self.ref(x), m0 * K, m * K, el)
            for n0 in range(0, N, n_step):
                nn = min(n_step, N - n0)
                tm = self.gemm_rows(m, nn)
                k = self.gemm_kernel(n.kwargs["activation"], tm)
                wv, wb = self.view(self.ref(w), n0 * K, nn * K, el)
                bv, bb = self.view(self.ref(b), n0, nn, 4)
                yv, yb = self.view(self.ref(n.output), m0 * N + n0, (m - 1) * N + nn, el)
                out.append(Dispatch(k, {1: xv, 2: wv, 3: bv, 4: yv}, (m, nn, K, xb, K, wb, bb, yb, N),
                                    (ceil(nn / GEMM_TN), ceil(m / tm), 1)))
        return out

    def warm_kernels(self) -> list[Kernel]:
        """Every pipeline any (batch, seq) can use: the 1 x 1 lowering, with each GEMM in every row tile."""
        out = []
        for d in self.lower(infer_shapes(self.graph, self.param_shapes, 1, 1), 1, 1):
            if d.kernel.file == "gemm.wgsl":
                act = ACTIVATIONS[dict(d.kernel.overrides)["ACT"]]
                out += [self.gemm_kernel(act, tm) for tm in GEMM_TMS]
            else:
                out.append(d.kernel)
        return list(dict.fromkeys(out))

    def _attn_kernel(self, entry: str, hidden: int, heads: int, bindings: tuple) -> Kernel:
        hd = hidden // heads
        # K and V tiles (f32) must fit workgroup memory together.
        kt = max(1, min(32, self.wg_storage // (32 * ceil(hd / 4))))
        scale = float(np.float32(1.0 / np.sqrt(hd)))
        return Kernel("attention.wgsl", entry, (("HD", hd), ("NH", heads), ("KT", kt), ("SCALE", scale)), (),
                      bindings)

    def _attention_like(self, n: Node, shapes: dict, batch: int, seq: int, entry: str) -> list[Dispatch]:
        heads = n.kwargs["heads"]
        qkv = n.inputs[0] if entry != "attn_apply" else n.inputs[1]
        hidden = shapes[qkv][-1] // 3
        el = self.el
        per_batch = [seq * 3 * hidden * el, seq * hidden * el]
        if entry != "attention":
            per_batch.append(heads * seq * seq * el)
        step = self.chunk(batch, per_batch, f"{n.output} (one sequence)")
        bindings = APPLY_BINDINGS if entry == "attn_apply" else ATTN_BINDINGS
        k = self._attn_kernel(entry, hidden, heads, bindings)
        out = []
        for b0 in range(0, batch, step):
            nb = min(step, batch - b0)
            views, base = {}, {}
            views[1], base[1] = self.view(self.ref(qkv), b0 * seq * 3 * hidden, nb * seq * 3 * hidden, el)
            if entry == "attn_apply":
                views[4], base[4] = self.view(self.ref(n.inputs[0]), b0 * heads * seq * seq, nb * heads * seq * seq, el)
                views[3], base[3] = self.view(self.ref(n.output), b0 * seq * hidden, nb * seq * hidden, el)
            else:
                views[2], base[2] = self.view(self.ref(n.inputs[1]), b0 * seq, nb * seq, 4)
                per = heads * seq * seq if entry == "attn_probs" else seq * hidden
                views[3], base[3] = self.view(self.ref(n.output), b0 * per, nb * per, el)
            params = (seq, base[1], base.get(2, 0), base[3], base.get(4, 0))
            out.append(Dispatch(k, views, params, (ceil(seq / ATTN_ROWS), heads, nb)))
        return out

    def _attention(self, n, shapes, batch, seq):
        return self._attention_like(n, shapes, batch, seq, "attention")

    def _attn_probs(self, n, shapes, batch, seq):
        return self._attention_like(n, shapes, batch, seq, "attn_probs")

    def _attn_apply(self, n, shapes, batch, seq):
        return self._attention_like(n, shapes, batch, seq, "attn_apply")
