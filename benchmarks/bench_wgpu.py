"""cbert-wgpu against a peer WebGPU runtime on the same adapter, BERT-base shape, fp32.

    python benchmarks/bench_wgpu.py [--shapes 1x32,4x64] [--repeats 3] [--peers tinygrad,ort]
                                    [--mesa25 ICD_JSON] [--ort-python VENV_PYTHON]

Weights: a random BertModel (vocab 28996, 12 x 768, FFN 3072) written by transformers
save_pretrained(safe_serialization=True) to a temporary folder; every engine reads that file.

Peers:
  tinygrad  tinygrad's WEBGPU device (Dawn from the dawn-python wheel; WEBGPU_PATH is set to
            its library), the same encoder written in tinygrad tensor ops under TinyJit. The
            embedding gather runs in numpy on the host for it (tinygrad lowers a gather to a
            one-hot product over the vocabulary), which only flatters it.
  ort       onnxruntime-webgpu's WebGpuExecutionProvider on the model exported to ONNX. Its Dawn
            refuses lavapipe from Mesa < 25; the script reports that instead of a number.
            With --ort-python it runs in a subprocess of that interpreter (a venv holding
            onnxruntime-webgpu, which installs as the module `onnxruntime` and would otherwise
            replace the CPU build); that process imports only numpy and onnxruntime.

--mesa25 ICD_JSON points every engine of this run (and the ORT subprocess) at another Vulkan
driver, e.g. a lavapipe from Mesa >= 25 extracted beside the system's: the script re-executes
itself with VK_ICD_FILENAMES=ICD_JSON and the driver library's folder first in LD_LIBRARY_PATH
(where the libdrm it needs lies), so nothing outside this process tree sees it. The json's
library_path must be absolute.

Also reported: the encoder's GFLOP/s as a share of cbert's best GEMM kernel's GFLOP/s, and
dispatches per layer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="cbert-xdg-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# cbert, torch and tinygrad are imported where used: the ORT worker process has only numpy and onnxruntime.

BASE = dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            max_position_embeddings=512)


def write_checkpoint(folder: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**BASE, attn_implementation="eager")).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder, safe_serialization=True)


def encoder_flops(batch: int, seq: int) -> float:
    H, F, L = BASE["hidden_size"], BASE["intermediate_size"], BASE["num_hidden_layers"]
    tokens = batch * seq
    gemm = 2 * tokens * (3 * H * H + H * H + 2 * H * F)
    attn = 2 * 2 * batch * seq * seq * H
    return L * (gemm + attn) + 2 * batch * H * H  # + pooler


def inputs_for(batch: int, seq: int) -> dict:
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(1, BASE["vocab_size"], (batch, seq)),
            "attention_mask": np.ones((batch, seq), np.int64), "token_type_ids": np.zeros((batch, seq), np.int64)}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (and, for JITs, the capture)
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_cbert(folder: str, shapes, repeats: int) -> dict:
    import cbert

    model = cbert.load(folder, backend="wgpu", dtype="float32")
    out = {}
    for batch, seq in shapes:
        x = inputs_for(batch, seq)
        out[(batch, seq)] = timed(lambda x=x: model.forward(**x), repeats)
        s = model.stats()
        out[("stats", batch, seq)] = s
    out["ref"] = {shape: model.forward(**inputs_for(*shape)).last_hidden_state for shape in shapes}
    return out


def bench_gemm(batch: int, seq: int, repeats: int) -> float:
    """GFLOP/s of cbert's GEMM kernel alone: a chain of FFN-shaped products minus the embedding that feeds it."""
    from cbert.backends.wgpu import WgpuBackend
    from cbert.ir import Graph, Op, node

    H, F, chain = BASE["hidden_size"], BASE["intermediate_size"], 4
    rng = np.random.default_rng(0)
    params = {"ln_w": np.ones(H, np.float32), "ln_b": np.zeros(H, np.float32),
              "word": rng.standard_normal((64, H)).astype(np.float32) * 0.1}
    nodes = [node(Op.EMBED, ["ln_w", "ln_b", "word", "input_ids"], "x0", eps=1e-12)]
    for i in range(chain):
        params |= {f"w{i}a": rng.standard_normal((F, H)).astype(np.float32) * 0.03, f"b{i}a": np.zeros(F, np.float32),
                   f"w{i}b": rng.standard_normal((H, F)).astype(np.float32) * 0.03, f"b{i}b": np.zeros(H, np.float32)}
        nodes += [node(Op.LINEAR, [f"x{i}", f"w{i}a", f"b{i}a"], f"h{i}", activation="gelu"),
                  node(Op.LINEAR, [f"h{i}", f"w{i}b", f"b{i}b"], f"x{i + 1}", activation="none")]
    backend = WgpuBackend()
    full = backend.compile(Graph(tuple(nodes), ("input_ids",), {"y": f"x{chain}"}), params)
    embed_only = backend.compile(Graph(tuple(nodes[:1]), ("input_ids",), {"y": "x0"}), params)
    x = {"input_ids": np.zeros((batch, seq), np.int64)}
    t = timed(lambda: full(x), repeats) - timed(lambda: embed_only(x), repeats)
    return chain * 2 * 2 * batch * seq * H * F / t / 1e9


