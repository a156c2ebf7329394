"""Peak training memory and step time: LoRA (cbert train --lora) beside full fine-tuning, BERT-base shapes.

A random-weight BERT-base (12 layers, hidden 768, FFN 3072, vocab 30522: Bio_ClinicalBERT's shapes
but for the vocabulary) is fine-tuned for sequence classification on generated notes of ~128 tokens,
``--steps`` optimizer steps at ``--batch``, once per (backend, mode) in a fresh process each:
``full`` trains every weight (gradients and AdamW moments for 110M parameters), ``lora`` rank-8
adapters on query and value plus the classifier (the base frozen: no base gradient, no base moments).
Each process reports its peak resident memory (ru_maxrss, the whole fit: load, steps, the saves)
and, on MLX, MLX's own peak allocation (mx.get_peak_memory); and the mean time of the steps after
the first. The ratio LoRA / full is the number to read.

    python benchmarks/bench_lora.py [--backends numpy,mlx] [--steps 4] [--batch 8] [--rank 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("patient denies chest pain fever cough history of heart failure copd admitted discharged on lasix "
         "metoprolol daily bid po iv mg with no acute distress stable vitals").split()


def write_base(folder: Path, layers: int) -> None:
    """A random BERT-base checkpoint (transformers' init) with a WordPiece vocabulary of 30522 entries."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_hidden_layers=layers)  # BERT-base's defaults
    transformers.BertModel(cfg).save_pretrained(folder, safe_serialization=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab += [f"[unused{i}]" for i in range(cfg.vocab_size - len(vocab))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))


def write_data(path: Path, rows: int) -> None:
    import random

    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(rows):
            text = " ".join(rng.choice(WORDS) for _ in range(120))  # ~122 tokens with [CLS] and [SEP]
            f.write(json.dumps({"text": text, "label": ["stable", "worse"][i % 2]}) + "\n")


def child(args) -> None:
    """One fit in this process; prints its JSON record."""
    sys.path.insert(0, str(REPO))
    from cbert.adapt.lora import LoraSettings
    from cbert.train import fit

    times: list[float] = []
    last = [time.perf_counter()]

    def log(rec: dict) -> None:
        if "loss" in rec and "eval" not in rec:
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

    lora = LoraSettings(args.rank, 2.0 * args.rank, ("query", "value")) if args.mode == "lora" else None
    last[0] = time.perf_counter()
    fit("seq-cls", args.base, args.data, args.out, epochs=1, batch_size=args.batch, max_steps=args.steps,
        backend=args.backend, lr=1e-4, overwrite=True, lora=lora, log=log)
    rec = {"backend": args.backend, "mode": args.mode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
           / 1024, "s_per_step": sum(times[1:]) / max(len(times) - 1, 1)}
    if args.backend == "mlx":
        import mlx.core as mx

        rec["mlx_peak_mb"] = mx.get_peak_memory() / 2**20
    print(json.dumps(rec))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="numpy,mlx")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--mode", "--backend", "--base", "--data", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        tmp = Path(tmp)
        write_base(tmp / "base", args.layers)
        write_data(tmp / "train.jsonl", args.steps * args.batch)
        results = []
        for backend in args.backends.split(","):
            for mode in ("full", "lora"):
                cmd = [sys.executable, __file__, "--child", "--mode", mode, "--backend", backend,
                       "--base", str(tmp / "base"), "--data", str(tmp / "train.jsonl"),
                       "--out", str(tmp / f"run-{backend}-{mode}"),
                       "--steps", str(args.steps), "--batch", str(args.batch), "--rank", str(args.rank)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                results.append(json.loads(out.strip().splitlines()[-1]))
                r = results[-1]
                extra = f", MLX peak {r['mlx_peak_mb']:,.0f} MB" if "mlx_peak_mb" in r else ""
                print(f"{backend:6} {mode:5} peak RSS {r['peak_rss_mb']:,.0f} MB{extra}, {r['s_per_step']:.2f} s/step",
                      flush=True)
        for backend in args.backends.split(","):
            full, lora = (next(r for r in results if r["backend"] == backend and r["mode"] == m)
                          for m in ("full", "lora"))
            line = f"{backend}: LoRA / full peak RSS {lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}"
            if "mlx_peak_mb" in full:
                line += f", MLX peak {lora['mlx_peak_mb'] / full['mlx_peak_mb']:.2f}"
            print(line + f", step time {lora['s_per_step'] / full['s_per_step']:.2f}")
        if args.json:
            meta = {"date": str(date.today()), "machine": platform.machine(), "python": platform.python_version(),
                    "layers": args.layers, "batch": args.batch, "steps": args.steps, "rank": args.rank}
            Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
