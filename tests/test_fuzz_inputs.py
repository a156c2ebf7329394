"""Fuzzing what a user or a server request hands cbert: texts (any Unicode, lone surrogates,
control characters, very long, empty, pairs), id/mask/type/position arrays (any dtype, shape and
values), hidden states, task arguments and the command line of embed, classify and fill-mask.

Each case must end in a result with no NaN, or in one of cbert's own errors (a ValueError
subclass: InputError, CheckpointError, UsageError); the CLI exits 0 or 2, never 1. Every
example runs under a wall-clock bound (a SIGALRM that fails the example), so a hang is a
failure, not a stuck suite. Example counts are bounded: the file runs in about a minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
from datetime import timedelta

import numpy as np
import pytest
from conftest import WORDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_families import family_checkpoints  # noqa: F401  (the fixture)

import cbert
from cbert.cli import main
from cbert.errors import CheckpointError, InputError, UsageError

# The only exceptions a bad input may raise.
CBERT_ERRORS = (InputError, CheckpointError, UsageError)

# An example slower than this is reported by hypothesis; one slower than HANG_S is stopped.
DEADLINE = timedelta(seconds=20)
HANG_S = 60


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=DEADLINE,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextlib.contextmanager
def bounded(seconds: int = HANG_S):
    """Fail an example that runs longer than ``seconds`` instead of hanging the suite."""
    def stop(signum, frame):
        raise TimeoutError(f"example still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- strategies ------------------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
CONTROLS = st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"])
# Characters, and pieces the tokenizer treats specially.
PIECES = st.one_of(st.characters(), st.characters(max_codepoint=0x7F), CONTROLS,
                   st.sampled_from(["[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "##", " ", "<s>", "</s>"]))
SHORT_TEXTS = st.one_of(
    st.lists(PIECES, max_size=40).map("".join),
    st.lists(st.one_of(PIECES, SURROGATES), max_size=10).map("".join),  # a lone surrogate: refused, said where
    st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join),
)
# Very long: a piece repeated into thousands of characters (many windows at 40-64 positions).
LONG_TEXTS = st.builds(lambda piece, n: (piece + " ") * n, SHORT_TEXTS.filter(bool), st.integers(20, 300))
TEXTS = st.one_of(SHORT_TEXTS, SHORT_TEXTS, LONG_TEXTS)
TEXT_LISTS = st.one_of(TEXTS, st.lists(TEXTS, max_size=4))

# Arguments a caller may get wrong: the right kind most of the time, anything some of the time.
ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(-(2 ** 70), 2 ** 70),
                       st.floats(allow_nan=True), st.text(max_size=3), st.just([1]))


def mostly(valid, odd=ODD_VALUES, one_in: int = 8):
    """``valid`` values, and ``odd`` ones about once in ``one_in`` examples (the draw that picks
    them is not a boundary value, which hypothesis would pick more often)."""
    return st.integers(1, one_in).flatmap(lambda k: odd if k == 2 else valid)


COUNTS = mostly(st.integers(1, 8))
STRIDES = mostly(st.one_of(st.none(), st.integers(0, 40)))

DTYPES = st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes(),
                   hnp.complex_number_dtypes(), st.just(np.dtype("U3")), st.just(np.dtype(object)))
SMALL_IDS = st.integers(0, 3)
# Shapes up to 3 axes, and [batch, seq] past the tiny models' 40-64 positions.
SHAPES = st.one_of(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
                   st.tuples(st.integers(1, 2), st.integers(38, 70)))


def arrays(valid: st.SearchStrategy = SMALL_IDS, shape: tuple[int, ...] | None = None):
    """int64 arrays of ``valid`` values in ``shape`` (any shape if None) most of the time; else any
    dtype, shape and values, or ragged lists."""
    shapes = SHAPES if shape is None else st.just(shape)
    in_range = shapes.flatmap(lambda sh: hnp.arrays(np.int64, sh, elements=valid))
    anything = st.tuples(DTYPES, SHAPES).flatmap(lambda a: hnp.arrays(*a))
    ragged = st.lists(st.lists(st.integers(0, 5), max_size=4), max_size=3)
    return mostly(in_range, st.one_of(anything, ragged), 4)


def _finite(value) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _finite(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _finite(v)
    elif isinstance(value, (float, np.ndarray, np.floating)):
        assert np.isfinite(value).all(), f"NaN or infinity in an output: {value}"


# -- models ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlm(checkpoints):
    return cbert.load(checkpoints("head32_mlm")[0], backend="numpy")


@pytest.fixture(scope="module")
def task_models(family_checkpoints):  # noqa: F811
    return {name: cbert.load(family_checkpoints(f"bert_{name}")[0], backend="numpy") for name in ("seq", "tok", "qa")}


# -- the tokenizer --------------------------------------------------------------------------

@fuzz(150)
@given(texts=TEXT_LISTS, pairs=st.one_of(st.none(), TEXT_LISTS), truncation=st.booleans())
def test_tokenizer_any_text(mlm, texts, pairs, truncation):
    """Tokenized texts are ids of the vocabulary with a 0/1 mask, and the model runs them."""
    with bounded():
        try:
            batch = mlm.tokenizer(texts, text_pair=pairs, truncation=truncation)
        except CBERT_ERRORS:
            return
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.dtype == np.int64 and ids.shape == mask.shape
        assert ((ids >= 0) & (ids < mlm.config.vocab_size)).all() and set(np.unique(mask)) <= {0, 1}
        assert ids.shape[1] <= mlm.config.max_seq_len
        _finite(mlm.forward(**batch))


# -- arrays --------------------------------------------------------------------------------

@fuzz(150)
@given(data=st.data(), ids=arrays(st.integers(0, 140), st.tuples(st.integers(1, 3), st.integers(1, 66))))
def test_forward_any_arrays(mlm, data, ids):
    """ids, then a mask, token types and positions of the same shape most often (else anything)."""
    shape = np.shape(ids) if isinstance(ids, np.ndarray) else None
    mask = data.draw(mostly(st.none(), arrays(st.integers(0, 2), shape), 2), label="attention_mask")
    types = data.draw(mostly(st.none(), arrays(st.integers(0, 2), shape), 2), label="token_type_ids")
    positions = data.draw(mostly(st.none(), arrays(st.integers(0, 66), shape), 3), label="position_ids")
    with bounded():
        try:
            out = mlm.forward(ids, attention_mask=mask, token_type_ids=types, position_ids=positions)
        except CBERT_ERRORS:
            return
        shape = np.asarray(ids).shape
        assert out.last_hidden_state.shape == (1 if len(shape) == 1 else shape[0], shape[-1], mlm.config.hidden_size)
        _finite(out)


@fuzz(60)
@given(data=st.data(), batch=st.integers(1, 4), seq=st.integers(1, 64))
def test_forward_any_valid_ids_and_mask(mlm, data, batch, seq):
    """Every valid input runs to finite outputs, hidden states and attentions: all-padding rows included."""
    ids = data.draw(hnp.arrays(np.int64, (batch, seq), elements=st.integers(0, mlm.config.vocab_size - 1)))
    mask = data.draw(hnp.arrays(np.int64, (batch, seq), elements=st.integers(0, 1)))
    types = data.draw(hnp.arrays(np.int64, (batch, seq), elements=st.integers(0, mlm.config.type_vocab_size - 1)))
    with bounded():
        out = mlm.forward(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True,
                          output_attentions=True)
        _finite(out)
        assert len(out.hidden_states) == mlm.config.num_hidden_layers + 1


@fuzz(80)
@given(hidden=mostly(hnp.arrays(np.float32, st.tuples(st.integers(1, 2), st.integers(1, 3), st.just(64))),
                    st.tuples(DTYPES, SHAPES).flatmap(lambda a: hnp.arrays(*a)), 3))
def test_host_heads_any_hidden(mlm, hidden):
    with bounded():
        try:
            out = mlm.mlm_logits(hidden)
        except CBERT_ERRORS:
            return
        _finite(out)


# -- tasks ------------------------------------------------------------------------------------

@fuzz(70)
@given(texts=TEXT_LISTS, pooling=mostly(st.sampled_from([None, "cls", "mean", "max"])),
       normalize=mostly(st.sampled_from([None, False, True])), batch_size=COUNTS, truncation=mostly(st.booleans()),
       window_aggregation=mostly(st.sampled_from(["mean", "max", "first"])), stride=STRIDES)
def test_embed_any_text_and_arguments(mlm, texts, pooling, normalize, batch_size, truncation, window_aggregation,
                                      stride):
    with bounded():
        try:
            vectors = mlm.embed(texts, pooling=pooling, normalize=normalize, batch_size=batch_size,
                                truncation=truncation, window_aggregation=window_aggregation, stride=stride)
        except CBERT_ERRORS:
            return
        n = 1 if isinstance(texts, str) else len(texts)
        assert vectors.shape == (n, mlm.config.hidden_size) and vectors.dtype == np.float32
        _finite(vectors)
        if normalize is True:
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


@fuzz(60)
@given(texts=TEXT_LISTS, top_k=mostly(st.one_of(st.none(), st.integers(1, 4))),
       aggregation=mostly(st.sampled_from(["mean", "max", "vote"])), stride=STRIDES,
       function_to_apply=mostly(st.sampled_from([None, "softmax", "sigmoid", "none"])))
def test_classify_any_text_and_arguments(task_models, texts, top_k, aggregation, stride, function_to_apply):
    with bounded():
        try:
            results = task_models["seq"].classify(texts, top_k=top_k, aggregation=aggregation, stride=stride,
                                                  function_to_apply=function_to_apply)
        except CBERT_ERRORS:
            return
        _finite(results)
        for r in [results] if isinstance(texts, str) else results:
            ranked = [r] if isinstance(r, dict) else r
            assert 1 <= len(ranked) <= 3
            if top_k is not None:
                assert len(ranked) == min(top_k, 3)


@fuzz(60)
@given(texts=TEXT_LISTS, stride=STRIDES, batch_size=COUNTS)
def test_ner_any_text(task_models, texts, stride, batch_size):
    with bounded():
        try:
            results = task_models["tok"].ner(texts, stride=stride, batch_size=batch_size)
        except CBERT_ERRORS:
            return
        _finite(results)
        for text, entities in zip([texts] if isinstance(texts, str) else texts,
                                  [results] if isinstance(texts, str) else results):
            for e in entities:
                assert 0 <= e["start"] <= e["end"] <= len(text)


@fuzz(60)
@given(question=mostly(SHORT_TEXTS), context=mostly(TEXTS), top_k=COUNTS,
       max_answer_len=COUNTS, stride=STRIDES)
def test_qa_any_text_and_arguments(task_models, question, context, top_k, max_answer_len, stride):
    with bounded():
        try:
            got = task_models["qa"].qa(question, context, top_k=top_k, max_answer_len=max_answer_len, stride=stride)
        except CBERT_ERRORS:
            return
        _finite(got)
        for a in [got] if isinstance(got, dict) else got:
            assert a["answer"] == context[a["start"]:a["end"]]
            assert 0 <= a["score"] <= 1


@fuzz(60)
@given(before=SHORT_TEXTS, after=SHORT_TEXTS, masks=st.integers(0, 3), top_k=COUNTS)
def test_fill_mask_any_text(mlm, before, after, masks, top_k):
    with bounded():
        try:
            got = mlm.fill_mask(before + " [MASK]" * masks + " " + after, top_k=top_k)
        except CBERT_ERRORS:
            return
        _finite(got)
        groups = got if got and isinstance(got[0], list) else [got]
        assert all(len(g) == min(top_k, mlm.config.vocab_size) for g in groups)


# -- the command line -------------------------------------------------------------------------

NUMBERS = mostly(st.integers(-3, 80).map(str), st.text(max_size=4), 4)
OPTIONS = {
    "embed": st.lists(st.one_of(
        st.tuples(st.just("--pooling"), st.one_of(st.sampled_from(["cls", "mean", "max"]), st.text(max_size=4))),
        st.sampled_from([("--normalize",), ("--no-normalize",), ("--truncate",)]),
        st.tuples(st.just("--batch-size"), NUMBERS), st.tuples(st.just("--stride"), NUMBERS),
        st.tuples(st.just("--window-aggregation"), st.sampled_from(["mean", "max", "first", "vote"])),
        st.tuples(st.just("--dtype"), st.sampled_from(["float32", "float16"]))), max_size=4),
    "classify": st.lists(st.one_of(
        st.tuples(st.just("--aggregation"), st.sampled_from(["mean", "max", "vote", "median"])),
        st.just(("--all-labels",)), st.tuples(st.just("--stride"), NUMBERS)), max_size=3),
    "fill-mask": st.lists(st.tuples(st.just("--top-k"), NUMBERS), max_size=2),
}


@fuzz(100)
@given(data=st.data(), command=st.sampled_from(sorted(OPTIONS)), wrong_model=st.booleans(),
       stdin=SHORT_TEXTS)
def test_cli_any_arguments(mlm, task_models, data, command, wrong_model, stdin):
    """In-process, as `cbert ...` runs: exit 0 with finite output, or 2 with one line on stderr."""
    right = {"embed": mlm, "classify": task_models["seq"], "fill-mask": mlm}[command]
    model = task_models["tok"] if wrong_model else right
    options = [a for option in data.draw(OPTIONS[command], label="options") for a in option]
    if command == "fill-mask":
        texts = [data.draw(SHORT_TEXTS, label="before") + " [MASK] " + data.draw(SHORT_TEXTS, label="after")]
    else:
        texts = data.draw(st.lists(st.one_of(TEXTS, st.just("-")), min_size=1, max_size=3), label="texts")
    argv = [command, "--model", str(model.checkpoint.path), "--backend", "numpy", *options, "--", *texts]
    out, err = io.StringIO(), io.StringIO()
    with bounded(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            _stdin(io.StringIO(stdin)):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse refusing an option value: its usage and exit 2
            assert e.code == 2, f"argparse exit {e.code}: {err.getvalue()}"
            return
    assert code in (0, 2), f"exit {code}: {err.getvalue()}"
    if code == 2:
        [line] = err.getvalue().strip().splitlines()
        assert line.startswith(f"cbert {command}: error: ")
        return
    for line in out.getvalue().splitlines():
        if command == "embed":
            _finite(np.array(json.loads(line), dtype=np.float64))
        elif command == "classify":
            _finite(json.loads(line))
        elif not line.startswith("[MASK] #"):  # fill-mask: "score  token  sequence"
            _finite(float(line.split()[0]))


@contextlib.contextmanager
def _stdin(stream):
    saved, sys.stdin = sys.stdin, stream
    try:
        yield
    finally:
        sys.stdin = saved
