"""``cbert bench``: encoder throughput across batch sizes and sequence lengths, on this machine.

Every engine (cbert backends x dtypes, and onnxruntime / torch when asked) runs the same base
encoder (the checkpoint's heads cut off, its pooler kept) on the same random ids, in one run:
warm-up, then the median of repeated forwards. Reported: ms per batch, tokens/s, GFLOP/s
and the share of this machine's GEMM peak (a float32 numpy matmul measured at start), and for
MLX the GEMM plan it ran with (``cbert tune`` measures one) and how many GEMMs it split.
The peer helpers (ONNX export, timing) are shared with ``benchmarks/bench_cpu.py``.
``cold_start`` (``cbert bench --cold``) times a one-shot ``cbert embed`` per backend instead, each
run a fresh process (shared with ``benchmarks/bench_corpus.py``).
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..extras import need

PEERS = ("onnxruntime", "torch")


def time_engine(run: Callable, inputs: dict, seconds: float, min_runs: int = 3, max_runs: int = 200,
                warmup: int = 2) -> tuple[float, np.ndarray]:
    """Median seconds per forward after ``warmup`` calls (the first compiles/traces): at least
    ``min_runs`` timed calls, more while ``seconds`` last."""
    out = run(inputs)
    for _ in range(max(0, warmup - 1)):
        run(inputs)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < seconds and len(times) < max_runs):
        t = time.perf_counter()
        run(inputs)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def export_onnx(model, path: str) -> list[str]:
    """Export a transformers base model (last_hidden_state, pooler_output) with dynamic batch and
    sequence axes; returns the input names the exported graph takes."""
    import torch

    # What the forward takes: a model without token types has no token_type_ids argument.
    takes = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in takes]

    class Positional(torch.nn.Module):
        # The exporter passes inputs positionally; the forward's argument order is not stable across versions.
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, *args):
            out = self.model(**dict(zip(names, args)))
            return (out.last_hidden_state,) + ((out.pooler_output,) if getattr(out, "pooler_output", None)
                                               is not None else ())

    ids = torch.ones(2, 16, dtype=torch.int64)
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))[:len(names)]
    axes = {0: "batch", 1: "seq"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Positional(model).eval(), example, path, input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes={**{n: axes for n in names},
                                                                            "last_hidden_state": axes},
                          opset_version=17, dynamo=False)
    return names


def gemm_peak(n: int = 1024, repeats: int = 3) -> float:
    """This machine's float32 GEMM throughput through numpy's BLAS, GFLOP/s (median of ``repeats``)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def encoder_flops(cfg, batch: int, seq: int) -> float:
    """Multiply-adds x2 of the encoder and pooler: every Linear (Q, K, V, O, FFN in and out) on every
    token, plus QK^T and PV (4*B*S*S*H per layer); embeddings and elementwise ops are not counted."""
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    tokens = batch * seq
    linear = 2 * tokens * n * (4 * h * h + 2 * h * i)
    attention = 4 * batch * seq * seq * h * n
    return float(linear + attention + 2 * batch * h * h)


@dataclass
class Result:
    engine: str
    batch: int
    seq: int
    ms: float
    tokens_per_s: float
    gflops: float
    peak_share: float


def progress_bar(i: int, total: int, label: str, stream=sys.stderr, width: int = 30) -> None:
    filled = int(width * i / max(total, 1))
    end = "\n" if i >= total else ""
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {i}/{total} {label:<40}{end}")
    stream.flush()


def _cbert_engine(path, backend: str, dtype: str):
    """(run, model) for one cbert backend and dtype."""
    from ..model import Model, load

    m = load(path, backend=backend, dtype=dtype)
    heads = m.checkpoint.heads
    encoder = replace(heads, mlm=False, nsp=False, seq_cls=0, token_cls=0, qa=False, pooler=heads.pooler)
    m = Model(replace(m.checkpoint, heads=encoder), m.backend)
    return (lambda inp: m.forward(**inp).last_hidden_state), m


def _gemm_plan_line(points: dict[str, dict]) -> str:
    """The GEMM plan an MLX engine ran with and, per point, how many GEMMs it split."""
    source = next(iter(points.values()))["gemm_plan"]
    if source == "none":
        source = "none on disk for this machine and model (every GEMM one BLAS call; `cbert tune` measures one)"
    split = ", ".join(f"{p}: {s['gemms_split']} of {s['gemms_split'] + s['gemms_whole']}"
                      for p, s in points.items())
    return f"{source}; GEMMs split {split}"


