"""CPU throughput, side by side in one run: cbert MLX vs the numpy reference vs onnxruntime vs torch.

BERT-base shape (vocab 28996, 12 layers x 768, FFN 3072) with random weights, written by
transformers' save_pretrained(safe_serialization=True) into a temporary folder; fp32; 2
threads for every engine. Prints ms per batch, tokens/s and ratios, and checks that
every engine's last_hidden_state agrees with torch's. Before timing MLX it runs `cbert tune`
for the checkpoint (the explicit step that measures and caches the MLX CPU GEMM plan), so
MLX is timed with the plan a user gets after tuning; each MLX line says the plan it used.

    python benchmarks/bench_cpu.py [--threads 2] [--seconds 6] [--shapes 1x32,8x128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0, help="timing budget per engine and shape")
    ap.add_argument("--shapes", default="1x32,8x128", help="batch x seq pairs, comma separated")
    ap.add_argument("--engines", default="mlx,numpy,onnxruntime,torch")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                    help="time each engine in its own process (default): thread pools that spin after a call "
                         "(OpenMP, OpenBLAS) slow the next engine in a shared process, measured here: numpy's "
                         "8x128 took 1.56 s next to torch and onnxruntime, 1.30 s alone")
    ap.add_argument("--folder", help=argparse.SUPPRESS)  # an isolated child reuses the parent's checkpoint
    ap.add_argument("--dump", help=argparse.SUPPRESS)  # where an isolated child writes its timings and outputs
    return ap.parse_args()


ARGS = _args()
# BLAS thread pools read these when their library loads, so they go first.
for var in THREADS_ENV:
    os.environ[var] = str(ARGS.threads)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cbert  # noqa: E402
from cbert.tools.bench import export_onnx, time_engine  # noqa: E402  (shared with `cbert bench`)

CONFIG = dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
              intermediate_size=3072, max_position_embeddings=512)


def write_checkpoint(folder: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**CONFIG), add_pooling_layer=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder, safe_serialization=True)
    return model


def make_engines(folder: str, model: torch.nn.Module, names: list[str]) -> dict[str, Callable]:
    """name -> run(inputs) -> last_hidden_state as numpy."""
    engines: dict[str, Callable] = {}
    for name in names:
        if name in ("mlx", "numpy"):
            m = cbert.load(folder, backend=name)
            engines[name] = lambda inp, m=m: m.forward(**inp).last_hidden_state
            if name == "mlx":
                print(f"# mlx: {m.backend.describe()}")
                engines[name].stats = m.stats  # which GEMM plan each forward used
        elif name == "onnxruntime":
            import onnxruntime as ort

            path = os.path.join(folder, "model.onnx")
            export_onnx(model, path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = ARGS.threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            print(f"# onnxruntime {ort.__version__}, {ARGS.threads} intra-op threads")
            engines[name] = lambda inp, s=sess: s.run(["last_hidden_state"], inp)[0]
        elif name == "torch":
            torch.set_num_threads(ARGS.threads)
            print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"attention {model.config._attn_implementation}")

            def run(inp, m=model):
                with torch.inference_mode():
                    return m(**{k: torch.from_numpy(v) for k, v in inp.items()}).last_hidden_state.numpy()

            engines[name] = run
        else:
            raise SystemExit(f"unknown engine {name!r}")
    return engines


def measure(folder: str, model, names: list[str], shapes: list[tuple[int, int]]) -> dict:
    """(shape, engine) -> (seconds per batch, last_hidden_state), all engines in this process."""
    engines = make_engines(folder, model, names)
    results = {}
    for batch, seq in shapes:
        rng = np.random.default_rng(batch * 1000 + seq)
        inputs = {"input_ids": rng.integers(1, CONFIG["vocab_size"], (batch, seq), dtype=np.int64),
                  "attention_mask": np.ones((batch, seq), dtype=np.int64),
                  "token_type_ids": np.zeros((batch, seq), dtype=np.int64)}
        for name, run in engines.items():
            results[(f"{batch}x{seq}", name)] = time_engine(run, inputs, ARGS.seconds)
            if hasattr(run, "stats"):
                print(f"# {name} {batch}x{seq}: {run.stats()}")
    return results


def tune_mlx(folder: str) -> None:
    """`cbert tune` for the checkpoint: the MLX GEMM plan is measured once and cached, as a user would."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "cbert.cli", "tune", "--model", folder], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    print("# mlx: ran `cbert tune` for this checkpoint first:")
    print("\n".join(f"#   {line}" for line in out.splitlines()[1:]))


