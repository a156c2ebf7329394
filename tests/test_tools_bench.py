"""`cbert bench` through a subprocess on tiny shapes (timings are never asserted: the machine is shared)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli as run

from cbert.config import ModelConfig
from cbert.tools.bench import encoder_flops


@pytest.fixture(scope="module")
def folder(checkpoints):
    return checkpoints("head16_pretrain")[0]


def test_bench_with_peers_json_and_plot(folder, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    r = run("bench", folder, "--backends", "numpy,wgpu", "--dtypes", "float32", "--batches", "1,2", "--seq", "8,16",
            "--runs", "1", "--seconds", "0", "--warmup", "1", "--compare", "onnxruntime,torch", "--json", str(out),
            "--plot", str(png))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    engines = {x["engine"] for x in report["results"]}
    assert {"cbert numpy float32", "cbert wgpu float32"} <= engines
    assert any(e.startswith("onnxruntime") for e in engines) and any(e.startswith("torch") for e in engines)
    assert len(report["results"]) == len(engines) * 2 * 2
    assert report["gemm_peak_gflops"] > 0
    for x in report["results"]:
        assert x["ms"] > 0 and x["tokens_per_s"] == pytest.approx(x["batch"] * x["seq"] / x["ms"] * 1e3)
        assert x["peak_share"] == pytest.approx(x["gflops"] / report["gemm_peak_gflops"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "] 16/16 done" in r.stderr  # the progress bar ran to its end: 4 engines x 2 batches x 2 lengths
    assert "% peak" in r.stdout and "GEMM peak" in r.stdout


def test_flop_count():
    cfg = ModelConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    # BERT-base at 1 x 128: 2 * 85M linear params * 128 tokens + 4 * 128^2 * 768 * 12 + pooler
    want = 2 * 128 * 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 4 * 128 * 128 * 768 * 12 + 2 * 768 * 768
    assert encoder_flops(cfg, 1, 128) == want
    assert 21e9 < want < 23e9


@pytest.mark.parametrize("args,message", [
    (("--seq", "4096"), "--seq 4096 is longer than the model's maximum of 48"),
    (("--batches", "1,x"), "--batches '1,x': expected comma-separated integers"),
    (("--backends", "numpy", "--dtypes", "float16"), "none of the backends numpy runs dtype float16"),
    (("--compare", "tensorflow"), "--compare 'tensorflow'"),
    (("--plot", "x.png"), '--plot needs matplotlib, which is not installed'),
])
def test_bad_input(folder, tmp_path, args, message):
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nclass B:\n    def find_spec(self, name, *a):\n"
        "        if name == 'matplotlib': raise ImportError('blocked')\nsys.meta_path.insert(0, B())\n")
    r = run("bench", folder, "--batches", "1", "--seq", "8", "--runs", "1", "--seconds", "0", *args,
            env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("cbert bench: error")]) == 1


def test_cold_times_a_one_shot_embed_per_backend_in_fresh_processes(folder, tmp_path):
    out = tmp_path / "cold.json"
    r = run("bench", folder, "--cold", "--backends", "numpy,mlx", "--cold-runs", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert set(report["cold_seconds"]) == {"numpy", "mlx"}
    for times in report["cold_seconds"].values():
        assert len(times) == 2 and all(t > 0 for t in times)
    assert "One-shot `cbert embed" in r.stdout and r.stdout.count("\n") >= 4
    assert "] 4/4 done" in r.stderr
    r = run("bench", folder, "--cold", "--backends", "numpy,cuda")
    assert r.returncode == 2 and "--backends 'cuda': choose from" in r.stderr, r.stderr