def tinygrad_runner(folder: str):
    """The same encoder in tinygrad tensor ops on its WEBGPU device, jitted per shape."""
    import pydawn

    lib = Path(pydawn.__file__).parent / "lib" / "libwebgpu_dawn_x86_64.so"
    os.environ.setdefault("WEBGPU_PATH", str(lib))
    os.environ.setdefault("DEV", "WEBGPU")
    from safetensors.numpy import load_file
    from tinygrad import Device, Tensor, TinyJit

    raw = {k.removeprefix("bert."): v for k, v in load_file(str(Path(folder) / "model.safetensors")).items()}
    w = {k: Tensor(v).realize() for k, v in raw.items() if not k.startswith("embeddings.") or "LayerNorm" in k}
    heads, eps = BASE["num_attention_heads"], 1e-12
    jits: dict = {}

    def ln(x, p):
        return x.layernorm(eps=eps) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x.linear(w[p + ".weight"].T, w[p + ".bias"])

    def encoder(emb, bias):
        B, S, H = emb.shape
        x = ln(emb, "embeddings.LayerNorm")
        for i in range(BASE["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (lin(x, p + f"attention.self.{n}").reshape(B, S, heads, H // heads).transpose(1, 2)
                       for n in ("query", "key", "value"))
            ctx = q.scaled_dot_product_attention(k, v, attn_mask=bias).transpose(1, 2).reshape(B, S, H)
            x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1 + (h * 0.7071067811865476).erf()) if hasattr(h, "erf") else h.gelu()
            x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
        return x.realize()

    def forward(inputs):
        ids, types = inputs["input_ids"], inputs["token_type_ids"]
        S = ids.shape[1]
        emb = (raw["embeddings.word_embeddings.weight"][ids] + raw["embeddings.position_embeddings.weight"][:S]
               + raw["embeddings.token_type_embeddings.weight"][types]).astype(np.float32)
        bias = np.where(inputs["attention_mask"] != 0, 0, np.finfo(np.float32).min).astype(np.float32)
        if ids.shape not in jits:  # a TinyJit replays one captured shape
            jits[ids.shape] = TinyJit(encoder)
        return jits[ids.shape](Tensor(emb), Tensor(bias[:, None, None, :])).numpy()

    return forward, f"tinygrad {Device.DEFAULT}"


def export_onnx(folder: str) -> str:
    import torch
    import transformers

    path = str(Path(folder) / "model.onnx")
    if not os.path.exists(path):
        bert = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()

        class Encoder(torch.nn.Module):
            """Calls BertModel by keyword: its positional signature varies across transformers versions."""

            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        x = {k: torch.from_numpy(v) for k, v in inputs_for(1, 8).items()}
        dyn = {k: {0: "batch", 1: "seq"} for k in x}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Encoder().eval(), tuple(x.values()), path, input_names=list(x),
                              output_names=["last_hidden_state"], dynamic_axes=dyn, dynamo=False)
    return path


def ort_session(path: str):
    import onnxruntime as ort

    if "WebGpuExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(f"onnxruntime {ort.__version__} has no WebGpuExecutionProvider "
                           f"(pip install onnxruntime-webgpu)")
    sess = ort.InferenceSession(path, providers=["WebGpuExecutionProvider"])
    if sess.get_providers()[0] != "WebGpuExecutionProvider":
        raise RuntimeError(f"the session fell back to {sess.get_providers()}")
    return sess, f"onnxruntime-webgpu {ort.__version__}"


def ort_runner(folder: str):
    sess, label = ort_session(export_onnx(folder))
    return (lambda inputs: sess.run(["last_hidden_state"], inputs)[0]), label


def ort_worker(path: str, shapes: str, repeats: int, out: str) -> None:
    """Runs in the ORT venv: times each shape, saves its output for the parent's cosine check."""
    sess, label = ort_session(path)
    times, outputs = {}, {}
    for spec in shapes.split(","):
        x = inputs_for(*(int(v) for v in spec.split("x")))
        times[spec] = timed(lambda x=x: sess.run(["last_hidden_state"], x), repeats)
        outputs[spec] = sess.run(["last_hidden_state"], x)[0]
    np.savez(out + ".npz", **outputs)
    Path(out + ".json").write_text(json.dumps({"label": label, "times": times}))


