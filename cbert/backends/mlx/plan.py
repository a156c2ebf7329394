"""GEMM plans: which of a model's CPU GEMMs run as ``linear_split``, and their cache on disk.

A plan says, per (K, N, row range), whether a LINEAR of that weight shape, meeting that
many rows, runs as one BLAS call or as ``lowering.linear_split`` at a given column chunk.
Rows are bucketed (``ROW_RANGES``), so a new batch size or sequence length needs no new
measurement; past the last range one BLAS call already runs at the GEMM peak.

Plans are measured by an explicit step (:func:`cbert.backends.mlx.tuning.tune_gemms`, the
``cbert tune`` command), once per machine and model shape, and written as JSON under
``$XDG_CACHE_HOME/cbert/mlx-gemm-plans`` (``~/.cache/cbert/...`` when unset), one file per
(machine, set of GEMM shapes). The machine is its CPU model, core count, the BLAS libmlx
calls and its thread count, and the mlx version: a plan measured elsewhere says nothing
here. The executor reads the plan when it compiles a graph (:func:`find_plan`); with none
on disk every GEMM is one BLAS call and nothing is timed.

This module does not import ``mlx.core``, so ``cbert devices`` can list plans cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ...errors import warn
from ...ir import Graph, Op
from . import _blas

FORMAT = 1
# Rows a GEMM meets, bucketed: 1 x 32 tokens is 32 rows, a pooler at batch 8 is 8 rows.
# linear_split is never planned past 256 rows (measured: at 1024 rows one BLAS call runs
# at 196 GFLOP/s here, the machine's GEMM peak).
ROW_RANGES = ((1, 16), (17, 64), (65, 256))

Shapes = Mapping[tuple[int, int], int]  # (K, N) -> how many LINEAR nodes have a weight of that shape


def gemm_shapes(graph: Graph, param_shapes: Mapping[str, tuple[int, ...]]) -> dict[tuple[int, int], int]:
    """(K, N) -> how many LINEAR nodes of ``graph`` have a weight of that shape.

    A weight made by a CONCAT of parameters (the fused QKV) gets its shape from the parts,
    so an unfolded graph and its folded form give the same answer.
    """
    shapes = dict(param_shapes)
    counts: dict[tuple[int, int], int] = {}
    for n in graph.nodes:
        if n.op is Op.CONCAT:
            parts = [shapes[i] for i in n.inputs]
            axis = n.kwargs["axis"]
            shapes[n.output] = tuple(sum(s[d] for s in parts) if d == axis else parts[0][d]
                                     for d in range(len(parts[0])))
        elif n.op is Op.LINEAR:
            out_features, in_features = shapes[n.inputs[1]]
            counts[(in_features, out_features)] = counts.get((in_features, out_features), 0) + 1
    return counts


def row_range(rows: int) -> int | None:
    """The index in ``ROW_RANGES`` that holds ``rows``, or None past the last one."""
    for i, (lo, hi) in enumerate(ROW_RANGES):
        if lo <= rows <= hi:
            return i
    return None


def range_name(i: int) -> str:
    lo, hi = ROW_RANGES[i]
    return f"{lo}-{hi}"


@dataclass(frozen=True)
class GemmPlan:
    """Column chunk per (K, N, row range index) where a GEMM runs as ``linear_split``; else one BLAS call.

    ``source`` says where it came from: the file it was read from, "explicit" (given to
    ``MLXBackend(gemm_plan=...)``), or "none" (no plan on disk).
    """

    chunks: Mapping[tuple[int, int, int], int] = field(default_factory=dict)
    source: str = "explicit"

    def chunk(self, k: int, n: int, rows: int) -> int | None:
        r = row_range(rows)
        return None if r is None else self.chunks.get((k, n, r))

    def splits(self, k: int, n: int) -> bool:
        """Whether a (K, N) GEMM is split at some row count (its weight is then kept [N, K])."""
        return any((k, n, r) in self.chunks for r in range(len(ROW_RANGES)))

    def describe(self) -> str:
        if not self.chunks:
            return "one BLAS call per GEMM"
        parts = []
        for r in range(len(ROW_RANGES)):
            here = sorted((k, n, c) for (k, n, rr), c in self.chunks.items() if rr == r)
            if here:
                parts.append(f"rows {range_name(r)}: " + ", ".join(f"{k}->{n} at {c}" for k, n, c in here))
        return "linear_split for " + "; ".join(parts) + "; one BLAS call elsewhere"


NO_PLAN = GemmPlan(source="none")


# -- the machine a plan was measured on ---------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mlx_version() -> str:
    core = sys.modules.get("mlx.core")
    if core is not None:  # loaded already (the executor's case): no package metadata scan (~90 ms)
        return core.__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlx")
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, object]:
    """What a GEMM timing depends on besides the shapes. Read after the BLAS is loaded."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "blas": _blas.blas_in_use(),
            "blas_threads": _blas.blas_threads(), "mlx": _mlx_version()}


