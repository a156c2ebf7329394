"""MLX-specific checks: each lowering against the numpy op, GELU/exp accuracy, BLAS, compile cache,
GEMM plans, devices."""

# The imports below follow the registry's explicit BLAS step, which must run first.
# ruff: noqa: E402

from __future__ import annotations

# First, before anything imports mlx.core: the registry loads OpenBLAS into the process when
# the backend is first asked for, and libmlx binds its BLAS when it loads
# (test_gemm_runs_on_the_loaded_blas checks).
from cbert.backends import backend_class

MLXBackend = backend_class("mlx")

# isort: split

import json
import math
import os
import subprocess
import sys
import warnings

import mlx.core as mx
import numpy as np
import pytest
from conftest import SHAPES, assert_close, make_inputs, min_cosine, run_cli

import cbert
from cbert.backends import get_backend, probe
from cbert.backends.mlx import _blas, lowering, plan, tuning
from cbert.backends.mlx.backend import MLXExecutable
from cbert.backends.mlx.lowering import Precision
from cbert.backends.mlx.plan import NO_PLAN, ROW_RANGES, GemmPlan
from cbert.backends.numpy import NumpyExecutable
from cbert.backends.numpy import lowering as ref
from cbert.errors import BackendUnavailable
from cbert.families import build_graph
from cbert.ir import ACTIVATIONS, Op

F32 = Precision(mx.float32, mx.float32, cpu=True)
# The half paths: CPU (float32 GEMMs over half-rounded values) and the GPU formulation
# (half GEMMs, fused SDPA with a boolean mask, mx.erf), which MLX runs on the CPU stream
# through its generic fallbacks, so it is checked here too.
HALF = [Precision(mx.float16, mx.float32, cpu=True), Precision(mx.bfloat16, mx.float32, cpu=True),
        Precision(mx.float16, mx.float16, cpu=False), Precision(mx.bfloat16, mx.bfloat16, cpu=False)]
rng = np.random.default_rng(7)


def _r(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _run(p: Precision, op: Op, *args, **attrs):
    """Lower one op, with numpy inputs, on the CPU stream; float32 numpy out."""
    with mx.stream(mx.cpu):
        out = mx.compile(lambda *a: lowering.TABLE[op](p, *a, **attrs))(*[mx.array(a) for a in args])
        return np.array(out.astype(mx.float32))


def _awkward_mask(batch: int, seq: int) -> np.ndarray:
    mask = np.ones((batch, seq), dtype=np.int32)
    mask[1, 3:] = 0  # partly padded
    mask[2, 1:] = 0  # one real token
    mask[3, :] = 0  # nothing attended: the reference gives uniform attention
    return mask


# -- op by op against the numpy reference ----------------------------------------------------


def test_every_op_has_a_lowering():
    assert set(lowering.TABLE) == set(Op) == set(ref.TABLE)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 7, 13, 29), (2, 33, 20, 1)])
def test_linear(act, shape):
    b, s, k, n = shape
    x, w, bias = _r(b, s, k), _r(n, k, scale=0.5), _r(n)
    assert_close(_run(F32, Op.LINEAR, x, w, bias, activation=act), ref.linear(x, w, bias, act), f"linear {act}",
                 1e-5)


def test_embed():
    ids = [rng.integers(0, n, (3, 11)).astype(np.int32) for n in (17, 11, 3)]
    tables = [_r(n, 21) for n in (17, 11, 3)]
    w, b = _r(21), _r(21)
    args = [w, b]
    for t, i in zip(tables, ids):
        args += [t, i]
    assert_close(_run(F32, Op.EMBED, *args, eps=1e-12), ref.embed(*args, eps=1e-12), "embed", 1e-5)


def test_mask_bias_is_exact():
    mask = _awkward_mask(4, 9)
    np.testing.assert_array_equal(_run(F32, Op.MASK_BIAS, mask), ref.mask_bias(mask))


