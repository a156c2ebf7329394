"""Fuzzing what cbert reads from files (issue 12): safetensors headers and config.json fields.

Whatever the bytes, reading them ends in a result or in cbert's own CheckpointError, never another
exception or a hang; what is accepted is usable (every tensor readable with its declared shape,
every config property computable and in bounds). Each property runs a bounded number of
examples with a deadline, so the file takes well under a minute.
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cbert
from cbert.checkpoint.safetensors import SafetensorsFile
from cbert.config import MAX_PARAMETERS, ModelConfig, approx_parameters

FUZZ = settings(max_examples=150, deadline=2000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="cbert-fuzz-") as d:
        yield Path(d)


# JSON values of every kind, for a field that should hold something else.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=8)
small_ints = st.integers(-3, 40)
odd_ints = st.sampled_from([0, -1, 2**31, 2**40, 2**62, 2**63, 2**64, 10**30])


def write(path: Path, header: bytes, data: bytes) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def read_all(path: Path) -> None:
    """Open, and if the header is accepted, every tensor reads with its declared shape."""
    try:
        f = SafetensorsFile(path)
    except cbert.CheckpointError:
        return
    for name in f.names():
        a = f.get(name)
        assert a.shape == f.shape(name)


@st.composite
def valid_layouts(draw):
    """A well-formed header and data: tensors end to end, shapes matching sizes."""
    n = draw(st.integers(0, 4))
    header, at = {}, 0
    for i in range(n):
        dtype = draw(st.sampled_from(sorted(ITEMSIZE)))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        header[draw(st.text(min_size=1, max_size=6)) + str(i)] = {"dtype": dtype, "shape": shape,
                                                                   "data_offsets": [at, at + nbytes]}
        at += nbytes
    return header, at


@st.composite
def mutated_headers(draw):
    """A valid layout with one thing changed into something arbitrary."""
    header, size = draw(valid_layouts())
    data = bytes(size)
    how = draw(st.sampled_from(["offset", "shape", "dim", "dtype", "entry", "trailing", "drop", "metadata", "none"]))
    names = list(header)
    if names and how in ("offset", "shape", "dim", "dtype", "entry", "drop"):
        name = draw(st.sampled_from(names))
        entry = header[name]
        if how == "offset":
            i = draw(st.integers(0, 1))
            entry["data_offsets"][i] = draw(json_values | small_ints | odd_ints)
        elif how == "shape":
            entry["shape"] = draw(json_values)
        elif how == "dim" and entry["shape"]:
            entry["shape"][draw(st.integers(0, len(entry["shape"]) - 1))] = draw(json_values | odd_ints)
        elif how == "dtype":
            entry["dtype"] = draw(json_values | st.sampled_from(["F8_E4M3", "f32", ""]))
        elif how == "entry":
            header[name] = draw(json_values)
        elif how == "drop":
            del header[name]
    elif how == "trailing":
        data += bytes(draw(st.integers(1, 9)))
    elif how == "metadata":
        header["__metadata__"] = draw(json_values)
    return json.dumps(header).encode(), data


@FUZZ
@given(case=mutated_headers())
def test_fuzz_safetensors_header_fields(scratch, case):
    read_all(write(scratch / "fields.safetensors", *case))


@FUZZ
@given(header=st.binary(max_size=200), data=st.binary(max_size=64))
def test_fuzz_safetensors_header_bytes(scratch, header, data):
    read_all(write(scratch / "bytes.safetensors", header, data))


@FUZZ
@given(raw=st.binary(max_size=64))
def test_fuzz_safetensors_whole_file(scratch, raw):
    """Any bytes at all, including a header length that does not fit."""
    path = scratch / "raw.safetensors"
    path.write_bytes(raw)
    read_all(path)


@FUZZ
@given(case=valid_layouts())
def test_fuzz_valid_layouts_load(scratch, case):
    """The checks refuse nothing the format allows."""
    header, size = case
    path = write(scratch / "valid.safetensors", json.dumps(header).encode(), bytes(size))
    f = SafetensorsFile(path)
    assert sorted(f.names()) == sorted(header)
    for name in f.names():
        assert f.get(name).shape == tuple(header[name]["shape"])


# -- config.json ---------------------------------------------------------------------------

BASE = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 97, "hidden_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 96, "max_position_embeddings": 48,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0, "hidden_act": "gelu"}
FIELDS = [*BASE, "embedding_size", "num_hidden_groups", "inner_group_num", "id2label", "num_labels", "is_decoder",
          "add_cross_attention", "position_embedding_type", "dim", "n_layers", "n_heads", "hidden_dim", "activation"]
field_values = (json_values | small_ints | odd_ints | st.integers(1, 2048)
                | st.sampled_from(["bert", "roberta", "distilbert", "albert", "xlm-roberta", "gelu_new", "relu"])
                | st.dictionaries(st.sampled_from(["0", "1", "2", "x", "-1", "01"]), st.text(max_size=3), max_size=3))


def usable(cfg: ModelConfig) -> None:
    """Everything a load reads from an accepted config works and is in bounds."""
    assert approx_parameters(cfg) <= MAX_PARAMETERS
    assert cfg.max_seq_len >= 1 and cfg.head_dim >= 1 and cfg.hidden_size % cfg.num_attention_heads == 0
    assert math.isfinite(cfg.layer_norm_eps) and cfg.layer_norm_eps > 0
    cfg.activation, cfg.family, cfg.labels(3)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=4))
def test_fuzz_config_fields(changes):
    try:
        cfg = ModelConfig.from_dict({**BASE, **changes})
    except cbert.CheckpointError:
        return
    usable(cfg)


@FUZZ
@given(text=st.text(max_size=120) | st.builds(json.dumps, json_values) | st.builds(
    lambda d: json.dumps({**BASE, **d}), st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=3)))
def test_fuzz_config_file(scratch, text):
    path = scratch / "config.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = ModelConfig.from_file(path)
    except cbert.CheckpointError:
        return
    usable(cfg)


def test_fuzz_strategies_reach_both_outcomes(scratch):
    """The fuzzers are not vacuous: their inputs include accepted and refused ones."""
    outcomes = set()

    @settings(max_examples=60, deadline=None, database=None)
    @given(case=mutated_headers())
    def sample(case):
        try:
            SafetensorsFile(write(scratch / "sample.safetensors", *case))
            outcomes.add("accepted")
        except cbert.CheckpointError:
            outcomes.add("refused")
    sample()
    assert outcomes == {"accepted", "refused"}
    outcomes.clear()

    @settings(max_examples=60, deadline=None, database=None)
    @given(changes=st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=4))
    def sample_config(changes):
        try:
            ModelConfig.from_dict({**BASE, **changes})
            outcomes.add("accepted")
        except cbert.CheckpointError:
            outcomes.add("refused")
    sample_config()
    assert outcomes == {"accepted", "refused"}