# -- the cache on disk --------------------------------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cbert" / "mlx-gemm-plans"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def _shape_key(shapes: Iterable[tuple[int, int]]) -> list[list[int]]:
    return sorted([int(k), int(n)] for k, n in shapes)


def plan_path(shapes: Shapes, on: Mapping[str, object] | None = None) -> Path:
    """The file for this machine (or ``on``) and this set of GEMM shapes."""
    return cache_dir() / f"{_digest(on or machine())}-{_digest(_shape_key(shapes))}.json"


def save(plan: GemmPlan, shapes: Shapes, measured: list[dict]) -> Path:
    """Write ``plan`` (with the timings that chose it) for this machine; temp file + rename."""
    on = machine()
    path = plan_path(shapes, on)
    record = {
        "format": FORMAT,
        "machine": on,
        "gemm_shapes": [[k, n, shapes[(k, n)]] for k, n in _shape_key(shapes)],
        "row_ranges": [list(r) for r in ROW_RANGES],
        "split": [{"k": k, "n": n, "rows": range_name(r), "chunk": c} for (k, n, r), c in sorted(plan.chunks.items())],
        "measured": measured,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> tuple[dict, GemmPlan]:
    """The record and its plan; ValueError naming the file and the field when it is not a plan."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable GEMM plan ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path}: expected a GEMM plan of format {FORMAT}")
    ranges = {range_name(i): i for i in range(len(ROW_RANGES))}
    chunks = {}
    for entry in record.get("split", []):
        try:
            k, n, c, r = int(entry["k"]), int(entry["n"]), int(entry["chunk"]), ranges[entry["rows"]]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{path}: 'split' entry {entry!r}: expected k, n, chunk and rows "
                             f"(one of {', '.join(ranges)})") from None
        if c < 1 or n % (2 * c):
            raise ValueError(f"{path}: 'split' entry {entry!r}: chunk must be a positive divisor of n / 2")
        chunks[(k, n, r)] = c
    try:
        {(int(k), int(n)) for k, n, _ in record["gemm_shapes"]}
    except (TypeError, KeyError, ValueError):
        raise ValueError(f"{path}: 'gemm_shapes': expected a list of [K, N, count]") from None
    return record, GemmPlan(chunks, str(path))


def _readable(path: Path) -> tuple[dict, GemmPlan] | None:
    try:
        return _read(path)
    except ValueError as e:
        warn(f"{e}; ignored (run `cbert tune` to measure the plan again)")
        return None


def find_plan(shapes: Shapes) -> GemmPlan:
    """The plan measured on this machine for these GEMM shapes, or ``NO_PLAN``.

    A graph cut from a bigger one (a head moved to the host, say) has a subset of its
    shapes: the plan on disk with the fewest shapes that still covers every one here is
    taken (the file for exactly these shapes, where there is one).
    """
    on = machine()
    want = {tuple(s) for s in _shape_key(shapes)}
    best: tuple[int, GemmPlan] | None = None
    for path in sorted(cache_dir().glob(f"{_digest(on)}-*.json")):
        found = _readable(path)
        if not found or found[0].get("machine") != on:
            continue
        have = {(int(k), int(n)) for k, n, _ in found[0]["gemm_shapes"]}
        if want <= have and (best is None or len(have) < best[0]):
            best = (len(have), found[1])
    return best[1] if best else NO_PLAN


def list_plans() -> list[str]:
    """One line per plan file on disk: this machine's or another's, its shapes and what it splits."""
    on = machine()
    lines = []
    for path in sorted(cache_dir().glob("*.json")):
        try:
            record, plan = _read(path)
        except ValueError as e:
            lines.append(f"{e}")
            continue
        whose = "this machine" if record.get("machine") == on else f"another machine ({record.get('machine')})"
        shapes = ", ".join(f"{k}->{n} x{c}" for k, n, c in record["gemm_shapes"])
        lines.append(f"{path.name}: {whose}, measured {record.get('created', '?')}; GEMMs {shapes}; "
                     f"{plan.describe()}")
    return lines