@pytest.mark.parametrize("heads,d", [(1, 1), (4, 5), (3, 16), (2, 64)])
def test_attention_ops(heads, d):
    batch, seq = 4, 9
    qkv = _r(batch, seq, 3 * heads * d, scale=2.0)
    bias = ref.mask_bias(_awkward_mask(batch, seq))
    want_p = ref.attn_probs(qkv, bias, heads)
    assert_close(_run(F32, Op.ATTN_PROBS, qkv, bias, heads=heads), want_p, "attn_probs", 1e-6)
    assert_close(_run(F32, Op.ATTN_APPLY, want_p, qkv, heads=heads), ref.attn_apply(want_p, qkv, heads),
                 "attn_apply", 1e-5)
    assert_close(_run(F32, Op.ATTENTION, qkv, bias, heads=heads), ref.attention(qkv, bias, heads), "attention", 1e-5)


@pytest.mark.parametrize("p", HALF, ids=lambda p: f"{p.store}-gemm-{p.gemm}")
def test_half_attention_padded_rows_are_finite_and_match(p):
    heads, d, batch, seq = 4, 16, 4, 23
    qkv = _r(batch, seq, 3 * heads * d, scale=3.0)
    bias = ref.mask_bias(_awkward_mask(batch, seq))
    got = _run(p, Op.ATTENTION, qkv, bias, heads=heads)
    assert np.isfinite(got).all()
    assert min_cosine(got, ref.attention(qkv, bias, heads)) >= 0.999
    probs = _run(p, Op.ATTN_PROBS, qkv, bias, heads=heads)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[3], 1.0 / seq, rtol=1e-2)  # the unattended row: uniform


def test_layernorm_ops():
    x, r, w, b = _r(3, 5, 37, scale=4.0), _r(3, 5, 37), _r(37), _r(37)
    assert_close(_run(F32, Op.LAYERNORM, x, w, b, eps=1e-5), ref.layernorm(x.copy(), w, b, 1e-5), "layernorm", 1e-5)
    assert_close(_run(F32, Op.ADD_LN, x, r, w, b, eps=1e-12), ref.add_ln(x, r, w, b, 1e-12), "add_ln", 1e-5)
    for p in HALF:
        got = _run(p, Op.ADD_LN, x.astype(np.float16).astype(np.float32), r, w, b, eps=1e-12)
        assert min_cosine(got, ref.add_ln(x, r, w, b, 1e-12)) >= 0.999


def test_layernorm_statistics_survive_a_large_offset():
    # The CPU LayerNorm takes its sums as GEMVs; the variance must still be two-pass
    # (centred first): E[x^2] - E[x]^2 would lose every digit of a spread of 1 around 3000.
    x, w, b = _r(4, 6, 768) + np.float32(3000.0), _r(768), _r(768)
    got = _run(F32, Op.LAYERNORM, x, w, b, eps=1e-12)
    assert_close(got, ref.layernorm(x.copy(), w, b, 1e-12), "layernorm +3000", 1e-3)


def test_first_token_and_concat():
    x = _r(3, 4, 5)
    np.testing.assert_array_equal(_run(F32, Op.FIRST_TOKEN, x), ref.first_token(x))
    parts = [_r(2, 3), _r(4, 3), _r(1, 3)]
    np.testing.assert_array_equal(_run(F32, Op.CONCAT, *parts, axis=0), ref.concat(parts, 0))


# -- transcendental replacements ------------------------------------------------------------


def _exact_gelu(x: np.ndarray) -> np.ndarray:
    return np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])


