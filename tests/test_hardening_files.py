"""Files from strangers (issue 12): safetensors headers, config.json fields, special files, and a
weights file changed under a loaded model. Each case found by the attack on cbert is named here."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import run_cli
from safetensors.numpy import save_file

import cbert
from cbert.checkpoint.safetensors import SafetensorsFile
from cbert.config import MAX_PARAMETERS, ModelConfig, approx_parameters

# -- safetensors headers -------------------------------------------------------------------


def write_safetensors(path, header, data: bytes = b"") -> str:
    """A file with this header (a dict, or raw bytes) and data section, however wrong."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def f32(*offsets, shape=(2,)):
    return {"dtype": "F32", "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("case,header,data,message", [
    ("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000, b"", r"header JSON is nested too deeply"),
    ("deeply nested object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"", r"nested too deeply"),
    ("float data_offsets", {"w": f32(0.0, 8.0)}, bytes(8), r"tensor 'w': data_offsets = \[0.0, 8.0\]: expected"),
    ("negative data_offsets", {"w": f32(-8, 0)}, bytes(8), r"tensor 'w': data_offsets = \[-8, 0\]"),
    ("boolean data_offsets", {"w": f32(False, True)}, bytes(8), r"tensor 'w': data_offsets = \[False, True\]"),
    ("begin after end", {"w": f32(8, 0)}, bytes(8), r"tensor 'w': data_offsets = \[8, 0\]"),
    ("three offsets", {"w": f32(0, 4, 8)}, bytes(8), r"tensor 'w': data_offsets = \[0, 4, 8\]"),
    ("offsets not a list", {"w": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}}, bytes(8),
     r"tensor 'w': data_offsets = '0-8'"),
    ("overlapping tensors", {"a": f32(0, 8), "b": f32(4, 12)}, bytes(12),
     r"tensor 'b' \(bytes 4..12\) overlaps tensor 'a'"),
    ("same bytes twice", {"a": f32(0, 8), "b": f32(0, 8)}, bytes(8), r"overlaps tensor 'a'"),
    ("gap between tensors", {"a": f32(0, 8), "b": f32(12, 20)}, bytes(20),
     r"tensor 'b' starts at byte 12, leaving bytes 8..12 of the data section unused"),
    ("gap at the start", {"a": f32(4, 12)}, bytes(12), r"tensor 'a' starts at byte 4, leaving bytes 0..4"),
    ("bytes after the last tensor", {"a": f32(0, 8)}, bytes(12), r"4 bytes after the last tensor belong to no"),
    ("negative dimension", {"w": f32(0, 8, shape=(-2, -1))}, bytes(8), r"tensor 'w': shape = \[-2, -1\]"),
    ("float dimension", {"w": f32(0, 8, shape=(2.0,))}, bytes(8), r"tensor 'w': shape = \[2.0\]"),
    ("boolean dimension", {"w": f32(0, 8, shape=(True, 2))}, bytes(8), r"tensor 'w': shape = \[True, 2\]"),
    ("shape not a list", {"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, bytes(8),
     r"tensor 'w': shape = 2"),
    ("too many dimensions", {"w": f32(0, 4, shape=[1] * 40)}, bytes(4), r"at most 32 non-negative integers"),
    ("shape whose product overflows int64", {"w": f32(0, 8, shape=(2**40, 2**40, 2**40))}, bytes(8),
     r"tensor 'w': shape \[1099511627776, .*\] is larger than any array can be"),
    ("zero-size tensor with a huge dimension", {"w": f32(0, 0, shape=(0, 2**62))}, b"",
     r"tensor 'w': shape \[0, 4611686018427387904\] is larger than any array"),
    ("shape and bytes disagree", {"w": f32(0, 8, shape=(3,))}, bytes(8), r"tensor 'w': 8 bytes stored for shape \[3\]"),
    ("entry not an object", {"w": [0, 8]}, bytes(8), r"tensor 'w' has a malformed header entry \(a list"),
    ("unknown dtype", {"w": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}, bytes(8),
     r"tensor 'w' has unsupported dtype 'F8_E4M3'"),
    ("dtype not a string", {"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, bytes(8),
     r"tensor 'w' has unsupported dtype \['F32'\]"),
    ("a tensor named twice", b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                             b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', bytes(16),
     r"key 'w' appears twice in the header"),
    ("__metadata__ a list", {"__metadata__": ["x"], "w": f32(0, 8)}, bytes(8), r"__metadata__ is a list"),
    ("header not UTF-8", b'{"w\xff": 1}', b"", r"header is not JSON"),
    ("header a JSON list", b"[1, 2]", b"", r"header is not a JSON object"),
])
def test_bad_safetensors_header(tmp_path, case, header, data, message):
    path = write_safetensors(tmp_path / "model.safetensors", header, data)
    with pytest.raises(cbert.CheckpointError, match=message) as e:
        SafetensorsFile(path)
    assert str(e.value).startswith(path)


def test_header_order_is_not_data_order(tmp_path):
    """Entries listed in any order are fine; the data layout is what is checked."""
    data = np.arange(4, dtype=np.float32).tobytes()
    path = write_safetensors(tmp_path / "m.safetensors", {"b": f32(8, 16), "a": f32(0, 8)}, data)
    st = SafetensorsFile(path)
    np.testing.assert_array_equal(st.get("a"), [0, 1])
    np.testing.assert_array_equal(st.get("b"), [2, 3])


def test_bad_header_through_load_and_cli(checkpoints, tmp_path):
    """The header errors reach cbert.load and the command line as one line, exit 2."""
    folder, _ = checkpoints("odd13")
    dst = shutil.copytree(folder, tmp_path / "ckpt")
    write_safetensors(dst / "model.safetensors", {"a": f32(0, 8), "b": f32(4, 12)}, bytes(12))
    with pytest.raises(cbert.CheckpointError, match=r"model.safetensors: tensor 'b' .* overlaps tensor 'a'"):
        cbert.load(dst, backend="numpy")
    write_safetensors(dst / "model.safetensors", b"[" * 100_000 + b"]" * 100_000)
    r = run_cli("info", str(dst))
    assert r.returncode == 2 and "nested too deeply" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- config.json ---------------------------------------------------------------------------

BASE = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 97, "hidden_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 96, "max_position_embeddings": 48}


def config_error(tmp_path, **changes) -> str:
    (tmp_path / "config.json").write_text(json.dumps({**BASE, **changes}))
    with pytest.raises(cbert.CheckpointError) as e:
        ModelConfig.from_file(tmp_path / "config.json")
    assert str(e.value).startswith(str(tmp_path / "config.json")), e.value
    return str(e.value)


@pytest.mark.parametrize("changes,message", [
    (dict(num_hidden_layers=1_000_000_000), "num_hidden_layers = 1000000000: more than cbert's limit of 1,024"),
    (dict(hidden_size=1 << 20, num_attention_heads=1), "hidden_size = 1048576: more than cbert's limit"),
    (dict(num_attention_heads=10_000), "num_attention_heads = 10000: more than cbert's limit"),
    (dict(intermediate_size=10**9), "intermediate_size = 1000000000: more than cbert's limit"),
    (dict(vocab_size=10**9), "vocab_size = 1000000000: more than cbert's limit"),
    (dict(max_position_embeddings=10**7), "max_position_embeddings = 10000000: more than cbert's limit"),
    (dict(type_vocab_size=10**6), "type_vocab_size = 1000000: expected an integer from 0 to 4,096"),
    (dict(type_vocab_size=-1), "type_vocab_size = -1: expected an integer from 0"),
    (dict(num_attention_heads=0), "num_attention_heads = 0: expected a positive integer"),
    (dict(num_hidden_layers=True), "num_hidden_layers = True: expected a positive integer"),
    (dict(hidden_size=48.0), "hidden_size = 48.0: expected a positive integer"),
    (dict(vocab_size="97"), "vocab_size = '97': expected a positive integer"),
    (dict(hidden_size=1 << 16, num_attention_heads=1, intermediate_size=1 << 18, num_hidden_layers=1024),
     "the sizes imply about"),
    (dict(hidden_act=["gelu"]), "hidden_act = ['gelu']: expected a string"),
    (dict(model_type=["bert"]), "model_type = ['bert']: expected a string"),
    (dict(id2label=["NEG", "POS"]), "id2label = ['NEG', 'POS']: expected a JSON object of id: label"),
    (dict(id2label={"zero": "NEG"}), "key 'zero' is not a non-negative integer id"),
    (dict(id2label={"-1": "NEG"}), "key '-1' is not a non-negative integer id"),
    (dict(id2label={"0": "NEG", "00": "POS"}), "id 0 appears twice"),
    (dict(id2label={"0": ["NEG"]}), "label of id 0 is ['NEG'], expected a string"),
    (dict(num_labels="2"), "num_labels = '2': expected an integer from 1"),
    (dict(pad_token_id=None), "pad_token_id = None: expected a token id in [0, vocab_size = 97)"),
    (dict(pad_token_id=97), "pad_token_id = 97: expected a token id"),
    (dict(pad_token_id=-1), "pad_token_id = -1: expected a token id"),
    (dict(layer_norm_eps=None), "layer_norm_eps = None: expected a positive finite number"),
    (dict(layer_norm_eps=-1e-12), "layer_norm_eps = -1e-12: expected a positive finite number"),
    (dict(layer_norm_eps=0), "layer_norm_eps = 0: expected a positive finite number"),
    (dict(layer_norm_eps=float("nan")), "layer_norm_eps = nan: expected a positive finite number"),
    (dict(layer_norm_eps=float("inf")), "layer_norm_eps = inf: expected a positive finite number"),
    (dict(layer_norm_eps="1e-12"), "layer_norm_eps = '1e-12': expected a positive finite number"),
    (dict(architectures="BertModel"), "architectures = 'BertModel': expected a list of class names"),
    (dict(is_decoder="false"), "is_decoder = 'false': expected true or false"),
    (dict(model_type="albert", num_hidden_groups=0), "num_hidden_groups = 0: expected a positive integer"),
    (dict(model_type="albert", embedding_size=10**7), "embedding_size = 10000000: more than cbert's limit"),
    (dict(model_type="roberta", pad_token_id=60), "max_position_embeddings = 48 with pad_token_id = 60 leaves a "
                                                  "maximum sequence length of -13"),
])
def test_bad_config_field(tmp_path, changes, message):
    assert message in config_error(tmp_path, **changes)


def test_a_billion_layers_is_refused_before_anything_is_built(checkpoints, tmp_path):
    """num_hidden_layers: 1000000000 hung cbert.load building the graph; now the config refuses it."""
    folder, _ = checkpoints("odd13")
    dst = shutil.copytree(folder, tmp_path / "ckpt")
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1_000_000_000}))
    r = run_cli("info", str(dst))
    assert r.returncode == 2, r.stderr
    assert "num_hidden_layers = 1000000000: more than cbert's limit" in r.stderr


