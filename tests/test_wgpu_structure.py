"""What a forward does on the device: one submit, nothing created after warm-up, only outputs read back."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import SHAPES, make_inputs

import cbert
from cbert.backends.wgpu import WgpuBackend, device
from cbert.backends.wgpu.lowering import gemm_rows
from cbert.backends.wgpu.planner import assign_slots, nbytes_of, token_shapes, value_itemsize
from cbert.ir import Graph, Op, node


@pytest.fixture(scope="module")
def model(checkpoints):
    folder, _ = checkpoints("head16_pretrain")
    return cbert.load(folder, backend="wgpu")


def test_warm_forward_creates_nothing_and_submits_once(model):
    cfg = SHAPES["head16_pretrain"][1]
    inputs = make_inputs(cfg, 3, 20)
    model.forward(**inputs)  # warm-up of this shape class
    out = model.forward(**inputs)
    s = model.stats()
    assert (s["submits"], s["buffers_created"], s["pipelines_created"], s["bind_groups_created"]) == (1, 0, 0, 0)
    assert s["bytes_read_back"] == sum(v.nbytes for v in out.values())
    layers = cfg["num_hidden_layers"]
    # embed + mask, then 7 per layer (qkv, attention, out-proj, add+LN, ffn-in+GELU, ffn-out, add+LN),
    # then pooler (first token + dense), MLM (transform, LN, decoder) and NSP.
    assert s["dispatches"] == 2 + 7 * layers + 2 + 3 + 1
    # Another sequence length of the same shape class reuses the buffers and every pipeline.
    model.forward(**make_inputs(cfg, 4, 17))
    s = model.stats()
    assert (s["buffers_created"], s["pipelines_created"]) == (0, 0)
    # A shape whose QKV GEMM takes the other row tile: every variant was built at load.
    assert gemm_rows(3 * 20, 3 * cfg["hidden_size"]) != gemm_rows(32 * 32, 3 * cfg["hidden_size"])
    model.forward(**make_inputs(cfg, 32, 32))
    assert model.stats()["pipelines_created"] == 0


def test_only_requested_outputs_are_read_back(model):
    inputs = make_inputs(SHAPES["head16_pretrain"][1], 2, 9)
    small = model.forward(**inputs)
    small_bytes = model.stats()["bytes_read_back"]
    big = model.forward(**inputs, output_hidden_states=True)
    assert model.stats()["bytes_read_back"] == small_bytes + sum(h.nbytes for h in big.hidden_states[:-1])
    np.testing.assert_array_equal(small.last_hidden_state, big.last_hidden_state)


def test_probe_and_describe_name_the_adapter():
    p = WgpuBackend.probe()
    assert p["available"] and {"adapter", "backend", "type", "f16", "subgroups", "accelerated"} <= set(p)
    assert p["backend"] in ("Vulkan", "Metal", "D3D12", "OpenGL")
    if "llvmpipe" in p["adapter"]:
        assert p["accelerated"] is False
    assert p["adapter"] in WgpuBackend().describe()


def test_software_adapter_warns_once_per_device(monkeypatch):
    gpu = device.SHARED.get()
    monkeypatch.setattr(gpu, "warned_software", False)
    monkeypatch.setattr(gpu, "info", dict(gpu.info, software=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        WgpuBackend()
        WgpuBackend()
    assert len([w for w in caught if "software" in str(w.message)]) == 1


def test_float16_without_the_feature_says_so(monkeypatch):
    gpu = device.SHARED.get()
    monkeypatch.setattr(gpu, "info", dict(gpu.info, f16=False))
    with pytest.raises(ValueError, match="shader-f16"):
        WgpuBackend(dtype="float16")


def test_shared_device_is_opened_once_under_threads(monkeypatch):
    opened = []
    monkeypatch.setattr(device, "open_gpu", lambda: opened.append(object()) or opened[-1])
    holder = device.SharedDevice()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: holder.get(), range(32)))
    assert len(opened) == 1 and all(g is opened[0] for g in got)


def test_a_backend_given_its_own_device_uses_it():
    own = device.open_gpu()
    backend = WgpuBackend(gpu=own)
    assert backend.gpu is own and own is not device.SHARED.get()
    graph = Graph((node(Op.EMBED, ["ln_w", "ln_b", "word", "input_ids"], "x", eps=1e-12),
                   node(Op.LINEAR, ["x", "w", "b"], "y", activation="gelu")), ("input_ids",), {"y": "y"})
    rng = np.random.default_rng(0)
    params = {"ln_w": rng.standard_normal(8), "ln_b": rng.standard_normal(8), "word": rng.standard_normal((5, 8)),
              "w": rng.standard_normal((6, 8)), "b": rng.standard_normal(6)}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    inputs = {"input_ids": rng.integers(0, 5, (2, 3))}
    built = own.buffers_created
    got = backend.compile(graph, params)(inputs)["y"]
    assert own.buffers_created > built  # made on the device it was given
    np.testing.assert_array_equal(got, WgpuBackend().compile(graph, params)(inputs)["y"])


def test_outputs_are_float32_and_writable(model):
    out = model.forward(**make_inputs(SHAPES["head16_pretrain"][1], 1, 5))
    for v in out.values():
        assert v.dtype == np.float32 and v.flags.writeable


def test_slots_never_hold_two_live_values():
    nodes = [node(Op.EMBED, ["ln_w", "ln_b", "word", "input_ids"], "x0", eps=1e-12)]
    for i in range(4):
        x = f"x{i}"
        nodes += [node(Op.LINEAR, [x, "up", "up_b"], f"h{i}", activation="gelu"),
                  node(Op.LINEAR, [f"h{i}", "down", "down_b"], f"d{i}", activation="none"),
                  node(Op.ADD_LN, [f"d{i}", x, "ln_w", "ln_b"], f"x{i + 1}", eps=1e-12),
                  node(Op.FIRST_TOKEN, [x], f"unread{i}")]
    graph = Graph(tuple(nodes), ("input_ids",), {"last": "x4", "second": "x2"})
    params = {"ln_w": (8,), "ln_b": (8,), "word": (5, 8), "up": (24, 8), "up_b": (24,), "down": (8, 24),
              "down_b": (8,)}
    nbytes = nbytes_of(token_shapes(graph, params, 3, 7), value_itemsize(graph, 4))
    slot_of, sizes = assign_slots(graph, nbytes)
    last_read = {name: i for i, n in enumerate(nodes) for name in n.inputs}
    for i, n in enumerate(nodes):
        live = {m.output for m in nodes[:i] if last_read.get(m.output, -1) >= i or m.output in ("x4", "x2")}
        assert slot_of[n.output] not in {slot_of[v] for v in live}, n.output
        assert sizes[slot_of[n.output]] >= nbytes[n.output]
    assert len(sizes) < len(nodes) / 2  # and slots are reused
