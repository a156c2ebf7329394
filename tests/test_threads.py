"""One loaded model called from many threads at once gives, call for call, the serial result, on
every backend and dtype (the server and corpus workers rely on it)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import BACKEND_DTYPES, SHAPES, make_inputs

import cbert

THREADS, ROUNDS = 16, 3
# Three shape classes, two shapes inside one of them (4 x 17 and 3 x 20 share 4 x 32).
BATCH_SEQ = [(1, 5), (4, 17), (3, 20), (2, 33)]


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_sixteen_threads_mixed_shapes_equal_serial(checkpoints, backend, dtype):
    folder, _ = checkpoints("head16_pretrain")
    cfg = SHAPES["head16_pretrain"][1]
    inputs = [make_inputs(cfg, b, s, seed=i) for i, (b, s) in enumerate(BATCH_SEQ)]
    # The serial answers from a model of its own, so the threads below meet every shape
    # for the first time and plan its buffers while the others run.
    reference = cbert.load(folder, backend=backend, dtype=dtype)
    serial = [reference.forward(**x) for x in inputs]
    model = cbert.load(folder, backend=backend, dtype=dtype)
    start = threading.Barrier(THREADS)
    wrong: list[str] = []
    failed: list[BaseException] = []

    def work(t: int) -> None:
        try:
            start.wait()
            for r in range(ROUNDS):
                for k in range(len(inputs)):
                    i = (t + r + k) % len(inputs)  # each thread its own order: shapes interleave
                    got = model.forward(**inputs[i])
                    for name, want in serial[i].items():
                        if not np.array_equal(got[name], want):
                            wrong.append(f"thread {t} round {r} shape {BATCH_SEQ[i]} {name}")
        except Exception as e:  # reported by the main thread
            failed.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failed, failed[0]
    assert not wrong, f"{len(wrong)} of {THREADS * ROUNDS * len(inputs)} calls differ from serial: {wrong[:3]}"


def test_threads_meeting_a_new_output_set_compile_it_once(checkpoints):
    folder, _ = checkpoints("head16_pretrain")
    model = cbert.load(folder, backend="numpy")
    compiled: list[object] = []
    compile_graph = model.backend.compile

    def counting(graph, params):
        compiled.append(graph)
        return compile_graph(graph, params)

    model.backend.compile = counting
    start = threading.Barrier(8)
    ids = make_inputs(SHAPES["head16_pretrain"][1], 2, 9, seed=0)

    def work() -> None:
        start.wait()
        model.forward(**ids, output_hidden_states=True)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(compiled) == 1