def _peer_engines(path, names: list[str], workdir: str) -> dict[str, Callable]:
    if not names:
        return {}
    torch = need("torch", "--compare")
    transformers = need("transformers", "--compare")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()
    engines: dict[str, Callable] = {}
    for name in names:
        if name == "torch":
            def run(inp, m=model):
                with torch.inference_mode():
                    return m(**{k: torch.from_numpy(v) for k, v in inp.items()}).last_hidden_state.numpy()

            engines[f"torch {torch.__version__.split('+')[0]}"] = run
        elif name == "onnxruntime":
            ort = need("onnxruntime", "--compare onnxruntime")
            need("onnx", "--compare onnxruntime")
            onnx_path = os.path.join(workdir, "model.onnx")
            inputs = export_onnx(model, onnx_path)
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
            engines[f"onnxruntime {ort.__version__}"] = (
                lambda inp, s=sess, keep=inputs: s.run(["last_hidden_state"], {k: inp[k] for k in keep})[0])
        else:
            raise ValueError(f"--compare {name!r}: choose from {', '.join(PEERS)}")
    return engines


def run_bench(path, backends: list[str], dtypes: list[str], batches: list[int], seqs: list[int],
              compare: list[str] = (), seconds: float = 2.0, runs: int = 5, warmup: int = 2,
              progress=progress_bar) -> dict:
    import tempfile

    from ..backends import backend_class
    from ..checkpoint import load_checkpoint

    unknown = [c for c in compare if c not in PEERS]
    if unknown:
        raise ValueError(f"--compare {unknown[0]!r}: choose from {', '.join(PEERS)}")
    cfg = load_checkpoint(path).config
    for v, what in [(b, "--batches") for b in batches] + [(s, "--seq") for s in seqs]:
        if v < 1:
            raise ValueError(f"{what} {v}: expected positive integers")
    too_long = [s for s in seqs if s > cfg.max_seq_len]
    if too_long:
        raise ValueError(f"--seq {too_long[0]} is longer than the model's maximum of {cfg.max_seq_len} positions")
    engines: dict[str, Callable] = {}
    planned = {}  # engine -> model, for the backends that run a GEMM plan (MLX)
    for b in backends:
        cls = backend_class(b)
        for d in dtypes:
            if d in cls.dtypes:
                engines[f"cbert {b} {d}"], model = _cbert_engine(path, b, d)
                if b == "mlx":
                    planned[f"cbert {b} {d}"] = model
    if not engines:
        raise ValueError(f"none of the backends {', '.join(backends)} runs dtype {', '.join(dtypes)}")
    peak = gemm_peak()
    results: list[Result] = []
    plan_stats: dict[str, dict[str, dict]] = {name: {} for name in planned}
    with tempfile.TemporaryDirectory(prefix="cbert-bench-") as workdir:
        engines.update(_peer_engines(path, list(compare), workdir))
        total, done = len(engines) * len(batches) * len(seqs), 0
        for seq in seqs:
            for batch in batches:
                rng = np.random.default_rng(batch * 1000 + seq)
                inputs = {"input_ids": rng.integers(1, cfg.vocab_size, (batch, seq), dtype=np.int64),
                          "attention_mask": np.ones((batch, seq), dtype=np.int64),
                          "token_type_ids": np.zeros((batch, seq), dtype=np.int64)}
                if cfg.type_vocab_size == 0:
                    del inputs["token_type_ids"]
                for name, run in engines.items():
                    if progress:
                        progress(done, total, f"{name} batch {batch} x seq {seq}")
                    sec, _ = time_engine(run, inputs, seconds, min_runs=runs, warmup=warmup)
                    if name in planned:
                        plan_stats[name][f"{batch}x{seq}"] = planned[name].stats()
                    flops = encoder_flops(cfg, batch, seq)
                    results.append(Result(name, batch, seq, sec * 1e3, batch * seq / sec, flops / sec / 1e9,
                                          flops / sec / 1e9 / peak))
                    done += 1
        if progress:
            progress(total, total, "done")
    return {"model": str(path), "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
            "gemm_peak_gflops": peak, "flops": "encoder Linears + attention matmuls + pooler",
            "results": [asdict(r) for r in results],
            "gemm_plans": {name: _gemm_plan_line(points) for name, points in plan_stats.items()}}


# -- cold start: a one-shot `cbert embed`, each run a fresh process ----------------------------------

COLD_TEXT = "Patient denies chest pain."