def test_parameter_bound_counts_every_layer():
    cfg = ModelConfig.from_dict(dict(BASE))
    assert approx_parameters(cfg) < 10**6
    big = ModelConfig.from_dict({**BASE, "vocab_size": 250_002, "hidden_size": 4096, "num_attention_heads": 32,
                                 "intermediate_size": 16384, "num_hidden_layers": 48, "max_position_embeddings": 514,
                                 "model_type": "xlm-roberta", "pad_token_id": 1})  # XLM-RoBERTa-XXL loads
    assert 10**10 < approx_parameters(big) < MAX_PARAMETERS


@pytest.mark.parametrize("case", ["directory", "FIFO", "not UTF-8", "nested too deeply", "JSON list", "empty"])
def test_config_json_that_is_not_a_config(tmp_path, case):
    path = tmp_path / "config.json"
    if case == "directory":
        path.mkdir()
        message = "config.json: is a directory, expected a regular file"
    elif case == "FIFO":
        os.mkfifo(path)  # opening it for reading would block forever without a writer
        message = "config.json: is a FIFO, expected a regular file"
    elif case == "not UTF-8":
        path.write_bytes(b'{"model_type": "b\xe9rt"}')
        message = "config.json: not UTF-8 (invalid continuation byte at byte 17)"
    elif case == "nested too deeply":
        path.write_text("[" * 100_000 + "]" * 100_000)
        message = "config.json: not valid JSON (nested too deeply)"
    elif case == "JSON list":
        path.write_text("[]")
        message = "config.json: expected a JSON object, got list"
    else:
        path.write_text("")
        message = "config.json: not valid JSON"
    with pytest.raises(cbert.CheckpointError) as e:
        ModelConfig.from_file(path)
    assert str(e.value).startswith(f"{path}: {message.split(': ', 1)[1]}"), e.value