def measure_isolated(folder: str, names: list[str]) -> dict:
    import subprocess

    results = {}
    for name in names:
        dump = os.path.join(folder, f"{name}.npz")
        cmd = [sys.executable, __file__, "--engines", name, "--no-isolate", "--folder", folder, "--dump", dump,
               "--threads", str(ARGS.threads), "--seconds", str(ARGS.seconds), "--shapes", ARGS.shapes]
        subprocess.run(cmd, check=True)
        with np.load(dump) as z:
            for key in z.files:
                if key.endswith(":out"):
                    shape = key.split(":")[0]
                    results[(shape, name)] = (float(z[f"{shape}:sec"]), z[key])
    return results


def main() -> None:
    names = ARGS.engines.split(",")
    shapes = [tuple(int(v) for v in s.split("x")) for s in ARGS.shapes.split(",")]
    with tempfile.TemporaryDirectory(prefix="cbert-bench-") as tmp:
        folder = ARGS.folder or tmp
        if ARGS.folder:
            model = transformers.BertModel.from_pretrained(folder).eval()
        else:
            model = write_checkpoint(folder)
            if "mlx" in names:
                tune_mlx(folder)
        if ARGS.isolate and len(names) > 1:
            results = measure_isolated(folder, names)
        else:
            results = measure(folder, model, names, shapes)
        if ARGS.dump:  # a child of an isolated run: hand the figures to the parent
            np.savez(ARGS.dump, **{f"{shape}:sec": sec for (shape, _), (sec, _) in results.items()},
                     **{f"{shape}:out": out for (shape, _), (_, out) in results.items()})
            return
    rows = []
    for shape in dict.fromkeys(s for s, _ in results):
        ref = results.get((shape, "torch"), results[(shape, names[0])])[1]
        for name in names:
            sec, out = results[(shape, name)]
            b, s = (int(v) for v in shape.split("x"))
            rows.append((shape, name, sec, b * s / sec, float(np.abs(out - ref).max())))
    _print(rows, names)


def _print(rows: list[tuple], names: list[str]) -> None:
    where = "each engine in its own process" if ARGS.isolate else "all engines in one process"
    print(f"\nfp32, {ARGS.threads} threads, {where}; median of repeated forwards; tok/s = batch*seq / time")
    head = (f"{'shape':>7}  {'engine':<12} {'ms/batch':>9} {'tok/s':>8} {'x ort':>6} {'x best(ort,torch)':>17}"
            "  max|diff| vs torch")
    print(head)
    print("-" * len(head))
    for shape in dict.fromkeys(r[0] for r in rows):
        group = {r[1]: r for r in rows if r[0] == shape}
        ort = group.get("onnxruntime")
        best = max((group[n][3] for n in ("onnxruntime", "torch") if n in group), default=None)
        for name in names:
            _, _, sec, tps, err = group[name]
            vs_ort = f"{tps / ort[3]:.2f}" if ort else "-"
            vs_best = f"{tps / best:.2f}" if best else "-"
            print(f"{shape:>7}  {name:<12} {sec * 1e3:9.1f} {tps:8.0f} {vs_ort:>6} {vs_best:>17}  {err:.2e}")
    if "mlx" in names:
        print("\ntarget: mlx >= 0.6x the faster of onnxruntime and torch at every shape")
    if "numpy" in names:
        print("core target: numpy >= 0.7x onnxruntime at 8x128")


if __name__ == "__main__":
    main()