def ort_subprocess(folder: str, python: str, shapes, repeats: int, ours: dict) -> tuple[str, dict]:
    """onnxruntime-webgpu from another interpreter's environment; returns (label, {shape: seconds})."""
    path, out = export_onnx(folder), str(Path(folder) / "ort-result")
    spec = ",".join(f"{b}x{s}" for b, s in shapes)
    run = subprocess.run([python, __file__, "--ort-worker", path, "--shapes", spec, "--repeats", str(repeats),
                          "--out", out], capture_output=True, text=True)
    if run.returncode != 0:
        lines = [ln for ln in (run.stderr or run.stdout).splitlines() if ln.strip()]
        raise RuntimeError(f"{python} exited {run.returncode}: {' | '.join(lines[-3:])[:600]}")
    result = json.loads(Path(out + ".json").read_text())
    outputs = np.load(out + ".npz")
    label = result["label"]
    for shape in shapes:
        cos = _cosine(outputs[f"{shape[0]}x{shape[1]}"], ours["ref"][shape])
        print(f"{label} {shape[0]}x{shape[1]}: same output as cbert (min cosine {cos:.6f})")
    return label, {shape: result["times"][f"{shape[0]}x{shape[1]}"] for shape in shapes}


def use_driver(icd: str) -> None:
    """Re-executes this script with the Vulkan loader pointed at `icd` (before any driver is loaded)."""
    icd = os.path.abspath(icd)
    lib = json.loads(Path(icd).read_text())["ICD"]["library_path"]
    if not os.path.isabs(lib) or not os.path.exists(lib):
        raise SystemExit(f"--mesa25: {icd} must name its driver by an absolute, existing library_path (has {lib!r})")
    if os.environ.get("VK_ICD_FILENAMES") == icd:
        return
    env = dict(os.environ, VK_ICD_FILENAMES=icd,
               LD_LIBRARY_PATH=os.pathsep.join(filter(None, [os.path.dirname(lib), os.environ.get("LD_LIBRARY_PATH")])))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1x32,4x64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peers", default="tinygrad,ort")
    ap.add_argument("--mesa25", metavar="ICD_JSON", help="run every engine on this Vulkan ICD (see above)")
    ap.add_argument("--ort-python", metavar="PYTHON", help="the interpreter of a venv with onnxruntime-webgpu")
    ap.add_argument("--ort-worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ort_worker:
        return ort_worker(args.ort_worker, args.shapes, args.repeats, args.out)
    if args.mesa25:
        use_driver(args.mesa25)
    from cbert.backends.wgpu import WgpuBackend

    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    warnings.simplefilter("ignore", RuntimeWarning)  # the software-adapter notice; printed below instead
    probe = WgpuBackend.probe()
    print(f"adapter: {probe['adapter']} ({probe['backend']}, {probe['type']}, {probe['driver']})")
    with tempfile.TemporaryDirectory() as folder:
        write_checkpoint(folder)
        ours = bench_cbert(folder, shapes, args.repeats)
        rows = {shape: {"cbert-wgpu": ours[shape]} for shape in shapes}
        for peer in filter(None, args.peers.split(",")):
            try:
                if peer == "ort" and args.ort_python:
                    label, times = ort_subprocess(folder, args.ort_python, shapes, args.repeats, ours)
                    for shape in shapes:
                        rows[shape][label] = times[shape]
                    continue
                run, label = {"tinygrad": tinygrad_runner, "ort": ort_runner}[peer](folder)
                for shape in shapes:
                    x = inputs_for(*shape)
                    cos = _cosine(run(x), ours["ref"][shape])
                    rows[shape][label] = timed(lambda x=x, run=run: run(x), args.repeats)
                    print(f"{label} {shape[0]}x{shape[1]}: same output as cbert (min cosine {cos:.6f})")
            except Exception as e:  # a peer that cannot run here is reported, not faked
                print(f"peer {peer}: cannot run here: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        gemm = bench_gemm(*shapes[-1], args.repeats)
    print(f"\n{'shape':>8} {'engine':>28} {'seconds':>9} {'GFLOP/s':>8} {'vs cbert':>9}")
    for shape, engines in rows.items():
        flops = encoder_flops(*shape)
        for label, t in engines.items():
            print(f"{shape[0]:>3}x{shape[1]:<4} {label:>28} {t:9.3f} {flops / t / 1e9:8.2f} "
                  f"{t / engines['cbert-wgpu']:8.2f}x")
    big = shapes[-1]
    enc = encoder_flops(*big) / ours[big] / 1e9
    s = ours[("stats", *big)]
    layers = BASE["num_hidden_layers"]
    print(f"\nGEMM kernel alone ({big[0] * big[1]} x 768 x 3072 chain): {gemm:.2f} GFLOP/s; "
          f"encoder at {big[0]}x{big[1]}: {enc:.2f} GFLOP/s = {100 * enc / gemm:.0f}% of it")
    print(f"per forward: {s['submits']} submit, {s['dispatches']} dispatches "
          f"({(s['dispatches'] - 4) / layers:.0f} per layer + embed, mask, pooler), "
          f"{s['buffers_created']} buffers and {s['pipelines_created']} pipelines created, "
          f"{s['bytes_read_back']} bytes read back")


def _cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1, a.shape[-1]), np.asarray(b, np.float64).reshape(-1, b.shape[-1])
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


if __name__ == "__main__":
    main()