@pytest.mark.parametrize("cpu", [True, False], ids=["cpu-polynomial-f32", "gpu-mx.erf"])
def test_gelu_accuracy(cpu):
    x = np.concatenate([np.linspace(-16, 16, 320_001, dtype=np.float32),
                        np.array([0.0, -0.0, 1e-30, -1e-30, 5.41, -5.41, 5.43, -5.43, 13.0, -13.0, 40.0, -40.0,
                                  3e38, -3e38], np.float32)])
    with mx.stream(mx.cpu):
        got = np.array(mx.compile(lambda a: lowering.gelu(a, cpu))(mx.array(x))).astype(np.float64)
    err = np.abs(got - _exact_gelu(x))
    big = np.abs(x) > 16  # float32 itself cannot hold 40 +- 1e-6; relative there
    assert err[~big].max() <= 1e-6, f"max abs error {err[~big].max():.3g} at x={x[~big][err[~big].argmax()]}"
    assert (err[big] <= 1e-7 * np.abs(x[big])).all()


def test_exp_nonpositive_accuracy():
    x = np.concatenate([np.linspace(-87, 0, 200_001, dtype=np.float32), np.array([-1e4, -3.4e38], np.float32)])
    with mx.stream(mx.cpu):
        got = np.array(mx.compile(lowering.exp_nonpositive)(mx.array(x))).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    inside = x > -87
    rel = np.abs(got[inside] - want[inside]) / want[inside]
    assert rel.max() <= 2e-7
    assert got[x < -87].max() < 2e-38  # stands in for 0


# -- BLAS, compile cache, devices, dtypes -----------------------------------------------------


def test_probe_reports_blas():
    info = probe("mlx")
    assert {"available", "accelerated", "device", "blas"} <= set(info)
    assert info["available"] is True
    assert info["accelerated"] is (mx.metal.is_available() or mx.is_available(mx.gpu))
    if sys.platform.startswith("linux"):
        have = any(os.path.exists(p) for p in _blas._candidates())
        assert ("OpenBLAS" in info["blas"]) is have, info["blas"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS preload is Linux-only")
def test_libmlx_binds_its_gemm_to_the_loaded_blas():
    # What libmlx's cblas_sgemm resolved to, as the dynamic linker reports it: no timing (MLX's
    # bundled reference BLAS runs ~2.5 GFLOP/s here, OpenBLAS ~100).
    if not any(os.path.exists(p) for p in _blas._candidates()):
        pytest.fail("no OpenBLAS on this machine: apt-get install libopenblas0-pthread")
    code = ("from cbert.backends import backend_class\n"
            "backend_class('mlx')\n"
            "import mlx.core as mx\n"
            "with mx.stream(mx.cpu):\n"
            "    a = mx.ones((64, 64))\n"
            "    mx.eval(a @ a)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LD_DEBUG": "bindings"})
    assert out.returncode == 0, out.stderr[-2000:]
    bound = [line.split(" to ", 1)[1] for line in out.stderr.splitlines()
             if "libmlx" in line and "`cblas_sgemm'" in line]
    assert bound and all("openblas" in target for target in bound), bound


