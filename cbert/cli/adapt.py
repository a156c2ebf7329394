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


def run_merge_adapter(args) -> int:
    from ..adapt.lora import write_merged

    ckpt = write_merged(args.base, args.adapter, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {ckpt.architecture}, {ckpt.num_parameters:,} parameters, adapter merged",
          file=sys.stderr)
    return 0
