"""Fine-tuning throughput and peak memory, side by side in one run: cbert (MLX, numpy) vs torch.

One training step of a sequence classifier: forward with dropout, cross-entropy, backward, global-norm
clipping, AdamW with a linear schedule; fp32, batch 16 x 128 tokens, the same threads for every engine.
Shapes: MiniLM (6 x 384, FFN 1536, vocab 30522) and BERT-base (12 x 768, FFN 3072, vocab 28996), random
weights written by transformers' save_pretrained (BertForSequenceClassification, two labels). cbert is
timed through ``cbert.train.fit`` itself (its per-step log: tokens / seconds of each optimizer step),
torch as a plain training loop of the same step. Each engine runs in its own process, whose peak RSS
is the memory figure. Prints tokens/s, seconds per step, peak memory and ratios to torch.

    python benchmarks/bench_train.py [--threads 2] [--steps 3] [--shapes minilm,bert-base]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SHAPES = {
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536, max_position_embeddings=512),
    "bert-base": dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512),
}


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per engine (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--shapes", default="minilm,bert-base")
    ap.add_argument("--engines", default="mlx,numpy,torch")
    ap.add_argument("--child", nargs=3, metavar=("ENGINE", "FOLDER", "DUMP"), help=argparse.SUPPRESS)
    return ap.parse_args()


ARGS = _args()
for var in THREADS_ENV:  # BLAS thread pools read these when their library loads
    os.environ[var] = str(ARGS.threads)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
WARMUP = 1  # the first step compiles (MLX, the numpy plan) and allocates


def write_checkpoint(folder: Path, config: dict) -> None:
    """Random weights by transformers, a vocabulary of one-piece words, and a seq-cls file of
    ``(WARMUP + steps) * batch`` texts of exactly ``seq`` tokens."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**config, num_labels=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder, safe_serialization=True)
    words = [f"w{i}" for i in range(config["vocab_size"] - 5)]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [{"text": " ".join(rng.choice(words, ARGS.seq - 2)), "label": "ab"[i % 2]}
            for i in range((WARMUP + ARGS.steps) * ARGS.batch)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_cbert(engine: str, folder: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import cbert.train

    records: list[dict] = []
    total = WARMUP + ARGS.steps

    def log(rec: dict) -> None:
        records.append(rec)
        if rec.get("step") == total and "tokens_per_s" in rec:  # the peak of training, before fit saves the run
            rec["peak_rss_mb"] = peak_rss_mb()

    with tempfile.TemporaryDirectory(prefix="cbert-bench-train-") as out:
        cbert.train.fit("seq-cls", folder, folder / "train.jsonl", Path(out) / "run", batch_size=ARGS.batch,
                        lr=5e-5, warmup_ratio=0.1, weight_decay=0.01, max_steps=total, backend=engine, seed=0, log=log)
    steps = [r for r in records if "tokens_per_s" in r][WARMUP:]
    tokens = steps[0]["tokens"]
    assert tokens == ARGS.batch * ARGS.seq, f"a batch holds {tokens} tokens, not {ARGS.batch} x {ARGS.seq}"
    rate = statistics.median(r["tokens_per_s"] for r in steps)
    return {"tokens_per_s": rate, "seconds": tokens / rate, "losses": [r["loss"] for r in steps],
            "peak_rss_mb": steps[-1]["peak_rss_mb"]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_torch(folder: Path) -> dict:
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(ARGS.threads)
    model = transformers.BertForSequenceClassification.from_pretrained(folder).train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=5e-5)
    total = WARMUP + ARGS.steps
    sched = transformers.get_linear_schedule_with_warmup(opt, max(1, int(0.1 * total)), total)
    rng = np.random.default_rng(0)
    times, losses = [], []
    for step in range(total):
        ids = torch.from_numpy(rng.integers(5, model.config.vocab_size, (ARGS.batch, ARGS.seq)))
        labels = torch.from_numpy(rng.integers(0, 2, ARGS.batch))
        start = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
    seconds = statistics.median(times)
    return {"tokens_per_s": ARGS.batch * ARGS.seq / seconds, "seconds": seconds, "losses": losses,
            "peak_rss_mb": peak_rss_mb()}


def child(engine: str, folder: str, dump: str) -> None:
    result = run_torch(Path(folder)) if engine == "torch" else run_cbert(engine, Path(folder))
    if engine == "mlx":
        import mlx.core as mx

        result["mlx_peak_mb"] = mx.get_peak_memory() / 2 ** 20
    Path(dump).write_text(json.dumps(result))


def main() -> None:
    engines = ARGS.engines.split(",")
    rows = []
    for shape in ARGS.shapes.split(","):
        with tempfile.TemporaryDirectory(prefix="cbert-bench-train-") as tmp:
            folder = Path(tmp) / "model"
            folder.mkdir()
            write_checkpoint(folder, SHAPES[shape])
            for engine in engines:
                dump = Path(tmp) / f"{engine}.json"
                print(f"# {shape}: {engine} ...", file=sys.stderr, flush=True)
                subprocess.run([sys.executable, __file__, "--child", engine, str(folder), str(dump), "--threads",
                                str(ARGS.threads), "--steps", str(ARGS.steps), "--batch", str(ARGS.batch), "--seq",
                                str(ARGS.seq)], check=True, stdout=subprocess.DEVNULL)
                rows.append((shape, engine, json.loads(dump.read_text())))
    print(f"\nfine-tuning step (forward with dropout, backward, clipping, AdamW), fp32, batch {ARGS.batch} x "
          f"{ARGS.seq} tokens, {ARGS.threads} threads, each engine in its own process; median of {ARGS.steps} "
          f"steps after {WARMUP} warm-up")
    head = f"{'shape':<10} {'engine':<7} {'s/step':>7} {'tok/s':>7} {'x torch':>8} {'peak RSS MB':>12} {'x torch':>8}"
    print(head)
    print("-" * len(head))
    for shape in dict.fromkeys(r[0] for r in rows):
        group = {e: r for s, e, r in rows if s == shape}
        ref = group.get("torch")
        for engine, r in group.items():
            speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}" if ref else "-"
            mem = f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}" if ref else "-"
            extra = f"  (MLX allocator peak {r['mlx_peak_mb']:.0f} MB)" if "mlx_peak_mb" in r else ""
            print(f"{shape:<10} {engine:<7} {r['seconds']:7.2f} {r['tokens_per_s']:7.0f} {speed:>8} "
                  f"{r['peak_rss_mb']:12.0f} {mem:>8}{extra}")
    print("\ngoal (issue 13): mlx >= 1.0x torch tokens/s on the CPU")


if __name__ == "__main__":
    if ARGS.child:
        child(*ARGS.child)
    else:
        main()