def test_probe_tells_when_mlx_was_imported_first():
    code = ("import mlx.core\n"
            "from cbert.backends import probe\n"
            "print(probe('mlx')['blas'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if sys.platform.startswith("linux"):
        assert "bundled" in out.stdout and "imported before" in out.stdout, out.stdout


def test_missing_mlx_says_how_to_install():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'mlx' or name.startswith('mlx.'):\n"
            "            raise ImportError(f'No module named {name!r}')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import cbert\n"
            "from cbert.backends import get_backend, probe\n"
            "from cbert.errors import BackendUnavailable\n"
            "assert probe('mlx')['available'] is False\n"
            "try:\n"
            "    get_backend('mlx')\n"
            "except BackendUnavailable as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install "cbert[mlx]"' in out.stdout


def _graph_and_params(checkpoints, name="odd13", **kw):
    folder, _ = checkpoints(name)
    m = cbert.load(folder, backend="numpy")
    graph = build_graph(m.config, m.checkpoint.heads, **kw)
    return m, graph, m._graph_params(graph)


@pytest.fixture(autouse=True)
def plan_cache(tmp_path, monkeypatch):
    """Every test reads and writes GEMM plans in its own cache folder, empty at start."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cbert" / "mlx-gemm-plans"


def _count_traces(monkeypatch) -> list[int]:
    """Wrap MLXExecutable._trace (before compiling) so that each trace is counted."""
    traces = [0]
    trace = MLXExecutable._trace

    def counted(self, *args):
        traces[0] += 1
        return trace(self, *args)

    monkeypatch.setattr(MLXExecutable, "_trace", counted)
    return traces


def test_compile_cache_does_not_retrace(checkpoints, monkeypatch):
    m, graph, params = _graph_and_params(checkpoints)
    traces = _count_traces(monkeypatch)
    run = get_backend("mlx").compile(graph, params)
    assert all(isinstance(v, mx.array) for v in run.weights.values())  # weights converted once, at load
    assert not any(n.op is Op.CONCAT for n in run.graph.nodes)  # QKV folded into one weight
    cfg = SHAPES["odd13"][1]
    a, b = m.check_inputs(**make_inputs(cfg, 2, 9)), m.check_inputs(**make_inputs(cfg, 3, 5))
    first = run(a)
    assert traces[0] == 1
    second = run(a)
    assert traces[0] == 1
    np.testing.assert_array_equal(first["last_hidden_state"], second["last_hidden_state"])
    run(b)
    assert traces[0] == 2
    run(a)
    run(b)
    assert traces[0] == 2


def test_the_ir_is_left_as_given(checkpoints):
    # Layout choices live in the executor's own plan and dicts, never in the graph or its names.
    m, graph, params = _graph_and_params(checkpoints, "head64_untied")
    split = _split_everywhere(graph, 8)
    run = MLXBackend(gemm_plan=split).compile(graph, params)
    folded = [n for n in graph.nodes if n.op is not Op.CONCAT]
    assert list(run.graph.nodes) == folded
    assert run.graph.outputs == graph.outputs and run.graph.inputs == graph.inputs
    assert not any(":" in name for name in [*run.weights, *run.weights_kn])
    # FFN down (K 200 > N 128) runs whole from a [K, N] copy and split from its [N, K] array.
    down = next(n for n in run.graph.nodes if n.op is Op.LINEAR and run.weights[n.inputs[1]].shape == (128, 200))
    record = run.linears[down.output]
    assert record.transposed and record.weight == down.inputs[1] and record.chunks == (8, 8, 8)
    assert run.weights_kn[record.weight].shape == (200, 128)
    # Without a split the [N, K] copy of a [K, N]-held weight is not kept.
    whole = MLXBackend(gemm_plan=GemmPlan()).compile(graph, params)
    assert down.inputs[1] in whole.weights_kn and down.inputs[1] not in whole.weights


def test_buffer_cache_is_raised_at_compile_and_never_lowered(checkpoints):
    m, graph, params = _graph_and_params(checkpoints)
    inputs = m.check_inputs(**make_inputs(SHAPES["odd13"][1], 4, 31))
    previous = mx.set_cache_limit(1)
    try:
        run = get_backend("mlx").compile(graph, params)
        raised = mx.set_cache_limit(1)
        resident = sum(w.nbytes for w in [*run.weights.values(), *run.weights_kn.values()])
        assert raised == resident  # the compiled model's own size, set by compiling
        mx.set_cache_limit(raised)
        run(inputs)
        assert mx.set_cache_limit(raised) == raised  # a forward changes nothing process-wide
        mx.set_cache_limit(1 << 40)
        get_backend("mlx").compile(graph, params)
        assert mx.set_cache_limit(previous) == 1 << 40  # a higher limit is never lowered
    finally:
        mx.set_cache_limit(previous)


@pytest.mark.parametrize("chunk", [8, 16])
def test_linear_split_matches_the_reference(chunk):
    x, w, b = _r(2, 5, 40), _r(96, 40, scale=0.5), _r(96)
    aux = mx.new_stream(mx.cpu)
    with mx.stream(mx.cpu):
        split = mx.compile(lambda x, w, b: lowering.linear_split(F32, x, w, b, "gelu", chunk, aux))
        got = np.array(split(mx.array(x), mx.array(w), mx.array(b)))
    assert_close(got, ref.linear(x, w, b, "gelu"), "linear_split", 1e-5)


def _split_everywhere(graph, chunk: int) -> GemmPlan:
    """A plan that runs every GEMM whose N fits ``chunk`` as linear_split, at every row count."""
    shapes = plan.gemm_shapes(graph, graph.param_shapes)
    return GemmPlan({(k, n, r): chunk for k, n in shapes if n % (2 * chunk) == 0 for r in range(len(ROW_RANGES))})


def test_split_gemms_in_a_whole_forward(checkpoints):
    # head64_untied: QKV, attention output, FFN down (held [K, N] for whole calls, split from
    # its [N, K] array) and pooler split at chunk 8; the FFN up (N = 200) cannot and stays whole.
    m, graph, params = _graph_and_params(checkpoints, "head64_untied")
    backend = MLXBackend(gemm_plan=_split_everywhere(graph, 8))
    run = backend.compile(graph, params)
    inputs = m.check_inputs(**make_inputs(SHAPES["head64_untied"][1], 2, 9))
    got = run(inputs)
    want = NumpyExecutable(graph, params)(inputs)
    for k in want:
        assert_close(got[k], want[k], k)
    stats = backend.stats()
    assert stats["gemm_plan"] == "explicit"
    # Split: 4 layers x (QKV, attention output, FFN down), the pooler and the MLM transform;
    # whole: 4 FFN up, the MLM decoder (N 211) and NSP (N 2).
    assert (stats["gemms_split"], stats["gemms_whole"]) == (4 * 3 + 2, 4 + 2)


def test_rows_past_the_last_range_run_whole(checkpoints):
    m, graph, params = _graph_and_params(checkpoints, "head64_untied")
    backend = MLXBackend(gemm_plan=_split_everywhere(graph, 8))
    run = backend.compile(graph, params)
    cfg = SHAPES["head64_untied"][1]
    inputs = m.check_inputs(**make_inputs(cfg, 5, 60))  # 300 rows: one BLAS call; the pooler's 5 rows split
    want = NumpyExecutable(graph, params)(inputs)
    got = run(inputs)
    for k in want:
        assert_close(got[k], want[k], k)
    assert backend.stats()["gemms_split"] == 1


def test_no_plan_on_disk_means_whole_gemms_and_no_timing(checkpoints):
    folder, _ = checkpoints("odd13")
    code = ("import sys, numpy as np, cbert\n"
            f"m = cbert.load({folder!r}, backend='mlx')\n"
            "m.forward(np.ones((2, 7), dtype=np.int64))\n"
            "print(m.stats())\n"
            "print('tuning imported:', 'cbert.backends.mlx.tuning' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "'gemm_plan': 'none'" in out.stdout and "'gemms_split': 0" in out.stdout
    assert "tuning imported: False" in out.stdout


def test_tuner_writes_an_all_or_nothing_plan_that_compile_reads(checkpoints, plan_cache):
    m, graph, params = _graph_and_params(checkpoints, "head64_untied")
    shapes = plan.gemm_shapes(graph, graph.param_shapes)
    assert shapes == {(128, 384): 4, (128, 128): 6, (128, 200): 4, (200, 128): 4, (128, 211): 1, (128, 2): 1}
    found, path = tuning.tune_gemms(shapes, repeats=1)
    assert path.parent == plan_cache and [p.name for p in plan_cache.iterdir()] == [path.name]  # no temp left
    record = json.loads(path.read_text())
    assert record["machine"] == plan.machine()
    assert [m["rows"] for m in record["measured"]] == ["1-16", "17-64", "65-256"]
    fits = {(k, n) for k, n in shapes if tuning.chunks_that_fit(n)}
    for r, measured in enumerate(record["measured"]):
        taken = {(k, n) for (k, n, rr) in found.chunks if rr == r}
        assert taken == (fits if measured["split_taken"] else set())
        assert measured["split_taken"] == (measured["split_ms"] <= tuning.MARGIN * measured["whole_ms"])
    assert all(n % (2 * c) == 0 for (_, n, _), c in found.chunks.items())
    assert found.source == str(path)
    # Compiling reads it; a graph cut to a subset of the shapes (no MLM head) finds it too.
    assert plan.find_plan(shapes).chunks == found.chunks
    assert get_backend("mlx").compile(graph, params).gemm_plan.source == str(path)
    encoder = graph.select({"last_hidden_state": graph.outputs["last_hidden_state"]})
    assert plan.find_plan(plan.gemm_shapes(encoder, graph.param_shapes)).source == str(path)
    # Another machine's plan is not this machine's.
    assert plan.plan_path(shapes, {**plan.machine(), "cores": 999}) != path


def test_plan_is_decided_per_row_range():
    p = GemmPlan({(768, 2304, 0): 16, (768, 2304, 1): 8})
    assert [p.chunk(768, 2304, rows) for rows in (1, 16, 17, 64, 65, 256, 257)] == [16, 16, 8, 8, None, None, None]
    assert p.chunk(768, 768, 8) is None and p.splits(768, 2304) and not p.splits(768, 768)
    assert NO_PLAN.describe() == "one BLAS call per GEMM"
    assert "rows 1-16: 768->2304 at 16" in p.describe()


def test_a_bad_plan_file_is_named_and_ignored(checkpoints, plan_cache):
    m, graph, params = _graph_and_params(checkpoints)
    shapes = plan.gemm_shapes(graph, graph.param_shapes)
    path = plan.plan_path(shapes)
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "split": [{"k": 52, "n": 52, "rows": "1-16", "chunk": 5}], "gemm_shapes": []}')
    with pytest.warns(UserWarning, match=f"{path.name}.*chunk must be a positive divisor of n / 2.*cbert tune"):
        assert plan.find_plan(shapes) is NO_PLAN
    path.write_text("{not json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert get_backend("mlx").compile(graph, params).gemm_plan is NO_PLAN
    assert any("not a readable GEMM plan" in str(w.message) for w in caught)


def test_cli_tune_then_bench_and_devices_report_the_plan(checkpoints, plan_cache):
    folder, _ = checkpoints("head16_pretrain")
    bench_args = ("bench", folder, "--backends", "mlx", "--batches", "1,2", "--seq", "8", "--runs", "1",
                  "--seconds", "0", "--warmup", "1")
    r = run_cli(*bench_args)
    assert r.returncode == 0, r.stderr
    assert "cbert mlx float32 GEMM plan: none on disk for this machine and model" in r.stdout
    r = run_cli("devices")
    assert r.returncode == 0, r.stderr
    assert f"  gemm plan cache: {plan_cache} (0 plans; `cbert tune --model DIR` measures one)" in r.stdout

    r = run_cli("tune", "--model", folder)
    assert r.returncode == 0, r.stderr
    files = list(plan_cache.iterdir())
    assert len(files) == 1 and f"wrote {files[0]}" in r.stdout
    assert "GEMMs (K->N x count) 48->2 x1, 48->48 x5, 48->96 x3, 48->97 x1, 48->144 x3, 96->48 x3" in r.stdout
    for rows in ("1-16", "17-64", "65-256"):
        assert f"rows {rows:>7}: whole" in r.stdout
    assert "rows > 256: one BLAS call (not timed)" in r.stdout and "plan: " in r.stdout

    r = run_cli(*bench_args)
    assert r.returncode == 0, r.stderr
    assert f"cbert mlx float32 GEMM plan: {files[0]}; GEMMs split 1x8: " in r.stdout
    r = run_cli("devices")
    assert f"gemm plan cache: {plan_cache} (1 plan;" in r.stdout
    assert f"    {files[0].name}: this machine, measured " in r.stdout


def test_cli_tune_errors_are_one_line(tmp_path):
    r = run_cli("tune", "--model", str(tmp_path / "missing"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("cbert tune: error: ") and "missing" in r.stderr


def test_importing_the_package_changes_nothing():
    # The BLAS load is the registry's explicit step, before the module that imports mlx.core.
    code = ("import os, sys\n"
            "import cbert.backends.mlx, cbert.backends.mlx.plan\n"
            "from cbert.backends.mlx._blas import _candidates\n"
            "ours = [os.path.realpath(p) for p in _candidates() if os.path.exists(p)]\n"
            "maps = lambda: open('/proc/self/maps').read() if sys.platform.startswith('linux') else ''\n"
            "loaded = lambda: any(p in maps() for p in ours)\n"
            "print('mlx.core', 'mlx.core' in sys.modules, 'openblas', loaded())\n"
            "from cbert.backends import backend_class\n"
            "backend_class('mlx')\n"
            "print('mlx.core', 'mlx.core' in sys.modules, 'openblas', loaded())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.splitlines()
    assert before == "mlx.core False openblas False"
    have = sys.platform.startswith("linux") and any(os.path.exists(p) for p in _blas._candidates())
    assert after == f"mlx.core True openblas {have}"


def test_hidden_states_and_attentions_outputs(checkpoints):
    m, graph, params = _graph_and_params(checkpoints, "head16_pretrain", output_hidden_states=True,
                                         output_attentions=True)
    inputs = m.check_inputs(**make_inputs(SHAPES["head16_pretrain"][1], 3, 11))
    got = get_backend("mlx").compile(graph, params)(inputs)
    want = NumpyExecutable(graph, params)(inputs)
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == np.float32
        assert_close(got[k], want[k], k)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_unattended_row(checkpoints, dtype):
    folder, _ = checkpoints("head64_untied")
    cfg = SHAPES["head64_untied"][1]
    inputs = make_inputs(cfg, 4, 17)
    inputs["attention_mask"][2] = 0  # no token attended at all
    want = cbert.load(folder, backend="numpy").forward(**inputs)
    got = cbert.load(folder, backend="mlx", dtype=dtype).forward(**inputs)
    for k in want:
        assert got[k].dtype == np.float32
        if dtype == "float32":
            assert_close(got[k], want[k], k)
        else:
            assert np.isfinite(got[k]).all()
            assert min_cosine(got[k], want[k]) >= 0.999, k


def test_device_choice(checkpoints):
    folder, _ = checkpoints("odd13")
    inputs = make_inputs(SHAPES["odd13"][1], 2, 7)
    cpu = cbert.load(folder, backend="mlx", device="cpu")
    assert cpu.backend.device == mx.Device(mx.cpu)
    default = cbert.load(folder, backend="mlx")
    assert default.backend.device == mx.default_device()
    np.testing.assert_allclose(cpu.forward(**inputs).last_hidden_state,
                               default.forward(**inputs).last_hidden_state, atol=1e-5)
    if mx.is_available(mx.gpu):
        assert cbert.load(folder, backend="mlx", device="gpu").backend.device == mx.Device(mx.gpu)
    else:
        with pytest.raises(BackendUnavailable, match="device='cpu'"):
            get_backend("mlx", device="gpu")


def test_bad_device_and_dtype():
    with pytest.raises(ValueError, match="choose 'gpu' or 'cpu'"):
        get_backend("mlx", device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        get_backend("mlx", dtype="float64")
    with pytest.raises(ValueError, match="dtype"):
        MLXBackend(dtype="int8")
    with pytest.raises(ValueError, match="gemm_plan: expected a cbert.backends.mlx.plan.GemmPlan"):
        MLXBackend(gemm_plan={(52, 52, 0): 8})


def test_mlm_rule_keeps_the_head_in_graph_on_the_cpu():
    # The measured rule (see MLXBackend.mlm_in_graph): in-graph at every CPU batch size.
    b = get_backend("mlx", device="cpu")
    assert all(b.mlm_in_graph(batch, seq) is True for batch, seq in ((1, 8), (8, 128), (64, 512)))
