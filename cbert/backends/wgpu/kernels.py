"""The .wgsl kernels as the lowering sees them: each file's Params struct and bindings,
the sizes its code fixes, and the key of a compiled pipeline.

Each ``Params`` dataclass is the ``struct Params`` of its file, field for field and in
order, packed as u32 into the uniform binding 0 (tests/test_wgpu_kernels.py reads the
files to hold them equal).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ROW_THREADS = 128  # RW in rows.wgsl
ELEMENT_THREADS = 256  # @workgroup_size of rows.wgsl's mask_bias and first_token
GEMM_TN = 64  # TN in gemm.wgsl
GEMM_TMS = (32, 64)  # the row-tile variants of gemm.wgsl, one pipeline each, all built at warm-up
ATTN_ROWS = 32  # QT in attention.wgsl
PARAMS_BYTES = 64  # every kernel's Params struct fits 16 u32


@dataclass(frozen=True)
class RowParams:
    """``struct Params`` of rows.wgsl."""

    rows: int = 0
    x_base: int = 0
    r_base: int = 0
    y_base: int = 0
    id0: int = 0
    id1: int = 0
    id2: int = 0
    n: int = 0


@dataclass(frozen=True)
class GemmParams:
    """``struct Params`` of gemm.wgsl."""

    M: int
    N: int
    K: int
    x_base: int
    x_ld: int
    w_base: int
    b_base: int
    y_base: int
    y_ld: int


@dataclass(frozen=True)
class AttnParams:
    """``struct Params`` of attention.wgsl."""

    S: int
    qkv_base: int = 0
    bias_base: int = 0
    out_base: int = 0
    probs_base: int = 0
    B: int = 1


U, R, W = "uniform", "read", "write"


@dataclass(frozen=True)
class Shader:
    """One .wgsl file: its Params dataclass and its storage bindings, as the file declares them."""

    file: str
    params: type
    bindings: Mapping[str, tuple[int, str]]  # variable -> (binding, R or W); binding 0 is always the Params


ROWS = Shader("rows.wgsl", RowParams, {"x": (1, R), "res": (2, R), "ln_w": (3, R), "ln_b": (4, R), "y": (5, W),
                                       "ids": (6, R), "table0": (7, R), "table1": (8, R), "table2": (9, R),
                                       "ybias": (10, W)})
GEMM = Shader("gemm.wgsl", GemmParams, {"x": (1, R), "w": (2, R), "bias": (3, R), "y": (4, W)})
ATTN = Shader("attention.wgsl", AttnParams, {"qkv": (1, R), "bias": (2, R), "out": (3, W), "probs": (4, R)})


@dataclass(frozen=True)
class Kernel:
    """A pipeline: file, entry point, const and override values, and its binding layout."""

    file: str
    entry: str
    consts: tuple = ()
    overrides: tuple = ()
    bindings: tuple = ()


def gemm_tile(tm: int, wg_storage: int) -> tuple:
    """gemm.wgsl's tile constants for TM rows: the deepest K step whose two tiles fit
    workgroup memory (fewer barriers per FLOP)."""
    tk = 32 if (tm + GEMM_TN) * 32 * 4 <= wg_storage else 16
    return ("TM", tm), ("TK", tk)
