"""``cbert merge-adapter`` (a PEFT LoRA adapter folded into a plain checkpoint) and ``cbert probe``
(a linear probe on frozen embeddings)."""

from __future__ import annotations

import sys


def add_adapt_parsers(sub) -> None:
    sp = sub.add_parser(
        "merge-adapter", help="merge a PEFT LoRA adapter into its base: a plain checkpoint folder",
        description="Write OUT: BASE with the LoRA adapter ADAPTER (a PEFT folder: adapter_config.json, "
                    "adapter_model.safetensors) merged into its weights (W + alpha/r * B A), and a head the "
                    "adapter trained, as a Hugging Face folder that transformers and cbert load without PEFT.")
    sp.add_argument("base", metavar="BASE", help="the base checkpoint folder the adapter was trained on")
    sp.add_argument("adapter", metavar="ADAPTER", help="the PEFT adapter folder")
    sp.add_argument("out", metavar="OUT", help="the new checkpoint folder")
    sp.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    sp.set_defaults(func=run_merge_adapter)
    add_probe_parser(sub)


def run_merge_adapter(args) -> int:
    from ..adapt.lora import write_merged

    ckpt = write_merged(args.base, args.adapter, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {ckpt.architecture}, {ckpt.num_parameters:,} parameters, adapter merged",
          file=sys.stderr)
    return 0


# -- cbert train --lora (cbert.adapt.lora) ---------------------------------------------------------

def add_lora_options(sp) -> None:
    """cbert train's LoRA options (PEFT's r, lora_alpha, target_modules)."""
    g = sp.add_argument_group(
        "LoRA", "train rank-R adapters with the base frozen; OUT is a PEFT adapter folder "
                "(peft.PeftModel.from_pretrained(base, OUT); cbert.load(BASE, adapter=OUT); cbert merge-adapter)")
    g.add_argument("--lora", type=int, default=None, metavar="R", help="the adapters' rank r")
    g.add_argument("--lora-alpha", type=float, default=None, metavar="A",
                   help="scale alpha/r of the adapters' term (PEFT's default 8)")
    g.add_argument("--lora-targets", default=None, metavar="NAMES",
                   help="comma-separated linear names to adapt (default: the attention's query and value)")
    g.add_argument("--lora-modules-to-save", default=None, metavar="NAMES",
                   help="comma-separated modules of the base to train whole beside the new head (PEFT's "
                        "modules_to_save), e.g. pooler")


def lora_settings(args):
    """fit's ``lora=`` from the command line (None without --lora)."""
    from ..adapt.lora import DEFAULT_ALPHA, LoraSettings
    from ..errors import UsageError

    extra = [f for f, v in (("--lora-alpha", args.lora_alpha), ("--lora-targets", args.lora_targets),
                            ("--lora-modules-to-save", args.lora_modules_to_save)) if v is not None]
    if args.lora is None:
        if extra:
            raise UsageError(f"{extra[0]} needs --lora R")
        return None
    if args.task == "distill":
        raise UsageError("--lora is an option of the fine-tuning tasks, not of cbert train distill")
    if args.lora < 1:  # the flag's own name, not the library's lora= argument
        raise UsageError(f"--lora {args.lora}: expected a positive rank R")
    if args.lora_alpha is not None and not args.lora_alpha > 0:  # also NaN
        raise UsageError(f"--lora-alpha {args.lora_alpha}: expected a positive number")
    targets = None
    if args.lora_targets is not None:
        targets = tuple(t.strip() for t in args.lora_targets.split(","))
        if not all(targets):
            raise UsageError(f"--lora-targets {args.lora_targets!r}: expected comma-separated names (query,value)")
    save = ()
    if args.lora_modules_to_save is not None:
        save = tuple(t.strip() for t in args.lora_modules_to_save.split(","))
        if not all(save):
            raise UsageError(f"--lora-modules-to-save {args.lora_modules_to_save!r}: expected comma-separated "
                             "names (pooler)")
    alpha = DEFAULT_ALPHA if args.lora_alpha is None else args.lora_alpha
    return LoraSettings.of(LoraSettings(args.lora, alpha, targets, save))


# -- cbert probe (cbert.adapt.probe) ----------------------------------------------------------------

def add_probe_parser(sub) -> None:
    from ..adapt.probe import POOLINGS
    from .common import add_model_args

    sp = sub.add_parser(
        "probe", help="a linear probe on frozen embeddings: accuracy, macro-F1, AUROC with 95%% CIs and baselines",
        description="Embed --train and --eval (JSONL or CSV rows of text, [text_pair,] label) with the frozen "
                    "model (cached on disk by model, pooling and file), fit an L2 logistic regression whose C is "
                    "chosen by K-fold cross-validation, and report its accuracy, macro-F1 and (two classes) AUROC "
                    "on --eval, each with a bootstrap 95%% interval, beside a majority-class and a bag-of-words "
                    "baseline. scikit-learn fits it when installed (pip install \"cbert[probe]\"), else numpy.")
    add_model_args(sp, required=True)
    sp.add_argument("--train", required=True, metavar="FILE", help="labeled rows the probe is fitted on")
    sp.add_argument("--eval", required=True, metavar="FILE", help="labeled rows it is scored on")
    sp.add_argument("--pooling", choices=POOLINGS, default=None,
                    help="the embedding (default: the model's, as cbert embed); pooler: the pooled [CLS] output")
    sp.add_argument("--folds", type=int, default=5, metavar="K", help="cross-validation folds choosing C (default 5)")
    sp.add_argument("--seed", type=int, default=0, help="folds and bootstrap resamples")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--save", default=None, metavar="OUT",
                    help="write the probe as a sequence classifier over the encoder (a Hugging Face folder)")
    sp.add_argument("--overwrite", action="store_true", help="replace the --save folder if it exists")
    sp.set_defaults(func=run_probe_command)


def run_probe_command(args) -> int:
    from pathlib import Path

    from ..adapt.probe import check_savable, run_probe, save_probe
    from ..files import check_target
    from .common import load_model

    model = load_model(args)
    if args.save is not None:  # refused before the work, not after it
        check_target(Path(args.save), args.overwrite, "--save")
        check_savable(model, args.pooling or model.embedding_defaults.pooling)
    report = run_probe(model, args.train, args.eval, pooling=args.pooling, folds=args.folds, seed=args.seed,
                       batch_size=args.batch_size)
    if args.save is not None:
        arch = save_probe(model, report, args.save, args.overwrite)
        print(f"saved the probe as {arch} in {args.save}", file=sys.stderr)
    print(report.text())
    return 0
