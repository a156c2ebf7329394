"""The queue and the one worker that runs a model: windows from every request, packed into
forwards by the token budget, one forward at a time, off the event loop.

Each round takes the batch (by :func:`cbert.batching.plan_batches` over everything waiting)
that holds the oldest waiting window, so nothing starves and late arrivals join the next
forward. A request's windows may span several forwards; when its last window is done its
results go back to the event loop that asked.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..batching import FORWARD_COST_TOKENS, plan_batches, seq_buckets
from ..tasks import pool
from ..tasks.windows import Window, pad
from .metrics import Metrics

OUTPUTS = ("pooled", "logits")  # per window: the pooled last_hidden_state, or the classifier's logits row


class QueueFull(Exception):
    """More inputs waiting than --max-queue allows."""


@dataclass(eq=False)
class Job:
    """One request's windows and, once they are all through the model, one output per window."""

    windows: list[Window]
    output: str
    n_inputs: int
    on_done: Callable[[list[np.ndarray] | BaseException], None]  # called once, from the worker thread
    results: list = field(default_factory=list)
    remaining: int = 0
    finished: bool = False


@dataclass(eq=False)
class _Item:
    job: Job
    slot: int
    enqueued: float

    @property
    def window(self) -> Window:
        return self.job.windows[self.slot]


class Engine:
    def __init__(self, model, pooling: str, max_batch_tokens: int, max_queue: int, metrics: Metrics,
                 batch_across_requests: bool = True, max_batch_size: int | None = None,
                 forward_tokens: int = FORWARD_COST_TOKENS):
        self.model = model
        self.pooling = pooling
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.forward_tokens = forward_tokens  # a forward's fixed cost in padded tokens: see plan_batches
        self.batch_across_requests = batch_across_requests
        self.metrics = metrics
        self._pending: list[_Item] = []
        self._inputs = 0  # inputs admitted and not yet answered or dropped
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_forward_ok = True
        plan_batches([], model.config.max_seq_len, max_batch_tokens, max_batch_size, forward_tokens)  # checks them
        smallest = seq_buckets(model.config.max_seq_len)[0]
        self._lookahead = max(1, max_batch_tokens // smallest, max_batch_size or 1)

    @property
    def healthy(self) -> bool:
        """The worker runs, and its last forward did not fail in the backend."""
        return self._thread is not None and self._thread.is_alive() and self._last_forward_ok

    @property
    def queued_inputs(self) -> int:
        return self._inputs

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="cbert-serve-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish every window already queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def submit(self, windows: list[Window], output: str, n_inputs: int,
               on_done: Callable[[list[np.ndarray] | BaseException], None]) -> Job:
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}; choose one of {', '.join(OUTPUTS)}")
        max_len = self.model.config.max_seq_len
        if not windows or not all(1 <= len(w.ids) <= max_len for w in windows):
            raise ValueError(f"every window must hold 1 to {max_len} tokens")  # the worker plans on this
        job = Job(windows, output, n_inputs, on_done, [None] * len(windows), len(windows))
        now = time.perf_counter()
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self._inputs + n_inputs > self.max_queue:
                raise QueueFull(f"{self._inputs} inputs are queued; {n_inputs} more would pass --max-queue "
                                f"{self.max_queue}")
            self._inputs += n_inputs
            self._pending += [_Item(job, slot, now) for slot in range(len(windows))]
            self._cond.notify()
        return job

    async def run(self, windows: list[Window], output: str, n_inputs: int) -> tuple[Job, asyncio.Future]:
        """Queue a job; its future resolves on this event loop with one output per window."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(result):
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        job = self.submit(windows, output, n_inputs, lambda result: loop.call_soon_threadsafe(settle, result))
        return job, future

    def cancel(self, job: Job) -> None:
        """Drop a job whose client went away: its waiting windows never reach the model."""
        with self._cond:
            if job.finished:
                return
            job.finished = True
            self._inputs -= job.n_inputs
            before = len(self._pending)
            self._pending = [it for it in self._pending if it.job is not job]
            if len(self._pending) < before:
                self.metrics.dropped_inputs.inc(job.n_inputs)

    # -- the worker thread -------------------------------------------------------------------

    def _next_batch(self) -> tuple[list[_Item], int] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return None
            # Plan over the oldest windows only, as many as one forward could ever hold: a round
            # costs the same however long the queue is.
            region = self._pending[:self._lookahead]
            candidates = region
            if not self.batch_across_requests:  # one request per forward, for comparison
                candidates = [it for it in region if it.job is region[0].job]
            plan = plan_batches([len(it.window.ids) for it in candidates], self.model.config.max_seq_len,
                                self.max_batch_tokens, self.max_batch_size, self.forward_tokens)
            batch = next(b for b in plan if 0 in b.indices)  # the batch holding the oldest window
            chosen = [candidates[i] for i in batch.indices]
            taken = {id(it) for it in chosen}
            self._pending = [it for it in region if id(it) not in taken] + self._pending[len(region):]
            return chosen, batch.seq

    def _work(self) -> None:
        while (nxt := self._next_batch()) is not None:
            items, seq = nxt
            start = time.perf_counter()
            for it in items:
                self.metrics.queue_seconds.observe(start - it.enqueued)
            try:
                outputs = self._forward([it.window for it in items], seq, [it.job.output for it in items])
            except Exception as e:  # a failed forward fails its requests, not the server
                self._last_forward_ok = isinstance(e, ValueError)  # a bad input is no backend failure
                for job in {id(it.job): it.job for it in items}.values():
                    self._finish(job, e)
                continue
            self._last_forward_ok = True
            self.metrics.forward(time.perf_counter() - start, len(items) * seq,
                                 sum(len(it.window.ids) for it in items))
            for it, out in zip(items, outputs):
                job = it.job
                job.results[it.slot] = out
                job.remaining -= 1
                if job.remaining == 0:
                    self._finish(job, job.results)

    def _finish(self, job: Job, result) -> None:
        with self._cond:
            if job.finished:  # cancelled meanwhile
                return
            job.finished = True
            self._inputs -= job.n_inputs
        job.on_done(result)

    def _forward(self, windows: list[Window], seq: int, wanted: list[str]) -> list[np.ndarray]:
        """One forward over ``windows`` padded to ``seq``; per window its pooled vector or logits row."""
        tok = self.model.tokenizer
        batch = pad(windows, tok.pad_token_id, seq)
        out = self.model.forward(**tok.model_inputs(batch))
        results = []
        for row, (w, kind) in enumerate(zip(windows, wanted)):
            if kind == "logits":
                results.append(out["logits"][row])
            else:  # pooled over the window's own tokens, exactly as cbert.tasks.embed pools it
                n = len(w.ids)
                results.append(pool(out["last_hidden_state"][row, :n], batch["attention_mask"][row, :n], self.pooling))
        return results
