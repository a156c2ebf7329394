"""Fine-tune the offline MiniLM (all-MiniLM-L6-v2) to tell whether a symptom in a note sentence is
present, negated or hypothetical, and compare it with a bag-of-words baseline on the test split.

The data (examples/data/assertion/, written by make_assertion.py) pairs each sentence with the symptom
asked about; a third of the sentences mention a second symptom with another status, which a bag of
words cannot tell apart. ``--quick`` trains on a small slice for a smoke test (what the tests run);
pass a checkpoint folder with ``--model`` to fine-tune another model, e.g. Bio_ClinicalBERT.
``--lora R`` trains rank-R LoRA adapters on the query and value projections (and the classifier whole)
instead of every weight, as PEFT's LoraConfig(r=R, lora_alpha=16, task_type="SEQ_CLS") does
(``--lora-modules-to-save pooler`` trains the pooler whole too); the adapter folder is loaded onto
the base for the test split. The test accuracy is split by sentences with one symptom and those
naming a second one: LoRA's gap to full fine-tuning here is all in the second kind, and PEFT's own
LoRA has it too (README, "LoRA").

    python examples/finetune_assertion.py [--quick] [--limit N] [--epochs 2] [--lr 1e-4] [--backend mlx|numpy]
                                          [--lora 8 [--lora-alpha 16] [--lora-modules-to-save pooler]]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

import cbert
from cbert.adapt.lora import LoraSettings
from cbert.cli import default_model_path

DATA = Path(__file__).parent / "data" / "assertion"


def read(split: str, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]
    return rows[:limit]


def test_right(model, rows: list[dict], batch_size: int = 64) -> list[bool]:
    """Whether the fine-tuned model labels each (sentence, symptom) pair right."""
    names = model.config.id2label
    right = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        enc = model.tokenizer([r["text"] for r in batch], text_pair=[r["text_pair"] for r in batch])
        predicted = model.forward(**enc).logits.argmax(-1)
        right += [names[int(p)] == r["label"] for p, r in zip(predicted, batch)]
    return right


def mentions_another(row: dict, symptoms: set[str]) -> bool:
    """Whether the sentence names a symptom besides the one asked about (the rows a bag of words fails)."""
    text, asked = row["text"].lower(), row["text_pair"].lower()
    return any(s in text and s not in asked for s in symptoms)


def bag_of_words_accuracy(train: list[dict], test: list[dict]) -> float:
    """Multinomial naive Bayes over the words of the sentence and of the symptom (add-one smoothing)."""
    def words(r: dict) -> list[str]:
        return r["text"].lower().replace(".", " ").replace(",", " ").split() + [
            "symptom:" + w for w in r["text_pair"].lower().split()]

    labels = sorted({r["label"] for r in train})
    counts = {c: Counter() for c in labels}
    for r in train:
        counts[r["label"]].update(words(r))
    vocab = set().union(*counts.values())
    prior = Counter(r["label"] for r in train)
    right = 0
    for r in test:
        scores = [np.log(prior[c]) + sum(np.log((counts[c][w] + 1) / (sum(counts[c].values()) + len(vocab)))
                                         for w in words(r) if w in vocab) for c in labels]
        right += labels[int(np.argmax(scores))] == r["label"]
    return right / len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the offline MiniLM)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 320 training rows, one epoch at lr 3e-4, 100 dev and test rows")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N rows only")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default 1e-4, 1e-3 with --lora; 3e-4 and 3e-3 with --quick)")
    parser.add_argument("--lora", type=int, default=None, metavar="R", help="train rank-R LoRA adapters instead")
    parser.add_argument("--lora-alpha", type=float, default=16.0, metavar="A",
                        help="the adapters' scale is A/R (default 16)")
    parser.add_argument("--lora-targets", default="query,value", metavar="NAMES",
                        help="the linears to adapt, as PEFT's target_modules (default query,value)")
    parser.add_argument("--lora-modules-to-save", default="", metavar="NAMES",
                        help="modules of the base trained whole beside the classifier, e.g. pooler")
    parser.add_argument("--backend", default="auto", choices=["auto", "mlx", "numpy"])
    parser.add_argument("--out", default=None, help="keep the fine-tuned model in this new folder (default: a "
                        "temporary one)")
    args = parser.parse_args()
    limit = 320 if args.quick and args.limit is None else args.limit
    epochs = 1 if args.quick else args.epochs
    # LoRA's few parameters start at B = 0 and need a larger step to move as far as full fine-tuning does
    lr = args.lr or {(False, False): 1e-4, (True, False): 3e-4, (False, True): 1e-3, (True, True): 3e-3}[
        (args.quick, args.lora is not None)]
    save = tuple(t for t in args.lora_modules_to_save.split(",") if t)
    lora = None if args.lora is None else LoraSettings(args.lora, args.lora_alpha, tuple(args.lora_targets.split(",")),
                                                       save)
    base = args.model or default_model_path()
    train, dev, test = read("train", limit), read("dev", 100 if args.quick else None), read("test")
    test = test[:100] if args.quick else test

    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.jsonl"
        train_file.write_text("".join(json.dumps(r) + "\n" for r in train))
        dev_file = Path(tmp) / "dev.jsonl"
        dev_file.write_text("".join(json.dumps(r) + "\n" for r in dev))
        out = Path(args.out) if args.out else Path(tmp) / "assertion-minilm"
        start = time.perf_counter()
        summary = cbert.train.fit("seq-cls", base, train_file, out, eval_file=dev_file,
                                  epochs=epochs, lr=lr, batch_size=16, warmup_ratio=0 if args.quick else 0.1,
                                  weight_decay=0.01, seed=0, backend=args.backend, lora=lora)
        seconds = time.perf_counter() - start
        # a LoRA run's OUT is a PEFT adapter folder: merged onto the base as it loads
        model = cbert.load(base, backend="numpy", adapter=out) if lora else cbert.load(out, backend="numpy")
        right = test_right(model, test)
    symptoms = {r["text_pair"].lower() for r in train + dev + test}
    two = [ok for ok, r in zip(right, test) if mentions_another(r, symptoms)]
    one = [ok for ok, r in zip(right, test) if not mentions_another(r, symptoms)]
    what = f"LoRA r={lora.r} alpha={lora.alpha:g} on {args.lora_targets}" if lora else "full fine-tuning"
    what += f" (modules_to_save {','.join(save)})" if lora and save else ""
    print(f"{what}: trained on {len(train)} rows for {epochs} epoch(s) at lr {lr:g}, {summary['steps']} steps, "
          f"{seconds:.0f} s; best dev accuracy {summary['best']['value']:.3f}")
    print(f"test accuracy: {sum(right) / len(test):.3f} ({len(test)} rows; one symptom {sum(one)}/{len(one)}, "
          f"two symptoms {sum(two)}/{len(two)})")
    print(f"bag-of-words baseline: {bag_of_words_accuracy(train, test):.3f}")


if __name__ == "__main__":
    main()
