"""Every WGSL kernel against its numpy op, on sizes that are not multiples of any tile.

Each case is a small op list that starts from the embedding gather (the only way float
data enters a graph) and runs through both the wgpu backend and the numpy reference.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from conftest import HALF_COSINE, assert_close, min_cosine

from cbert.backends import numpy as numpy_backend
from cbert.backends.wgpu import WgpuBackend, lowering
from cbert.backends.wgpu.device import Gpu, shader_dir
from cbert.backends.wgpu.kernels import ATTN, GEMM, GEMM_TMS, PARAMS_BYTES, ROWS
from cbert.backends.wgpu.lowering import gemm_rows
from cbert.ir import ACTIVATIONS, TRAINING_OPS, Graph, Op, node

VOCAB, MAXPOS = 11, 140
SIZES = (1, 7, 33, 65, 130)


def _params(rng, shapes: dict) -> dict:
    return {k: (rng.standard_normal(s) * (0.5 if len(s) > 1 else 0.2)).astype(np.float32) for k, s in shapes.items()}


def _embed(hidden: int, out: str = "x") -> tuple[list, dict]:
    nodes = [node(Op.EMBED, ["ln_w", "ln_b", "word", "input_ids", "pos", "position_ids"], out, eps=1e-12)]
    return nodes, {"ln_w": (hidden,), "ln_b": (hidden,), "word": (VOCAB, hidden), "pos": (MAXPOS, hidden)}


def _inputs(rng, batch: int, seq: int, pad: bool = True) -> dict:
    mask = np.ones((batch, seq), np.int64)
    if pad and batch > 1:
        mask[1, 1:] = 0  # a row that is all padding but one token
    if pad and batch > 2:
        mask[2, :] = 0  # a row with no token at all: uniform attention, like numpy
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)), "attention_mask": mask,
            "position_ids": np.broadcast_to(np.arange(seq), (batch, seq)).astype(np.int64)}


def _run(nodes: list, shapes: dict, outputs: list, inputs: dict, dtype: str = "float32", seed: int = 0):
    params = _params(np.random.default_rng(seed), shapes)
    graph = Graph(tuple(nodes), tuple(i for i in inputs if any(i in n.inputs for n in nodes)),
                  {o: o for o in outputs})
    backend = WgpuBackend(dtype=dtype)
    got = backend.compile(graph, params)(inputs)
    want = numpy_backend.NumpyBackend().compile(graph, params)(inputs)
    return got, want, backend


@pytest.mark.parametrize("k", SIZES)
@pytest.mark.parametrize("n", SIZES)
def test_linear_sizes(k, n):
    nodes, shapes = _embed(k)
    nodes.append(node(Op.LINEAR, ["x", "w", "b"], "y", activation="none"))
    shapes |= {"w": (n, k), "b": (n,)}
    rng = np.random.default_rng(k * 1000 + n)
    for batch, seq in ((1, 1), (3, 33), (2, 65)):
        got, want, _ = _run(nodes, shapes, ["y"], _inputs(rng, batch, seq))
        assert_close(got["y"], want["y"], f"linear {batch}x{seq} k={k} n={n}")


@pytest.mark.parametrize("tm", GEMM_TMS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_linear_every_row_tile(monkeypatch, tm, dtype):
    """Each row-tile variant of gemm.wgsl, whatever the plan would pick, on ragged M, N and K."""
    monkeypatch.setattr(lowering, "gemm_rows", lambda M, N: tm)
    nodes, shapes = _embed(130)
    nodes.append(node(Op.LINEAR, ["x", "w", "b"], "y", activation="gelu"))
    shapes |= {"w": (197, 130), "b": (197,)}
    for batch, seq in ((1, 1), (3, 33), (2, 65)):
        got, want, _ = _run(nodes, shapes, ["y"], _inputs(np.random.default_rng(tm + seq), batch, seq), dtype)
        if dtype == "float32":
            assert_close(got["y"], want["y"], f"linear tm={tm} {batch}x{seq}")
        else:
            cos = min_cosine(got["y"], want["y"])
            assert cos > HALF_COSINE, f"linear f16 tm={tm} {batch}x{seq}: cosine {cos}"


def test_gemm_row_tile_choice():
    # 32 tokens: a 64-row tile would idle half its rows.
    assert gemm_rows(32, 2304) == 32
    # 256 tokens, BERT-base widths: no padding and a wide enough grid -> 64 rows.
    assert gemm_rows(256, 768) == gemm_rows(256, 3072) == 64
    # A narrow product: too few 64-row workgroups to occupy a GPU.
    assert gemm_rows(128, 64) == 32


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_activations(activation):
    nodes, shapes = _embed(33)
    nodes.append(node(Op.LINEAR, ["x", "w", "b"], "y", activation=activation))
    shapes |= {"w": (130, 33), "b": (130,)}
    inputs = _inputs(np.random.default_rng(1), 3, 7)
    got, want, _ = _run(nodes, shapes, ["y"], inputs)
    assert_close(got["y"], want["y"], f"linear+{activation}")
    # Large pre-activations: tanh-based forms must saturate, not return NaN.
    got, want, _ = _run(nodes, {**shapes}, ["y"], inputs, seed=5)
    assert np.isfinite(got["y"]).all()


@pytest.mark.parametrize("hidden", (1, 7, 130, 300))
def test_row_kernels(hidden):
    nodes, shapes = _embed(hidden)
    nodes += [
        node(Op.LINEAR, ["x", "w", "b"], "h", activation="gelu"),
        node(Op.ADD_LN, ["h", "x", "ln2_w", "ln2_b"], "a", eps=1e-5),
        node(Op.LAYERNORM, ["a", "ln3_w", "ln3_b"], "l", eps=1e-12),
        node(Op.FIRST_TOKEN, ["l"], "cls"),
    ]
    shapes |= {"w": (hidden, hidden), "b": (hidden,), "ln2_w": (hidden,), "ln2_b": (hidden,), "ln3_w": (hidden,),
               "ln3_b": (hidden,)}
    for batch, seq in ((1, 1), (4, 7), (2, 130)):
        got, want, _ = _run(nodes, shapes, ["x", "a", "l", "cls"], _inputs(np.random.default_rng(hidden), batch, seq))
        for key in want:
            assert_close(got[key], want[key], f"{key} hidden={hidden} {batch}x{seq}")


def test_embed_three_tables():
    nodes = [node(Op.EMBED, ["ln_w", "ln_b", "word", "input_ids", "pos", "position_ids", "type", "token_type_ids"],
                  "x", eps=1e-12)]
    shapes = {"ln_w": (65,), "ln_b": (65,), "word": (VOCAB, 65), "pos": (MAXPOS, 65), "type": (3, 65)}
    rng = np.random.default_rng(3)
    inputs = _inputs(rng, 3, 33) | {"token_type_ids": rng.integers(0, 3, (3, 33))}
    got, want, _ = _run(nodes, shapes, ["x"], inputs)
    assert_close(got["x"], want["x"], "embed")


def _attention_graph(heads: int, head_dim: int) -> tuple[list, dict]:
    nodes, shapes = _embed(3 * heads * head_dim, "qkv")
    nodes += [
        node(Op.MASK_BIAS, ["attention_mask"], "bias"),
        node(Op.ATTENTION, ["qkv", "bias"], "ctx", heads=heads),
        node(Op.ATTN_PROBS, ["qkv", "bias"], "probs", heads=heads),
        node(Op.ATTN_APPLY, ["probs", "qkv"], "ctx2", heads=heads),
    ]
    return nodes, shapes


@pytest.mark.parametrize("heads,head_dim", [(1, 1), (3, 7), (2, 13), (2, 64)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_attention(heads, head_dim, dtype):
    nodes, shapes = _attention_graph(heads, head_dim)
    for batch, seq in ((1, 1), (3, 7), (3, 33), (4, 65)):
        inputs = _inputs(np.random.default_rng(seq), batch, seq)
        got, want, _ = _run(nodes, shapes, ["bias", "ctx", "probs", "ctx2"], inputs, dtype)
        for key in want:
            assert np.isfinite(got[key]).all(), f"{key}: NaN or inf"
            tol = 1e-4 if dtype == "float32" else 2e-2
            assert_close(got[key], want[key], f"{key} {dtype} heads={heads} d={head_dim} {batch}x{seq}", tol)
        if batch > 2:  # the all-padding row attends uniformly
            np.testing.assert_allclose(got["probs"][2], 1.0 / seq, rtol=1e-3)


def test_split_beyond_binding_limit(monkeypatch):
    """With a tiny binding limit, GEMMs, row kernels and attention split into ranges and still agree."""
    nodes, shapes = _attention_graph(2, 12)
    nodes += [node(Op.LINEAR, ["ctx", "w", "b"], "y", activation="gelu"),
              node(Op.ADD_LN, ["y", "ctx2", "ln2_w", "ln2_b"], "z", eps=1e-12),
              node(Op.LINEAR, ["qkv", "w2", "b2"], "big", activation="none")]  # splits over rows and columns
    shapes |= {"w": (24, 24), "b": (24,), "ln2_w": (24,), "ln2_b": (24,), "w2": (300, 72), "b2": (300,)}
    shapes["word"] = (VOCAB, 72)
    shapes["pos"] = (40, 72)
    inputs = _inputs(np.random.default_rng(9), 5, 33)
    _, _, backend = _run(nodes, shapes, ["probs", "z", "big"], inputs)
    unsplit = backend.stats()["dispatches"]
    # 40 kB: one sequence's probabilities fit (the capacity is 64 keys), a batch of them does not.
    monkeypatch.setattr(Gpu, "max_binding", property(lambda self: 40000))
    got, want, backend = _run(nodes, shapes, ["probs", "z", "big"], inputs)
    assert backend.stats()["dispatches"] > unsplit
    for key in want:
        assert_close(got[key], want[key], f"{key} split")


@pytest.mark.parametrize("shader", [ROWS, GEMM, ATTN], ids=lambda s: s.file)
def test_params_and_bindings_are_those_of_the_wgsl(shader):
    """Each Params dataclass is its file's struct Params, field for field; bindings as the file declares them."""
    text = (shader_dir() / shader.file).read_text()
    struct = re.search(r"struct Params \{([^}]*)\}", text).group(1)
    assert [f.split(":")[0].strip() for f in struct.split(",")] == [f.name for f in dataclasses.fields(shader.params)]
    assert len(dataclasses.fields(shader.params)) * 4 <= PARAMS_BYTES
    declared = {name: (int(b), "write" if access == "read_write" else "read")
                for b, access, name in re.findall(r"@binding\((\d+)\) var<storage, (\w+)> (\w+)", text)}
    assert declared == dict(shader.bindings)


def test_every_op_has_one_table_entry_naming_a_kernel_of_its_file():
    assert set(lowering.TABLE) == set(Op) - {Op.CONCAT} - TRAINING_OPS  # CONCAT is folded at load
    for op, entry in lowering.TABLE.items():
        text = (shader_dir() / entry.shader.file).read_text()
        assert re.search(rf"@compute @workgroup_size\([^)]*\)\s*fn {entry.entry}\(", text), op
        assert set(entry.operands) | {entry.result} <= set(entry.shader.bindings), op
