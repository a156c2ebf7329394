"""Probe the offline MiniLM's frozen embeddings on the assertion data (is a symptom present, negated or
hypothetical?) before fine-tuning anything: a logistic regression on its sentence embeddings, against a
majority-class and a bag-of-words baseline, each metric with its bootstrap 95% interval (what
``cbert probe`` prints). ``--quick`` probes a slice (what the tests run); the full figures are in the
README.

    python examples/probe_assertion.py [--quick] [--model DIR] [--pooling mean] [--backend numpy|mlx]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cbert
from cbert.adapt.probe import POOLINGS, run_probe
from cbert.cli import default_model_path

DATA = Path(__file__).parent / "data" / "assertion"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the offline MiniLM)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 150 training rows, 60 test rows, 3 folds")
    parser.add_argument("--pooling", default=None, choices=POOLINGS, help="default: the model's own")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "mlx", "wgpu"])
    args = parser.parse_args()
    model = cbert.load(args.model or default_model_path(), backend=args.backend)
    with tempfile.TemporaryDirectory() as tmp:
        train, test = DATA / "train.jsonl", DATA / "test.jsonl"
        if args.quick:  # slices of both splits; their embeddings cached in the temporary folder only
            for name, n in (("train", 150), ("test", 60)):
                lines = (DATA / f"{name}.jsonl").read_text().splitlines()[:n]
                (Path(tmp) / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
            train, test = Path(tmp) / "train.jsonl", Path(tmp) / "test.jsonl"
        report = run_probe(model, train, test, pooling=args.pooling, folds=3 if args.quick else 5,
                           cache_dir=Path(tmp) / "cache" if args.quick else None, progress=False)
    print(report.text())
    systems = [report.probe, *report.baselines]
    print("test accuracy: " + ", ".join(f"{s.name.removesuffix(' baseline')} {s.metrics['accuracy'][0]:.3f}"
                                        for s in systems))


if __name__ == "__main__":
    main()