def test_config_fifo_through_the_cli_does_not_hang(checkpoints, tmp_path):
    folder, _ = checkpoints("odd13")
    dst = shutil.copytree(folder, tmp_path / "ckpt")
    (dst / "config.json").unlink()
    os.mkfifo(dst / "config.json")
    r = subprocess.run([sys.executable, "-m", "cbert.cli", "info", str(dst)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "config.json: is a FIFO, expected a regular file" in r.stderr, r.stderr


def test_weights_file_that_is_a_fifo_or_directory(tmp_path):
    os.mkfifo(tmp_path / "fifo.safetensors")
    with pytest.raises(cbert.CheckpointError, match=r"fifo.safetensors: is a FIFO, expected a regular file"):
        SafetensorsFile(tmp_path / "fifo.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(cbert.CheckpointError, match=r"dir.safetensors: is a directory"):
        SafetensorsFile(tmp_path / "dir.safetensors")


# -- a weights file changed under a loaded model -------------------------------------------


@pytest.fixture
def weights(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((64, 1024)).astype(np.float32),
               "b": rng.standard_normal((1024,)).astype(np.float32)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_truncation_in_place_is_detected(weights):
    path, tensors = weights
    st = SafetensorsFile(path)
    st.check_unchanged()
    size = os.path.getsize(path)
    os.truncate(path, 1000)
    with pytest.raises(cbert.CheckpointError, match=rf"model.safetensors: truncated from {size} to 1000 bytes; the "
                                                    r"memory-mapped weights are no longer the ones loaded"):
        st.check_unchanged()


def test_rewrite_in_place_is_detected(weights):
    path, _ = weights
    st = SafetensorsFile(path)
    before = os.stat(path)
    with open(path, "r+b") as fh:  # same size, other bytes: the mapped weights change silently
        fh.seek(before.st_size - 4)
        fh.write(b"\0\0\0\0")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # coarse-clock filesystems
    with pytest.raises(cbert.CheckpointError, match=r"rewritten in place"):
        st.check_unchanged()


def test_a_file_replaced_by_rename_keeps_serving_the_old_weights(weights, tmp_path):
    """What prepare and most tools do: the map keeps the old file; nothing changed for the reader."""
    path, tensors = weights
    st = SafetensorsFile(path)
    a = st.get("a")
    save_file({"a": np.zeros((1, 1), np.float32)}, str(tmp_path / "new.safetensors"))
    os.replace(tmp_path / "new.safetensors", path)
    st.check_unchanged()
    np.testing.assert_array_equal(a, tensors["a"])


def test_copy_keeps_private_read_only_weights(weights):
    path, tensors = weights
    st = SafetensorsFile(path, copy=True)
    a = st.get("a")
    assert not a.flags.writeable
    os.truncate(path, 0)
    st.check_unchanged()  # nothing to check: the file is no longer read
    np.testing.assert_array_equal(a, tensors["a"])
    np.testing.assert_array_equal(st.get("b"), tensors["b"])


def test_truncating_the_weights_under_a_loaded_model(checkpoints, tmp_path):
    """Truncated under a running numpy model, a memory-mapped file killed the process with SIGBUS
    (measured: exit -7). Now the default model says so in a CheckpointError before touching the
    map, and one loaded with copy_weights=True keeps giving the same results. In a subprocess, so
    that a regression is a failed assertion, not a dead test run."""
    folder, _ = checkpoints("head16_pretrain")
    for copy in (False, True):
        dst = shutil.copytree(folder, tmp_path / f"ckpt{copy}")
        script = textwrap.dedent(f"""
            import os
            import numpy as np
            import cbert
            model = cbert.load({str(dst)!r}, backend="numpy", copy_weights={copy})
            ids = [[2, 7, 9, 3]]
            before = model.forward(ids).prediction_logits
            os.truncate({str(dst / "model.safetensors")!r}, 100)
            try:
                after = model.forward(ids).prediction_logits
            except cbert.CheckpointError as e:
                print("error:", e)
            else:
                print("same" if np.array_equal(before, after) else "different")
        """)
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
        if copy:
            assert r.stdout.strip() == "same", r.stdout
        else:
            assert r.stdout.startswith("error:") and "model.safetensors" in r.stdout, r.stdout


def test_no_header_case_leaks_a_python_error(tmp_path):
    """The values that broke the old reader (TypeError, RecursionError) are all CheckpointErrors."""
    for i, offsets in enumerate([[None, 8], [0, math.inf], [0, 8.5], [[0], 8], ["0", "8"], [0, 2**70]]):
        header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": %s}}' % json.dumps(offsets).encode()
        path = write_safetensors(tmp_path / f"{i}.safetensors", header, bytes(8))
        with pytest.raises(cbert.CheckpointError, match=r"tensor 'w'"):
            SafetensorsFile(path)


def test_an_atomic_write_gets_an_ordinary_files_mode(tmp_path):
    """The temporary sibling is mkstemp's 0600; the output a user asked for is 0666 less the umask,
    as any new file (a report meant to be opened by others was once readable by its owner only)."""
    import os

    from cbert.files import write_atomic

    umask = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "report.html", lambda f: f.write(b"<html></html>"))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
