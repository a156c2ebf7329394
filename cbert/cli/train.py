"""``cbert train``: fine-tune a checkpoint into a Hugging Face folder (cbert.train.fit)."""

from __future__ import annotations

import argparse
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
    sp.add_argument("task", choices=(*TASKS, "distill"), help="the task, or distill (see its options below)")
    sp.add_argument("--model", metavar="DIR", help="the checkpoint folder to start from (every task but distill)")
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
    add_distill_options(sp)
    from .adapt import add_lora_options

    add_lora_options(sp)
    sp.set_defaults(func=run_train)


# -- cbert train distill (cbert.train.distill) -----------------------------------------------------

def add_distill_options(sp) -> None:
    from ..train.distill import DEFAULTS

    g = sp.add_argument_group(
        "distill", "cbert train distill --teacher DIR --train FILE --out DIR: a student trained on the teacher's soft "
        "targets, A*T^2*KL + B*hard + C*(1 - cos) of the last hidden states (DistilBERT's loss and defaults); the "
        "task is the teacher's head (masked-LM: raw text; a sequence or token classifier: its task data)")
    g.add_argument("--teacher", metavar="DIR", help="the teacher checkpoint (runs forward only)")
    g.add_argument("--student", metavar="DIR", help="a student checkpoint with the teacher's vocabulary, at most as "
                   "wide (default: one initialized from every other teacher layer)")
    g.add_argument("--student-layers", metavar="N", type=_layers, help="layers of the initialized student: a number "
                   "(default half the teacher's) or teacher layer indices, comma-separated (0,2,4)")
    g.add_argument("--student-family", choices=["distilbert"], help="initialize a DistilBERT student (a BERT "
                   "teacher); default: the teacher's family")
    # None by default, so that a distill option given to another task is caught (DISTILL_ONLY)
    g.add_argument("--temperature", type=float, help=f"T (default {DEFAULTS['temperature']})")
    g.add_argument("--alpha-ce", type=float, help=f"A, the soft-target KL's weight (default {DEFAULTS['alpha_ce']})")
    g.add_argument("--alpha-mlm", type=float, help="B, the weight of the student's own loss on the data's labels: "
                   f"masked-LM, or a labeled task's (default {DEFAULTS['alpha_mlm']})")
    g.add_argument("--alpha-cos", type=float, help=f"C, the hidden-state cosine loss's weight "
                   f"(default {DEFAULTS['alpha_cos']})")
    g.add_argument("--teacher-backend", choices=["numpy", "mlx", "wgpu", "auto"],
                   help="where the teacher's forwards run (default numpy)")
    g.add_argument("--cache-teacher", action="store_true", help="a classifier teacher: compute its outputs once, "
                   "keep them in OUT/teacher-cache/ for every epoch (and --resume)")


def _layers(text: str):
    """--student-layers: N, or the teacher layer indices I,J,K."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of layers or comma-separated layer "
                                         "indices") from None
    return parts if "," in text else parts[0]


LOSS_OPTIONS = ("temperature", "alpha_ce", "alpha_mlm", "alpha_cos", "teacher_backend")
DISTILL_ONLY = ("teacher", "student", "student_layers", "student_family", *LOSS_OPTIONS, "cache_teacher")


def run_distill(args) -> int:
    from ..errors import UsageError
    from ..train.distill import distill

    if args.teacher is None:
        raise UsageError("cbert train distill: --teacher DIR is required (the model to distill)")
    if args.model is not None:
        raise UsageError("cbert train distill: --model is for the other tasks; give --teacher (and --student)")
    given = {k: getattr(args, k) for k in LOSS_OPTIONS if getattr(args, k) is not None}  # else distill's defaults
    summary = distill(args.teacher, args.train, args.out, student_dir=args.student, student_layers=args.student_layers,
                      student_family=args.student_family, cache_teacher=args.cache_teacher, **given,
                      **trainer_arguments(args))
    print(json.dumps(summary))
    return 0


def trainer_arguments(args) -> dict:
    """The Trainer settings of the command line, by fit's names."""
    return dict(eval_file=args.eval, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                grad_accum=args.grad_accum, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
                max_grad_norm=args.max_grad_norm, schedule=args.schedule, precision=args.precision, seed=args.seed,
                backend=args.backend, resume=args.resume, overwrite=args.overwrite,
                early_stopping=args.early_stopping, max_steps=args.max_steps, whole_word_mask=args.whole_word_mask,
                aggregation=args.aggregation)


def run_train(args) -> int:
    from ..errors import UsageError
    from ..train import fit
    from .adapt import lora_settings

    lora = lora_settings(args)  # (refuses --lora with distill)
    if args.task == "distill":
        return run_distill(args)
    given = [f"--{k.replace('_', '-')}" for k in DISTILL_ONLY if getattr(args, k) not in (None, False)]
    if given:
        raise UsageError(f"{given[0]} is an option of cbert train distill, not of cbert train {args.task}")
    if args.model is None:
        raise UsageError(f"cbert train {args.task}: --model DIR is required (the checkpoint to start from)")

    summary = fit(args.task, args.model, args.train, args.out, **trainer_arguments(args), lora=lora)
    print(json.dumps(summary))
    return 0
