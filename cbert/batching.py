"""Token-budget batching: which sequences share a forward, and how long each forward's rows are.

Pure functions over sequence lengths, no model. Rows are padded to a small set of sequence
buckets, so a workload of every length meets a handful of shapes, and sequences are packed,
shortest first, into batches whose padded cost (rows x bucket) stays within a token budget,
as text-embeddings-inference's queue does (``core/src/queue.rs``). The server and
``cbert.ray.Embedder`` (so ``cbert embed-corpus``) batch through here; ``model.embed`` does when
given ``max_batch_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# Buckets: multiples of 16 up to 128 (short notes differ in length by little, and pay little
# for padding), then multiples of 64 up to the model's maximum, which is always a bucket.
FINE_STEP, FINE_LIMIT, COARSE_STEP = 16, 128, 64

# A forward's fixed cost (reading every weight once, launching each op) counted in padded tokens:
# the server's default ``forward_tokens``. Measured with ``benchmarks/bench_serve.py --engine-only``
# (all-MiniLM-L6-v2 on numpy, one BLAS thread): 32 packed fastest of 0, 32, 64, 128 and "budget only".
FORWARD_COST_TOKENS = 32
# The default token budget of one forward, TEI's --max-batch-tokens: the server's and embed-corpus's.
MAX_BATCH_TOKENS = 16384


def seq_buckets(max_len: int) -> tuple[int, ...]:
    """Every padded sequence length for a model of ``max_len`` positions, ascending."""
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len={max_len!r}; expected a positive integer")
    fine = range(FINE_STEP, min(FINE_LIMIT, max_len) + 1, FINE_STEP)
    coarse = range(FINE_LIMIT + COARSE_STEP, max_len + 1, COARSE_STEP)
    buckets = sorted({*fine, *coarse, max_len})
    return tuple(buckets)


def bucket_for(length: int, max_len: int) -> int:
    """The smallest bucket that holds a sequence of ``length`` tokens."""
    if not 1 <= length <= max_len:
        raise ValueError(f"a sequence of {length} tokens does not fit a model of {max_len} positions")
    return next(b for b in seq_buckets(max_len) if b >= length)


@dataclass(frozen=True)
class Batch:
    """One forward: ``indices`` into the caller's list (shortest first), rows padded to ``seq``."""

    indices: tuple[int, ...]
    seq: int

    @property
    def padded_tokens(self) -> int:
        return len(self.indices) * self.seq


def plan_batches(lengths: Sequence[int], max_len: int, max_tokens: int, max_batch_size: int | None = None,
                 forward_tokens: int = 0) -> list[Batch]:
    """Pack sequences of ``lengths`` into batches of padded cost (rows x bucket) <= ``max_tokens``
    and at most ``max_batch_size`` rows.

    Sequences are taken in order of length (ties in their given order), and each batch grows
    until the next one would break a limit, or would pad the rows already in the batch (to its
    larger bucket) by more tokens than ``forward_tokens``, the fixed cost of one more forward
    counted in padded tokens: 0 keeps every batch to one bucket, a large value packs by the
    budget alone. A sequence whose bucket alone exceeds the budget gets a batch of its own.
    Every index appears in exactly one batch.
    """
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens!r}; expected a positive integer")
    if max_batch_size is not None and (not isinstance(max_batch_size, int) or max_batch_size < 1):
        raise ValueError(f"max_batch_size={max_batch_size!r}; expected a positive integer or None")
    if not isinstance(forward_tokens, int) or forward_tokens < 0:
        raise ValueError(f"forward_tokens={forward_tokens!r}; expected a non-negative integer")
    buckets = seq_buckets(max_len)
    for i, n in enumerate(lengths):
        if not isinstance(n, int) or not 1 <= n <= max_len:
            raise ValueError(f"lengths[{i}] = {n!r}; expected an integer in [1, {max_len}]")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[Batch] = []
    rows: list[int] = []
    seq = 0
    b = 0  # index into buckets; lengths only grow along ``order``
    for i in order:
        while buckets[b] < lengths[i]:
            b += 1
        need = buckets[b]
        full = max_batch_size is not None and len(rows) >= max_batch_size
        over = (len(rows) + 1) * need > max_tokens
        wasteful = len(rows) * (need - seq) > forward_tokens
        if rows and (full or over or wasteful):
            batches.append(Batch(tuple(rows), seq))
            rows = []
        rows.append(i)
        seq = need
    if rows:
        batches.append(Batch(tuple(rows), seq))
    return batches


def restore_order(batches: Sequence[Batch], per_batch: Sequence[Sequence[T]]) -> list[T]:
    """Per-row results of each batch, put back in the order of the original list."""
    if len(per_batch) != len(batches):
        raise ValueError(f"{len(per_batch)} result lists for {len(batches)} batches")
    n = sum(len(b.indices) for b in batches)
    out: list = [None] * n
    placed = [False] * n
    for batch, results in zip(batches, per_batch):
        if len(results) != len(batch.indices):
            raise ValueError(f"a batch of {len(batch.indices)} rows came back with {len(results)} results")
        for i, r in zip(batch.indices, results):
            if placed[i]:
                raise ValueError(f"index {i} is in more than one batch")
            out[i], placed[i] = r, True
    return out
