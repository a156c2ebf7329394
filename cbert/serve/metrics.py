"""Prometheus text exposition for ``GET /metrics``: requests, queue time, batch sizes in
tokens, forward time and tokens/s. Written by hand: a few counters and histograms need no
client library."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKENS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
RATE_WINDOW_S = 10.0  # tokens/s is measured over the forwards of the last 10 seconds


def _number(v: float) -> str:
    return repr(float(v)) if v != int(v) else str(int(v))


class Counter:
    def __init__(self, lock: threading.Lock):
        self._lock = lock
        self.values: dict[tuple, float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.values[key] = self.values.get(key, 0) + amount


class Histogram:
    def __init__(self, lock: threading.Lock, buckets: tuple[float, ...]):
        self._lock = lock
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            self.sum += value
            self.count += 1
            for i, le in enumerate(self.buckets):
                if value <= le:
                    self.counts[i] += 1


def _labels(key: tuple) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in key) + "}" if key else ""


class Metrics:
    def __init__(self, queued_inputs: Callable[[], int] = lambda: 0):
        self._lock = threading.Lock()
        self.queued_inputs = queued_inputs
        self.requests = Counter(self._lock)
        self.dropped_inputs = Counter(self._lock)
        self.tokens = Counter(self._lock)
        self.request_seconds = Histogram(self._lock, SECONDS)
        self.queue_seconds = Histogram(self._lock, SECONDS)
        self.forward_seconds = Histogram(self._lock, SECONDS)
        self.batch_tokens = Histogram(self._lock, TOKENS)
        self._recent: deque[tuple[float, int]] = deque()  # (end time, real tokens) of recent forwards
        self._started = time.monotonic()

    def forward(self, seconds: float, padded_tokens: int, real_tokens: int) -> None:
        self.forward_seconds.observe(seconds)
        self.batch_tokens.observe(padded_tokens)
        self.tokens.inc(real_tokens)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, real_tokens))

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            total = sum(n for _, n in self._recent)
        return total / max(min(RATE_WINDOW_S, now - self._started), 1e-3)

    def render(self) -> str:
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        def counter(name: str, c: Counter, text: str) -> None:
            head(name, "counter", text)
            with self._lock:
                items = sorted(c.values.items()) or [((), 0)]
            out.extend(f"{name}{_labels(k)} {_number(v)}" for k, v in items)

        def histogram(name: str, h: Histogram, text: str) -> None:
            head(name, "histogram", text)
            with self._lock:
                counts, total, count = list(h.counts), h.sum, h.count
            out.extend(f'{name}_bucket{{le="{_number(le)}"}} {n}' for le, n in zip(h.buckets, counts))
            out.extend([f'{name}_bucket{{le="+Inf"}} {count}', f"{name}_sum {_number(total)}", f"{name}_count {count}"])

        def gauge(name: str, value: float, text: str) -> None:
            head(name, "gauge", text)
            out.append(f"{name} {_number(value)}")

        counter("cbert_requests_total", self.requests, "HTTP requests answered, by route and status code")
        histogram("cbert_request_duration_seconds", self.request_seconds, "time from request to response")
        histogram("cbert_queue_duration_seconds", self.queue_seconds, "time a window waited for its forward")
        histogram("cbert_forward_duration_seconds", self.forward_seconds, "time of one forward (padding included)")
        histogram("cbert_batch_tokens", self.batch_tokens, "padded tokens per forward (rows x bucket)")
        counter("cbert_tokens_total", self.tokens, "real (unpadded) tokens through the model")
        gauge("cbert_tokens_per_second", self.tokens_per_second(),
              f"real tokens through the model per second over the last {RATE_WINDOW_S:g} s")
        gauge("cbert_queue_inputs", self.queued_inputs(), "inputs admitted and not yet answered")
        counter("cbert_dropped_inputs_total", self.dropped_inputs, "queued inputs dropped because the client left")
        return "\n".join(out) + "\n"
