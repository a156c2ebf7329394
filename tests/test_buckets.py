"""Tasks batch by the token budget and pad to sequence buckets (cbert.batching): the padding never
changes a result, and a corpus of every length meets a handful of shapes on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import WORDS, assert_close, write_checkpoint

import cbert
from cbert.batching import MAX_BATCH_TOKENS, plan_batches, seq_buckets
from cbert.tasks.run import FORWARD_TOKENS_PER_ROW, run_windows
from cbert.tasks.windows import pad, split

MAX_POSITIONS = 320  # buckets 16, 32, ..., 128, 192, 256, 320: the fine and the coarse steps
CHECKPOINT = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=48,
                  vocab_size=120, max_position_embeddings=MAX_POSITIONS, num_labels=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("buckets"))
    write_checkpoint(path, "BertForTokenClassification", CHECKPOINT)
    return path


def texts_of_every_length(n: int, longest: int, seed: int = 0) -> list[str]:
    """``n`` texts of 1 to ``longest`` words (one word is one token here), shuffled."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(k))) for k in rng.integers(1, longest + 1, size=n)]


def windows_of(model, texts):
    return [split(e, model.config.max_seq_len, None)[0] for e in model.tokenizer.encode(texts)]


@pytest.mark.parametrize("backend", ["numpy", "mlx", "wgpu"])
def test_bucketed_batches_equal_each_text_run_alone(folder, backend):
    model = cbert.load(folder, backend=backend)
    model.backend.bucketed_shapes = True  # numpy pads to its batch's longest row; here it pads to buckets too
    reference = cbert.load(folder, backend="numpy")
    texts = texts_of_every_length(14, 300, seed=1) + ["no"]  # "no": 3 tokens padded to 16
    windows = windows_of(model, texts)
    outputs = ("last_hidden_state", "logits")
    got = run_windows(model, windows, batch_size=4, outputs=outputs)
    padded = [len(w.ids) for w in windows] != [len(r["attention_mask"]) for r in got]
    assert not padded  # results come back unpadded
    tok = model.tokenizer
    for i, (w, g) in enumerate(zip(windows, got)):
        alone = tok.model_inputs(pad([w], tok.pad_token_id))  # one row, its own length: no padding at all
        for m in (model, reference):  # the same backend unbatched, and the numpy reference
            want = m.forward(**alone, outputs=outputs)
            for key in outputs:
                assert_close(g[key], want[key][0], f"text {i} ({len(w.ids)} tokens) {key}, {m.backend.name}")
    # The tasks on top agree with the reference too (embed pools over the real tokens only).
    assert_close(model.embed(texts, pooling="mean", batch_size=4), reference.embed(texts, pooling="mean", batch_size=1),
                 f"embed on {backend}")


def _count_shapes(model) -> list[tuple[int, int]]:
    """Every (batch, seq) the backend's executables are called with, from now on."""
    seen = []
    compile_ = model.backend.compile

    def compile(graph, params):
        run = compile_(graph, params)

        def counted(inputs):
            seen.append(np.shape(inputs["input_ids"]))
            return run(inputs)

        counted.executable = run
        return counted

    model.backend.compile = compile
    return seen


@pytest.mark.parametrize("backend", ["numpy", "mlx", "wgpu"])
def test_a_corpus_of_every_length_meets_a_handful_of_shapes(folder, backend):
    model = cbert.load(folder, backend=backend)
    seen = _count_shapes(model)
    texts = texts_of_every_length(200, 200, seed=2)
    lengths = [len(e.ids) for e in model.tokenizer.encode(texts)]
    model.embed(texts, batch_size=8)
    # The batches are the token-budget batcher's (the server's), in its order, not a copy of its own;
    # numpy, which prepares nothing per shape, pads each to its longest row instead of its bucket.
    plan = plan_batches(lengths, MAX_POSITIONS, MAX_BATCH_TOKENS, 8, forward_tokens=8 * FORWARD_TOKENS_PER_ROW)
    longest = [max(lengths[i] for i in b.indices) for b in plan]
    assert seen == [(len(b.indices), b.seq if backend != "numpy" else n) for b, n in zip(plan, longest)]
    if backend == "numpy":
        return
    shapes = set(seen)
    buckets = seq_buckets(MAX_POSITIONS)
    assert {s for _, s in shapes} <= set(buckets)
    # Full batches at each bucket, a short one where the corpus thins out: a handful. Batches
    # padded to their longest row (numpy's, and what every backend got before) meet one shape a batch.
    assert len(shapes) <= len(buckets) + 3, sorted(shapes)
    assert len({(len(b.indices), n) for b, n in zip(plan, longest)}) > 1.5 * len(shapes)
    executable = model._compiled[next(iter(model._compiled))][1].executable
    if backend == "mlx":  # each shape traced once, none again
        assert sorted(s[0] for s in executable.traced) == sorted(shapes)
    if backend == "wgpu":  # one dispatch list per shape; no pipeline or shader module made after the load
        assert set(executable.plans) == shapes
        gpu = model.backend.gpu
        made = gpu.pipelines_created, gpu.modules_created
        for batch, seq in [(3, 17), (2, 300), (1, 1)]:  # shapes no bucket gives
            model.forward(np.full((batch, seq), 7), outputs=("last_hidden_state",))
        assert (gpu.pipelines_created, gpu.modules_created) == made


def test_wgpu_keeps_only_the_most_recent_dispatch_lists(folder, monkeypatch):
    from cbert.backends.wgpu import executor

    monkeypatch.setattr(executor, "MAX_PLANS", 3)
    model = cbert.load(folder, backend="wgpu")
    want = {}
    for seq in (5, 6, 7, 8, 5):
        want[seq] = model.forward(np.full((1, seq), 9), outputs=("last_hidden_state",)).last_hidden_state
    run = model._compiled[next(iter(model._compiled))][1]
    assert list(run.plans) == [(1, 7), (1, 8), (1, 5)]  # (1, 6) dropped; (1, 5) used last
    again = model.forward(np.full((1, 6), 9), outputs=("last_hidden_state",)).last_hidden_state  # rebuilt
    assert_close(again, want[6], "a dispatch list rebuilt after it was dropped")


def test_mlx_cpu_attention_in_chunks_of_sequences_equals_the_reference():
    """Long buckets run MLX's CPU attention a few sequences at a time (lowering._CPU_ATTENTION_WEIGHTS)."""
    from cbert.backends import backend_class

    backend_class("mlx")  # the BLAS before mlx.core
    import mlx.core as mx

    from cbert.backends.mlx import lowering
    from cbert.backends.numpy.lowering import attention, mask_bias

    rng = np.random.default_rng(0)
    heads, B, S = 4, 7, 512
    assert lowering._CPU_ATTENTION_WEIGHTS // (heads * S * S) < B  # this shape is chunked
    qkv = rng.standard_normal((B, S, 3 * heads * 8), dtype=np.float32)
    mask = (np.arange(S)[None] < rng.integers(1, S + 1, (B, 1))).astype(np.int64)
    bias = mask_bias(mask)
    p = lowering.Precision(store=mx.float32, gemm=mx.float32, cpu=True)
    got = lowering.attention(p, mx.array(qkv), mx.array(bias), heads)
    assert_close(np.array(got), attention(qkv, bias, heads), "chunked MLX CPU attention")
