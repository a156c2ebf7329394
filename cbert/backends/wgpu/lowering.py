"""The wgpu lowering table: op -> the kernel that computes it, as data, like the numpy ``TABLE``.

An :class:`Entry` names its kernel (a ``.wgsl`` file and an entry point), the shader
variable each operand and the result bind to, its grid (a function of the kernel's
``Params`` and constants), its shape constants, and the split that turns one node into
dispatches for one (batch, seq). Any tensor range larger than maxStorageBufferBindingSize
is split there, into dispatches over sub-ranges, so the adapter's limit is never hit as a
validation error. Buffers are named symbolically (a value, a parameter, the inputs
buffer); the executor resolves them.

The kernels themselves (each file's ``Params`` and bindings) are described in :mod:`.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from math import ceil, prod

import numpy as np

from ...ir import ACTIVATIONS, Graph, Node, Op
from .kernels import (
    ATTN,
    ATTN_ROWS,
    ELEMENT_THREADS,
    GEMM,
    GEMM_TMS,
    GEMM_TN,
    ROW_THREADS,
    ROWS,
    AttnParams,
    GemmParams,
    Kernel,
    RowParams,
    Shader,
    U,
    gemm_tile,
)
from .planner import value_itemsize

GEMM_WIDE_GRID = 32  # fewer 64-row workgroups than this cannot fill even a small GPU: take 32-row tiles
MAX_GROUPS = 65535  # WebGPU's guaranteed maxComputeWorkgroupsPerDimension


@dataclass(frozen=True)
class Dispatch:
    kernel: Kernel
    views: dict  # binding -> (ref, byte offset, byte size); ref is ("value"|"param"|"inputs", name)
    params: object  # the kernel's Params dataclass
    grid: tuple

    def uniforms(self) -> bytes:
        return np.array(astuple(self.params), np.uint32).tobytes()


# A split: the node's operands as views, per dispatch. Maps a shader variable to
# (ref, byte offset, byte size), with the Params of that dispatch.
Views = dict[str, tuple]


@dataclass(frozen=True)
class Entry:
    """How one op runs. ``operands`` names the shader variable each node input binds to, in
    order (a node may have fewer inputs than named: EMBED with one or two tables);
    ``result`` the variable its output binds to."""

    shader: Shader
    entry: str
    operands: tuple[str, ...]
    result: str
    grid: Callable[[object, dict], tuple[int, int, int]]  # (Params, constants) -> workgroups
    constants: Callable[[Lowering, Node, dict, object], tuple[tuple, tuple]]  # -> (consts, overrides)
    split: Callable[[Lowering, Node, dict, Entry], Iterator[tuple[Views, object]]]

    @property
    def layout(self) -> tuple:
        used = {self.shader.bindings[v] for v in (*self.operands, self.result)}
        return ((0, U), *sorted(used))

    def bound(self, n: Node) -> list[tuple[str, str]]:
        """(shader variable, value) for each operand, then the result."""
        return [*zip(self.operands, n.inputs), (self.result, n.output)]


# -- the plan context: buffers, itemsizes, the adapter's limits ----------------------------


class Lowering:
    """What a lowering reads besides the node: shapes of parameters, itemsizes, the adapter's limits."""

    def __init__(self, graph: Graph, param_shapes: dict, itemsize: int, max_binding: int, align: int,
                 wg_storage: int):
        self.graph, self.param_shapes, self.el = graph, param_shapes, itemsize
        self.value_itemsizes = value_itemsize(graph, itemsize)
        self.align = align
        # Room for rounding a range down to the offset alignment and its size up to 4 bytes.
        self.limit = max_binding - align - 4
        self.wg_storage = wg_storage

    def lower(self, shapes: dict) -> list[Dispatch]:
        """Every dispatch of a forward whose values have ``shapes``, in order."""
        out: list[Dispatch] = []
        for n in self.graph.nodes:
            if n.op not in TABLE:
                raise ValueError(f"backend='wgpu' cannot lower op {n.op.value!r} (node {n.output!r})")
            entry = TABLE[n.op]
            for views, params in entry.split(self, n, shapes, entry):
                consts, overrides = entry.constants(self, n, shapes, params)
                kernel = Kernel(entry.shader.file, entry.entry, consts, overrides, entry.layout)
                bound = {entry.shader.bindings[var][0]: view for var, view in views.items()}
                out.append(Dispatch(kernel, bound, params, entry.grid(params, dict(consts))))
        return out

    def warm_kernels(self, shapes: dict) -> list[Kernel]:
        """Every pipeline any (batch, seq) can use: those of ``shapes``, each GEMM in every row tile."""
        out = []
        for d in self.lower(shapes):
            k = d.kernel
            variants = [gemm_tile(tm, self.wg_storage) for tm in GEMM_TMS] if k.file == GEMM.file else [k.consts]
            out += [Kernel(k.file, k.entry, consts, k.overrides, k.bindings) for consts in variants]
        return list(dict.fromkeys(out))

    # -- views -------------------------------------------------------------------------------

    def itemsize(self, name: str) -> int:
        """Bytes per element of a value as stored: ids are i32, vectors and the mask f32."""
        if name in self.param_shapes:
            return 4 if len(self.param_shapes[name]) < 2 else self.el
        if name in self.graph.inputs:
            return 4
        return self.value_itemsizes[name]

    def view(self, name: str, start: int, count: int) -> tuple[tuple, int]:
        """The aligned binding that covers elements [start, start + count) of ``name``, and the
        start's index in it. Graph inputs live in sections of one int32 inputs buffer."""
        if name in self.graph.inputs:
            ref = ("inputs", "")
        else:
            ref = ("param", name) if name in self.param_shapes else ("value", name)
        itemsize = self.itemsize(name)
        lo_byte = start * itemsize
        lo = lo_byte - lo_byte % self.align
        hi = -(-(lo_byte + count * itemsize) // 4) * 4
        return (ref, lo, hi - lo), (lo_byte - lo) // itemsize

    def whole(self, name: str, shapes: dict) -> tuple:
        return self.view(name, 0, prod(shapes[name]))[0]

    def inputs_buffer(self, shapes: dict) -> tuple[tuple, dict[str, int]]:
        """A view of the whole inputs buffer and the element offset of each input's section in it."""
        count = prod(shapes[self.graph.inputs[0]])
        view = (("inputs", ""), 0, len(self.graph.inputs) * count * 4)
        return view, {name: i * count for i, name in enumerate(self.graph.inputs)}

    def chunk(self, total: int, item_bytes: list[int], what: str, multiple: int = 1) -> int:
        """How many items (rows, sequences) fit one binding for every operand."""
        n = self.limit // max(item_bytes)
        if n < 1:
            raise ValueError(f"backend='wgpu': one row of {what} ({max(item_bytes)} bytes) exceeds this adapter's "
                             f"maxStorageBufferBindingSize ({self.limit} usable bytes)")
        if n >= total:
            return total
        return max(multiple, n // multiple * multiple) if n >= multiple else n


# -- splits: one node -> its dispatches' views and Params -------------------------------------


def _row_ranges(lw: Lowering, n: Node, shapes: dict) -> Iterator[tuple[int, int, int]]:
    """(first row, rows, row length) of each binding-sized range of the output's rows."""
    H = shapes[n.output][-1]
    rows = prod(shapes[n.output][:-1])
    step = min(MAX_GROUPS, lw.chunk(rows, [H * lw.itemsize(n.output)], n.output))
    for r0 in range(0, rows, step):
        yield r0, min(step, rows - r0), H


def split_rows(lw: Lowering, n: Node, shapes: dict, entry: Entry):
    """One workgroup per row: operands shaped like the output are cut by rows, vectors bound whole."""
    for r0, m, H in _row_ranges(lw, n, shapes):
        views, base = {}, {}
        for var, name in entry.bound(n):
            if len(shapes[name]) == 1:  # LayerNorm weight and bias
                views[var] = lw.whole(name, shapes)
            else:
                views[var], base[var] = lw.view(name, r0 * H, m * H)
        yield views, RowParams(rows=m, x_base=base.get("x", 0), r_base=base.get("res", 0), y_base=base["y"])


def split_embed(lw: Lowering, n: Node, shapes: dict, entry: Entry):
    """Rows, as :func:`split_rows`, each reading its slice of the id sections of the inputs buffer."""
    tables = n.inputs[2::2]
    if not 1 <= len(tables) <= 3:
        raise ValueError(f"backend='wgpu': EMBED sums 1 to 3 tables; node {n.output!r} has {len(tables)}")
    inputs, sections = lw.inputs_buffer(shapes)
    views = {"ids": inputs}
    for var, name in entry.bound(n)[:-1]:
        if var.startswith("table") and prod(shapes[name]) * lw.itemsize(name) > lw.limit:
            # A gather reads any row, so it cannot be split by rows like a GEMM.
            raise ValueError(f"backend='wgpu': embedding table {name} ({prod(shapes[name]) * lw.itemsize(name)} "
                             f"bytes) exceeds this adapter's maxStorageBufferBindingSize ({lw.limit} usable bytes)")
        if var != "ids":
            views[var] = lw.whole(name, shapes)
    for var in ("table1", "table2"):
        views.setdefault(var, views["table0"])  # unread (NTAB), but every binding needs a buffer
    ids = [sections[i] for i in n.inputs[3::2]] + [0] * (3 - len(tables))
    for r0, m, H in _row_ranges(lw, n, shapes):
        y, yb = lw.view(n.output, r0 * H, m * H)
        yield {**views, "y": y}, RowParams(rows=m, y_base=yb, id0=ids[0] + r0, id1=ids[1] + r0, id2=ids[2] + r0)


def split_mask(lw: Lowering, n: Node, shapes: dict, entry: Entry):
    count = prod(shapes[n.output])
    inputs, sections = lw.inputs_buffer(shapes)
    y, yb = lw.view(n.output, 0, count)
    yield {"ids": inputs, "ybias": y}, RowParams(y_base=yb, id0=sections[n.inputs[0]], n=count)


def split_first_token(lw: Lowering, n: Node, shapes: dict, entry: Entry):
    B, S, H = shapes[n.inputs[0]]
    x, xb = lw.view(n.inputs[0], 0, B * S * H)
    y, yb = lw.view(n.output, 0, B * H)
    yield {"x": x, "y": y}, RowParams(rows=B, x_base=xb, y_base=yb, n=S)


def split_gemm(lw: Lowering, n: Node, shapes: dict, entry: Entry):
    """Y = act(X W^T + b) in blocks of rows of X and of W whenever one binding cannot hold them."""
    x, w, b = n.inputs
    K, N = shapes[x][-1], shapes[w][0]
    M = prod(shapes[x][:-1])
    el = lw.itemsize(n.output)
    n_step = lw.chunk(N, [K * lw.itemsize(w)], w, GEMM_TN)
    m_step = lw.chunk(M, [K * lw.itemsize(x), N * el], n.output, max(GEMM_TMS))
    for m0 in range(0, M, m_step):
        m = min(m_step, M - m0)
        xv, xb = lw.view(x, m0 * K, m * K)
        for n0 in range(0, N, n_step):
            nn = min(n_step, N - n0)
            wv, wb = lw.view(w, n0 * K, nn * K)
            bv, bb = lw.view(b, n0, nn)
            yv, yb = lw.view(n.output, m0 * N + n0, (m - 1) * N + nn)
            yield ({"x": xv, "w": wv, "bias": bv, "y": yv},
                   GemmParams(M=m, N=nn, K=K, x_base=xb, x_ld=K, w_base=wb, b_base=bb, y_base=yb, y_ld=N))


def _qkv(n: Node) -> str:
    """The packed q, k, v an attention node reads."""
    return dict(TABLE[n.op].bound(n))["qkv"]


def split_sequences(lw: Lowering, n: Node, shapes: dict, entry: Entry):
    """Attention over whole sequences: every operand is [batch, ...], cut into runs of sequences."""
    bound = entry.bound(n)
    batch, seq = shapes[_qkv(n)][:2]
    per = {name: prod(shapes[name][1:]) for _, name in bound}
    step = lw.chunk(batch, [per[name] * lw.itemsize(name) for _, name in bound], f"{n.output} (one sequence)")
    for b0 in range(0, batch, step):
        nb = min(step, batch - b0)
        views, base = {}, {}
        for var, name in bound:
            views[var], base[var] = lw.view(name, b0 * per[name], nb * per[name])
        yield views, AttnParams(S=seq, qkv_base=base["qkv"], bias_base=base.get("bias", 0), out_base=base["out"],
                                probs_base=base.get("probs", 0), B=nb)


# -- constants: what a pipeline is specialised on ---------------------------------------------


def row_constants(lw: Lowering, n: Node, shapes: dict, params) -> tuple[tuple, tuple]:
    H = shapes[n.output][-1]
    return (("H", H), ("ROW_PT", ceil(H / ROW_THREADS))), ()


def ln_constants(lw: Lowering, n: Node, shapes: dict, params) -> tuple[tuple, tuple]:
    consts, _ = row_constants(lw, n, shapes, params)
    overrides = (("EPS", float(n.kwargs["eps"])),)
    if n.op is Op.EMBED:
        overrides += (("NTAB", len(n.inputs[2::2])),)
    return consts, overrides


def mask_constants(lw: Lowering, n: Node, shapes: dict, params) -> tuple[tuple, tuple]:
    return (("H", 1), ("ROW_PT", 1)), ()


def first_token_constants(lw: Lowering, n: Node, shapes: dict, params) -> tuple[tuple, tuple]:
    return row_constants(lw, n, shapes, params)


def gemm_rows(M: int, N: int) -> int:
    """The row tile for an M x N product: 64 (more FMAs per staged element) unless it leaves
    32 or more padded rows idle, or gives a GPU too few workgroups to fill it (small M)."""
    if ceil(M / 64) * 64 - M >= 32 or ceil(M / 64) * ceil(N / GEMM_TN) < GEMM_WIDE_GRID:
        return 32
    return 64


def gemm_constants(lw: Lowering, n: Node, shapes: dict, params: GemmParams) -> tuple[tuple, tuple]:
    activation = ("ACT", ACTIVATIONS.index(n.kwargs["activation"]))
    return gemm_tile(gemm_rows(params.M, params.N), lw.wg_storage), (activation,)


def attention_constants(lw: Lowering, n: Node, shapes: dict, params) -> tuple[tuple, tuple]:
    heads = n.kwargs["heads"]
    hd = shapes[_qkv(n)][-1] // 3 // heads
    # K and V tiles (f32) must fit workgroup memory together.
    kt = max(1, min(32, lw.wg_storage // (32 * ceil(hd / 4))))
    scale = float(np.float32(1.0 / np.sqrt(hd)))
    return (("HD", hd), ("NH", heads), ("KT", kt), ("SCALE", scale)), ()


# -- grids ------------------------------------------------------------------------------------


def one_per_row(p: RowParams, c: dict) -> tuple[int, int, int]:
    return p.rows, 1, 1


def attention_grid(p: AttnParams, c: dict) -> tuple[int, int, int]:
    return ceil(p.S / ATTN_ROWS), c["NH"], p.B


# -- the table --------------------------------------------------------------------------------

TABLE: dict[Op, Entry] = {
    Op.EMBED: Entry(ROWS, "embed", ("ln_w", "ln_b", "table0", "ids", "table1", "ids", "table2", "ids"), "y",
                    one_per_row, ln_constants, split_embed),
    Op.MASK_BIAS: Entry(ROWS, "mask_bias", ("ids",), "ybias",
                        lambda p, c: (ceil(p.n / ELEMENT_THREADS), 1, 1), mask_constants, split_mask),
    Op.LINEAR: Entry(GEMM, "main", ("x", "w", "bias"), "y",
                     lambda p, c: (ceil(p.N / GEMM_TN), ceil(p.M / c["TM"]), 1), gemm_constants, split_gemm),
    Op.ATTENTION: Entry(ATTN, "attention", ("qkv", "bias"), "out", attention_grid, attention_constants,
                        split_sequences),
    Op.ATTN_PROBS: Entry(ATTN, "attn_probs", ("qkv", "bias"), "out", attention_grid, attention_constants,
                         split_sequences),
    Op.ATTN_APPLY: Entry(ATTN, "attn_apply", ("probs", "qkv"), "out", attention_grid, attention_constants,
                         split_sequences),
    Op.ADD_LN: Entry(ROWS, "add_ln", ("x", "res", "ln_w", "ln_b"), "y", one_per_row, ln_constants, split_rows),
    Op.LAYERNORM: Entry(ROWS, "layernorm", ("x", "ln_w", "ln_b"), "y", one_per_row, ln_constants, split_rows),
    Op.FIRST_TOKEN: Entry(ROWS, "first_token", ("x",), "y",
                          lambda p, c: (ceil(p.rows * c["H"] / ELEMENT_THREADS), 1, 1), first_token_constants,
                          split_first_token),
}
