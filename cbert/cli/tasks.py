"""The task subcommands: embed, fill-mask, classify, ner, qa."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ..files import check_writable, write_atomic
from .common import (
    DEFAULT_MODEL_HELP,
    add_model_args,
    add_window_args,
    default_model_path,
    load_model,
    read_texts,
)


def cmd_embed(args) -> int:
    if args.model is None:
        args.model = default_model_path()
    texts = read_texts(args.texts)
    if args.out:  # refuse a bad --out before the work, not after
        check_writable(args.out, args.overwrite)
    model = load_model(args)
    # The model's own defaults (its modules.json, read at load), exactly as model.embed takes them.
    pooling, normalize = model.embedding_defaults.resolve(args.pooling, args.normalize)
    vectors = model.embed(texts, pooling=pooling, normalize=normalize, batch_size=args.batch_size,
                          truncation=args.truncate, window_aggregation=args.window_aggregation, stride=args.stride,
                          progress=len(texts) > args.batch_size)
    print(f"{model!r}: {len(texts)} text(s) -> {list(vectors.shape)}, pooling={pooling}, normalize={normalize}",
          file=sys.stderr)
    if args.out:
        write_atomic(args.out, lambda f: np.save(f, vectors), args.overwrite)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        for v in vectors:
            print(json.dumps([round(float(x), 6) for x in v]))
    return 0


def cmd_fill_mask(args) -> int:
    model = load_model(args)
    results = model.fill_mask(args.text, top_k=args.top_k)
    groups = results if results and isinstance(results[0], list) else [results]
    for i, group in enumerate(groups):
        if len(groups) > 1:
            print(f"[MASK] #{i + 1}")
        for r in group:
            print(f"{r['score']:.4f}  {r['token_str']:<15}  {r['sequence']}")
    return 0


def cmd_classify(args) -> int:
    model = load_model(args)
    results = model.classify(read_texts(args.texts), top_k=None if args.all_labels else 1,
                             aggregation=args.aggregation, stride=args.stride)
    for r in results:
        print(json.dumps(r))
    return 0


def cmd_ner(args) -> int:
    model = load_model(args)
    for entities in model.ner(read_texts(args.texts), stride=args.stride):
        print(json.dumps(entities))
    return 0


def cmd_qa(args) -> int:
    model = load_model(args)
    context = read_texts([args.context])
    print(json.dumps(model.qa(args.question, "\n".join(context), top_k=args.top_k, stride=args.stride)))
    return 0



def add_task_parsers(sub) -> None:
    e = sub.add_parser("embed", help="one vector per text", description=(
        "Embed texts: each argument is a text, a UTF-8 file with one text per line, or - for stdin. "
        f"Without --model the model is {DEFAULT_MODEL_HELP}"))
    e.add_argument("texts", nargs="+")
    add_model_args(e, required=False)
    e.add_argument("--pooling", choices=["cls", "mean", "max"], default=None,
                   help="default: what a sentence-transformers folder declares, else mean")
    e.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalize each vector (default: what a sentence-transformers folder declares, else no)")
    e.add_argument("--batch-size", type=int, default=32)
    add_window_args(e, "text")
    e.add_argument("--out", metavar="FILE", help="write the [n, hidden] float32 array to exactly this file (.npy "
                   "format) instead of stdout")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.set_defaults(func=cmd_embed)

    f = sub.add_parser("fill-mask", help="top-k predictions for each [MASK] in a text")
    f.add_argument("text")
    add_model_args(f, required=True)
    f.add_argument("--top-k", type=int, default=5)
    f.set_defaults(func=cmd_fill_mask)

    c = sub.add_parser("classify", help="label each text (one JSON object per line)", description=(
        "Classify texts with a sequence-classification checkpoint; labels come from config.json's id2label. "
        "Each argument is a text, a file of texts (one per line) or -. Long notes are split into windows."))
    c.add_argument("texts", nargs="+")
    add_model_args(c, required=True)
    c.add_argument("--aggregation", choices=["mean", "max", "vote"], default="mean",
                   help="how a long note's window probabilities combine (vote: Huang's readmission score)")
    c.add_argument("--all-labels", action="store_true", help="print every label's score, best first")
    add_window_args(c, "note", truncate=False, aggregation=False)
    c.set_defaults(func=cmd_classify)

    n = sub.add_parser("ner", help="entity spans with character offsets (one JSON list per text)")
    n.add_argument("texts", nargs="+")
    add_model_args(n, required=True)
    add_window_args(n, "note", truncate=False, aggregation=False)
    n.set_defaults(func=cmd_ner)

    q = sub.add_parser("qa", help="the answer span to a question in a context (JSON)")
    add_model_args(q, required=True)
    q.add_argument("--question", required=True)
    q.add_argument("--context", required=True, help="the context text, or a UTF-8 file holding it")
    q.add_argument("--top-k", type=int, default=1)
    add_window_args(q, "note", truncate=False, aggregation=False)
    q.set_defaults(func=cmd_qa)
