"""``cbert train``: fine-tune a checkpoint into a Hugging Face folder (cbert.train.fit)."""

from __future__ import annotations

import json

from ..train.save import TASKS

HELP = {
    "mlm": "domain adaptation on raw notes, one document per line",
    "seq-cls": 'JSONL {"text", ["text_pair",] "label"} or CSV with those columns',
    "token-cls": 'JSONL {"tokens", "tags"} (BIO) or {"text", "spans": [[start, end, label], ...]}',
    "qa": "SQuAD v1.1/v2.0 JSON",
}


def add_train_parser(sub) -> None:
    sp = sub.add_parser(
        "train", help="fine-tune a checkpoint (mlm, seq-cls, token-cls, qa) into a Hugging Face folder",
        description="Fine-tune --model on --train and save OUT as a Hugging Face folder (config.json, "
                    "model.safetensors, the tokenizer) that transformers and cbert both load. OUT also holds "
                    "log.jsonl (every step and evaluation) and checkpoint-last/ (for --resume). Tasks: "
                    + "; ".join(f"{t}: {h}" for t, h in HELP.items()) + ".")
    sp.add_argument("task", choices=TASKS)
    sp.add_argument("--model", required=True, metavar="DIR", help="the checkpoint folder to start from")
    sp.add_argument("--train", required=True, metavar="FILE", help="the training data")
    sp.add_argument("--eval", default=None, metavar="FILE",
                    help="data evaluated after each epoch; the best model by its main metric is kept")
    sp.add_argument("--out", required=True, metavar="DIR", help="the run's folder (the model is saved at its top)")
    sp.add_argument("--epochs", type=int, default=3)
    sp.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    sp.add_argument("--warmup-ratio", type=float, default=0.0, help="fraction of the steps warming up linearly")
    sp.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled decay (none on biases and "
                    "LayerNorm)")
    sp.add_argument("--max-grad-norm", type=float, default=1.0, help="global-norm clipping; 0: none")
    sp.add_argument("--schedule", choices=["linear", "cosine"], default="linear",
                    help="decay after the warm-up (default linear)")
    sp.add_argument("--precision", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="compute precision (float32 master weights; float16 scales the loss dynamically)")
    sp.add_argument("--seed", type=int, default=42, help="the same seed gives the same weights on one backend")
    sp.add_argument("--backend", choices=["auto", "mlx", "numpy"], default="auto",
                    help="auto: MLX where installed, else numpy")
    sp.add_argument("--resume", action="store_true", help="continue the run in OUT from its checkpoint-last/")
    sp.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    sp.add_argument("--whole-word-mask", action="store_true", help="mlm: mask whole words, not word pieces")
    sp.add_argument("--aggregation", choices=["mean", "max", "vote"], default="mean",
                    help="seq-cls: how an evaluated note's windows combine")
    sp.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    sp.add_argument("--early-stopping", type=int, default=None, metavar="N",
                    help="stop after N evaluations without improvement (needs --eval)")
    sp.set_defaults(func=run_train)


def run_train(args) -> int:
    from ..train import fit

    summary = fit(args.task, args.model, args.train, args.out, eval_file=args.eval, epochs=args.epochs, lr=args.lr,
                  batch_size=args.batch_size, grad_accum=args.grad_accum, warmup_ratio=args.warmup_ratio,
                  weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, schedule=args.schedule,
                  precision=args.precision, seed=args.seed, backend=args.backend, resume=args.resume,
                  overwrite=args.overwrite, early_stopping=args.early_stopping, max_steps=args.max_steps,
                  whole_word_mask=args.whole_word_mask, aggregation=args.aggregation)
    print(json.dumps(summary))
    return 0