def cold_start(model: str, backends: list[str], runs: int = 2, text: str = COLD_TEXT,
               progress=progress_bar) -> dict:
    """Wall seconds of ``cbert embed --backend B --model MODEL TEXT`` for each backend, ``runs`` times,
    each in a fresh process: what a user waits for one vector, interpreter start to exit.

    The first run on a machine may fill caches on disk that later processes reuse (MLX's compiled
    CPU kernels in ``/tmp/mlx``, the Vulkan driver's shader cache); the later runs are the usual case.
    A backend whose run fails gets the last line of its error instead of times.
    """
    import subprocess

    from ..backends import BACKENDS

    if runs < 1:
        raise ValueError(f"--cold-runs {runs}: expected a positive integer")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"--backends {unknown[0]!r}: choose from {', '.join(BACKENDS)}")
    command = [sys.executable, "-m", "cbert.cli", "embed", "--model", str(model)]
    results: dict[str, list[float] | str] = {}
    total = len(backends) * runs
    for i, backend in enumerate(backends):
        times: list[float] = []
        for r in range(runs):
            if progress:
                progress(i * runs + r, total, f"cbert embed --backend {backend}, run {r + 1}")
            start = time.perf_counter()
            done = subprocess.run([*command, "--backend", backend, text], capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
                results[backend] = f"failed: {lines[-1]}"
                break
        else:
            results[backend] = times
    if progress:
        progress(total, total, "done")
    return {"model": str(model), "text": text, "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{platform.system()}", "runs": runs, "cold_seconds": results}


def format_cold(report: dict) -> str:
    runs = report["runs"]
    lines = [f'One-shot `cbert embed "{report["text"]}"`, wall seconds of a fresh process ({report["machine"]}); '
             "run 1 may fill on-disk caches, later runs reuse them",
             f"{'backend':<10} " + " ".join(f"{'run ' + str(r + 1):>8}" for r in range(runs))]
    lines.append("-" * len(lines[-1]))
    for backend, times in report["cold_seconds"].items():
        cells = times if isinstance(times, str) else " ".join(f"{t:8.2f}" for t in times)
        lines.append(f"{backend:<10} {cells}")
    return "\n".join(lines)


def format_table(report: dict) -> str:
    lines = [f"GEMM peak (numpy float32 1024^3 matmul): {report['gemm_peak_gflops']:.1f} GFLOP/s; "
             f"{report['machine']}",
             f"{'engine':<28} {'batch':>5} {'seq':>5} {'ms':>9} {'tokens/s':>10} {'GFLOP/s':>8} {'% peak':>7}"]
    lines.append("-" * len(lines[-1]))
    for r in report["results"]:
        lines.append(f"{r['engine']:<28} {r['batch']:>5} {r['seq']:>5} {r['ms']:9.2f} {r['tokens_per_s']:10.0f} "
                     f"{r['gflops']:8.1f} {100 * r['peak_share']:6.1f}%")
    for engine, plan in report.get("gemm_plans", {}).items():
        lines.append(f"{engine} GEMM plan: {plan}")
    return "\n".join(lines)


def write_json(report: dict, path: str) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def plot(report: dict, path: str) -> None:
    """tokens/s against batch size, one panel per sequence length, one line per engine."""
    matplotlib = need("matplotlib", "--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    seqs = sorted({r["seq"] for r in results})
    fig, axes = plt.subplots(1, len(seqs), figsize=(5.5 * len(seqs), 4.5), squeeze=False)
    for ax, seq in zip(axes[0], seqs):
        for engine in dict.fromkeys(r["engine"] for r in results):
            pts = sorted((r["batch"], r["tokens_per_s"]) for r in results if r["engine"] == engine and r["seq"] == seq)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=engine)
        ax.set_xscale("log", base=2)
        batches = sorted({r["batch"] for r in results})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_title(f"sequence length {seq}")
        ax.grid(True, which="both", alpha=0.3)
        speeds = [r["tokens_per_s"] for r in results if r["seq"] == seq]
        if max(speeds) > 20 * min(speeds):  # engines far apart: a log scale keeps the slow ones readable
            ax.set_yscale("log")
            ax.set_ylabel("tokens / s (log scale)")
        else:
            ax.set_ylim(bottom=0)
            ax.set_ylabel("tokens / s")
    handles, labels = axes[0][0].get_legend_handles_labels()  # one legend under the panels, clear of the lines
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    fig.suptitle(f"{Path(report['model']).name}: encoder throughput ({report['machine']}; "
                 f"GEMM peak {report['gemm_peak_gflops']:.0f} GFLOP/s)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
