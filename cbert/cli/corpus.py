"""The embed-corpus subcommand: a folder of notes in, a folder of Parquet vectors out, on Ray or here."""

from __future__ import annotations

import argparse

from ..batching import MAX_BATCH_TOKENS
from ..tasks.embed import EmbeddingDefaults
from .common import DEFAULT_MODEL_HELP, add_model_args, add_window_args, default_model_path


def cmd_embed_corpus(args) -> int:
    from ..corpus import embed_corpus

    if args.model is None:
        args.model = default_model_path()
    # The defaults model.embed takes from this checkpoint, so the workers embed as `cbert embed` does.
    pooling, normalize = EmbeddingDefaults.of_folder(args.model).resolve(args.pooling, args.normalize)
    s = embed_corpus(args.input, args.output, args.model, text_column=args.text_column, id_column=args.id_column,
                     pooling=pooling, normalize=normalize, backend=args.backend, dtype=args.dtype,
                     batch_size=args.batch_size, stride=args.stride, window_aggregation=args.window_aggregation,
                     truncation=args.truncate, ray=args.ray, workers=args.workers, part_rows=args.part_rows,
                     overwrite=args.overwrite, max_batch_tokens=args.max_batch_tokens,
                     format=args.format)
    skipped = f", {s['skipped']:,} already there" if s["skipped"] else ""
    print(f"embedded {s['rows']:,} rows{skipped}: {s['tokens']:,} tokens in {s['windows']:,} windows, "
          f"{s['tokens_per_s']:,.0f} tokens/s, {s['rows_per_s']:,.1f} rows/s on {s['ran_on']} "
          f"({s['seconds']:,.1f} s in all; pooling={pooling}, normalize={normalize}) -> {s['output']}")
    return 0


def add_corpus_parser(sub) -> None:
    c = sub.add_parser("embed-corpus", help="embed a corpus (Parquet, JSONL, CSV) into Parquet, on Ray or here",
                       description=(
        "Embed every row of IN (a Parquet, JSONL or CSV file, or a folder of them) into Parquet part files in the "
        "folder OUT: the id, the vector (fixed-size list of float32), n_tokens and n_windows. A rerun of the same "
        "job resumes where a killed run stopped, with no id missing or repeated. Long notes are windowed as "
        f"`cbert embed` windows them. Without --model the model is {DEFAULT_MODEL_HELP}"))
    c.add_argument("input", metavar="IN", help="a .parquet, .jsonl (.ndjson) or .csv file, or a folder of them")
    c.add_argument("output", metavar="OUT", help="the output folder (created; a previous run of this job resumes)")
    add_model_args(c, required=False)
    c.add_argument("--pooling", choices=["cls", "mean", "max"], default=None,
                   help="default: what a sentence-transformers folder declares, else mean")
    c.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalize each vector (default: what a sentence-transformers folder declares, else no)")
    c.add_argument("--text-column", default="text", help="the column (JSON field) holding each note")
    c.add_argument("--id-column", default="id", help="the column holding each note's unique id (integer or string)")
    c.add_argument("--ray", default="auto", metavar="auto|local|none|ADDRESS", help=(
        "auto (default): Ray when installed, on the cluster at RAY_ADDRESS or a local runtime started here, else "
        "this process; local: a local Ray runtime; none: this process only; ADDRESS: that Ray cluster "
        "(its nodes need cbert and the model folder; only this process reads IN and writes OUT)"))
    c.add_argument("--workers", type=int, default=None,
                   help="Ray actors embedding in parallel, each loading the model once (default: one per CPU)")
    c.add_argument("--batch-size", type=int, default=32, help="most windows per forward (default 32)")
    c.add_argument("--max-batch-tokens", type=int, default=MAX_BATCH_TOKENS, help=(
        f"token budget of one forward: rows x padded length; windows are packed as cbert serve packs them "
        f"(default {MAX_BATCH_TOKENS})"))
    c.add_argument("--part-rows", type=int, default=1000,
                   help="rows per output part file: the most work a killed run can lose")
    add_window_args(c, "note")
    c.add_argument("--format", choices=["parquet", "lance"], default="parquet", help=(
        "parquet (default): OUT is a folder of Parquet parts; lance: OUT is a LanceDB table folder NAME.lance "
        "(lancedb.connect(its parent).open_table(NAME)), built from the same resumable parts when all are done"))
    c.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it holds a different embed-corpus job (or is a file)")
    c.set_defaults(func=cmd_embed_corpus)
