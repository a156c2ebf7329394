"""The GEMM tuner: an explicit step (``cbert tune``) that measures a GEMM plan once per machine and model shape.

For each row range of ``plan.ROW_RANGES`` and each (K, N) weight shape of the model, it
times one BLAS call against ``linear_split`` at every column chunk that fits, over as many
weights of that shape as the model has (a weight that stayed in cache between repeats
would hide the packing cost the split avoids). Each range is timed at its largest row
count, where the split's edge is smallest: the packing it saves is a fixed cost per call,
the work grows with the rows.

All or nothing, per row range: a threaded BLAS call leaves OpenBLAS's worker spinning for
a while, and beside the two split streams that is three busy threads on two cores
(measured: a forward with one GEMM shape left whole ran at 77 ms median against 55 with
all four split). So the split is taken for every shape of a range where it fits, if all of
them together beat the whole calls by 5%, or for none.

Import through the backend registry (``cbert.backends.backend_class("mlx")`` first): this
module imports ``mlx.core``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

from .lowering import Precision, kn_layout, linear, linear_split
from .plan import ROW_RANGES, GemmPlan, Shapes, range_name, save

# linear_split is tried at these column chunks (N must split into two halves of whole chunks).
SPLIT_CHUNKS = (32, 16, 8)
# Take the split only where it beats the whole calls by this much (timing noise is a few %).
MARGIN = 0.95


def chunks_that_fit(n: int) -> list[int]:
    return [c for c in SPLIT_CHUNKS if n % (2 * c) == 0]


def _best_time(run: Callable, repeats: int) -> float:
    mx.eval(run())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(run())
        best = min(best, time.perf_counter() - t)
    return best


def _time_shape(p: Precision, rows: int, k: int, ws: list[mx.array], ws_kn: list[mx.array] | None,
                bs: list[mx.array], aux: mx.Stream, repeats: int) -> dict[int | None, float]:
    """Seconds for one BLAS call per weight (None) and for linear_split at each chunk that fits."""
    x = mx.random.normal((rows, k), key=mx.random.key(rows))
    mx.eval(x)
    if ws_kn is not None:  # the executor runs whole calls on its [K, N] copy here
        plain = mx.compile(lambda x, ws, bs: [linear(p, x, w, b, "none", "kn") for w, b in zip(ws, bs)])
        times: dict[int | None, float] = {None: _best_time(lambda: plain(x, ws_kn, bs), repeats)}
    else:
        plain = mx.compile(lambda x, ws, bs: [linear(p, x, w, b) for w, b in zip(ws, bs)])
        times = {None: _best_time(lambda: plain(x, ws, bs), repeats)}
    for c in chunks_that_fit(ws[0].shape[0]):
        split = mx.compile(lambda x, ws, bs, c=c: [linear_split(p, x, w, b, "none", c, aux) for w, b in zip(ws, bs)])
        times[c] = _best_time(lambda split=split: split(x, ws, bs), repeats)
    return times


def tune_gemms(shapes: Shapes, repeats: int = 3,
               progress: Callable[[str], None] | None = None) -> tuple[GemmPlan, Path]:
    """Measure the GEMM plan for a model with these (K, N) -> count weights on this machine's CPU.

    Writes it to the plan cache (``plan.cache_dir()``; temp file + rename) and returns the
    plan and its file. Random weights stand in for the model's: a timing depends on shapes only.
    """
    if not shapes:
        raise ValueError("tune_gemms: the model has no LINEAR (GEMM) nodes to plan")
    p = Precision(store=mx.float32, gemm=mx.float32, cpu=True)
    device = mx.Device(mx.cpu)
    chunks: dict[tuple[int, int, int], int] = {}
    measured: list[dict] = []
    with mx.stream(device):
        aux = mx.new_stream(device)
        weights, weights_kn, biases = {}, {}, {}
        for i, ((k, n), count) in enumerate(sorted(shapes.items())):
            weights[(k, n)] = [mx.random.normal((n, k), key=mx.random.key(i * 1000 + j)) * 0.02 for j in range(count)]
            biases[(k, n)] = [mx.zeros((n,)) for _ in range(count)]
            if kn_layout(k, n):
                weights_kn[(k, n)] = [mx.contiguous(w.T) for w in weights[(k, n)]]
        mx.eval([a for group in (weights, weights_kn, biases) for arrays in group.values() for a in arrays])
        for r, (_, rows) in enumerate(ROW_RANGES):
            if progress:
                progress(f"rows {range_name(r)}: timing {len(shapes)} GEMM shapes at {rows} rows")
            timed = {key: _time_shape(p, rows, key[0], weights[key], weights_kn.get(key), biases[key], aux, repeats)
                     for key in sorted(shapes)}
            best = {key: min((c for c in t if c), key=t.get, default=None) for key, t in timed.items()}
            whole = sum(t[None] for t in timed.values())
            split = sum(t[best[key]] for key, t in timed.items())
            taken = any(best.values()) and split <= MARGIN * whole
            if taken:
                chunks.update({(k, n, r): c for (k, n), c in best.items() if c})
            measured.append({
                "rows": range_name(r), "timed_at_rows": rows, "whole_ms": round(whole * 1e3, 4),
                "split_ms": round(split * 1e3, 4), "split_taken": bool(taken),
                "shapes": [{"k": k, "n": n, "count": shapes[(k, n)],
                            "ms": {("whole" if c is None else f"chunk {c}"): round(t * 1e3, 4) for c, t in tm.items()}}
                           for (k, n), tm in timed.items()],
            })
    path = save(GemmPlan(chunks), shapes, measured)
    return GemmPlan(chunks, str(path)), path
