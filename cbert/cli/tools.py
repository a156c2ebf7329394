"""The ``cbert`` tool subcommands: prepare, download, parity, bench, tune, attention."""

from __future__ import annotations

import sys

from ..errors import UsageError
from .common import default_model_path, load_model

# -- tools: prepare, download, parity, bench, tune, attention -----------------------------------


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str, what: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise UsageError(f"{what} {value!r}: expected comma-separated integers, e.g. 1,4,8") from None


def _report_prepared(p) -> None:
    print(f"wrote {p.out}/model.safetensors ({p.tensors} tensors from {p.source}"
          + (f", {p.renamed} TF-ported names renamed" if p.renamed else "") + "), config.json, tokenizer.json"
          + "".join(f", {name}" for name in p.carried))
    print(f"architecture: {p.architecture}, {p.parameters:,} parameters")
    print(f"tokenizer: {p.casing}")


def cmd_prepare(args) -> int:
    from ..tools.prepare import prepare

    _report_prepared(prepare(args.src, args.out, overwrite=args.overwrite))
    return 0


def cmd_download(args) -> int:
    from ..tools.hub import download

    _report_prepared(download(args.repo, args.out, revision=args.revision, overwrite=args.overwrite))
    return 0


def cmd_parity(args) -> int:
    from ..tools.bench import progress_bar
    from ..tools.parity import format_table, run_parity

    notes: list[str] = []
    rows = run_parity(args.model, _csv(args.backends) if args.backends else None, tuple(_csv(args.dtypes)),
                      args.reference, args.max_error, args.min_cosine, progress=progress_bar, notes=notes)
    print(format_table(rows))
    for note in notes:
        print(f"note: {note}")
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} comparisons within tolerance"
          + (f"; outside: {', '.join(sorted({r.candidate + ' vs ' + r.reference for r in bad}))}" if bad else ""))
    return 1 if bad else 0


def cmd_bench(args) -> int:
    from ..tools import bench

    if args.cold:
        report = bench.cold_start(args.model, _csv(args.backends), args.cold_runs)
        print(bench.format_cold(report))
        if args.json:
            bench.write_json(report, args.json)
            print(f"wrote {args.json}", file=sys.stderr)
        return 1 if any(isinstance(t, str) for t in report["cold_seconds"].values()) else 0
    if args.plot:  # fail before timing anything, not after
        from ..extras import need

        need("matplotlib", "--plot")
    report = bench.run_bench(args.model, _csv(args.backends), _csv(args.dtypes), _ints(args.batches, "--batches"),
                             _ints(args.seq, "--seq"), _csv(args.compare), args.seconds, args.runs, args.warmup)
    print(bench.format_table(report))
    if args.json:
        bench.write_json(report, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        bench.plot(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def cmd_tune(args) -> int:
    import json

    from ..backends import backend_class

    backend_class("mlx")  # the BLAS goes into the process before mlx.core (see backends/mlx/_blas.py)
    from ..backends.mlx import tuning
    from ..backends.mlx.plan import ROW_RANGES, gemm_shapes
    from ..checkpoint import load_checkpoint
    from ..families import build_graph

    ckpt = load_checkpoint(args.model or default_model_path())
    graph = build_graph(ckpt.config, ckpt.heads)
    shapes = gemm_shapes(graph, graph.param_shapes)
    print(f"{ckpt.path}: GEMMs (K->N x count) " + ", ".join(f"{k}->{n} x{c}" for (k, n), c in sorted(shapes.items())))
    plan, path = tuning.tune_gemms(shapes, progress=lambda line: print(line, file=sys.stderr))
    record = json.loads(path.read_text(encoding="utf-8"))
    for m in record["measured"]:
        verdict = "split" if m["split_taken"] else "one BLAS call"
        print(f"rows {m['rows']:>7}: whole {m['whole_ms']:9.2f} ms, best split {m['split_ms']:9.2f} ms -> {verdict}")
    print(f"rows > {ROW_RANGES[-1][1]}: one BLAS call (not timed)")
    print(f"plan: {plan.describe()}")
    print(f"wrote {path}")
    return 0


def cmd_attention(args) -> int:
    from ..extras import need
    from ..tools.attention import attention_matrix, save_heatmap

    need("matplotlib", "cbert attention")
    model = load_model(args)
    tokens, matrix, title = attention_matrix(model, args.text, args.layer, args.head)
    save_heatmap(tokens, matrix, f"{title}  ({model.backend.name} {model.backend.dtype})", args.out)
    print(f"wrote {args.out}: {title}, {len(tokens)} tokens", file=sys.stderr)
    return 0


def add_tool_parsers(sub) -> None:
    p = sub.add_parser("prepare", help="turn a Hugging Face snapshot folder into what cbert runs", description=(
        "SRC: a snapshot folder (model.safetensors, pytorch_model.bin or shards with *.index.json; config.json or "
        "bert_config.json; tokenizer.json or vocab.txt). OUT gets model.safetensors, config.json and a "
        "tokenizer.json with the casing the model was trained with, and a sentence-transformers folder's "
        "modules.json and module configs unchanged; it is built beside OUT and renamed into place once it loads. "
        "Reading .bin needs a CPU torch: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"))
    p.add_argument("src", metavar="SRC")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing, non-empty OUT (a checkpoint folder) once the new one is complete")
    p.set_defaults(func=cmd_prepare)

    from ..config import PRESETS

    d = sub.add_parser("download", help="download a Hugging Face repository (or a preset) and prepare it",
                       description=f"REPO: owner/name or a preset ({', '.join(PRESETS)}). Needs cbert[hub]. Every "
                       "file is checked against the hub's sha256 (LFS) or git blob id before it is prepared.")
    d.add_argument("repo", metavar="REPO")
    d.add_argument("out", metavar="OUT")
    d.add_argument("--overwrite", action="store_true",
                   help="replace an existing, non-empty OUT (a checkpoint folder) once the new one is complete")
    d.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    d.set_defaults(func=cmd_download)

    pa = sub.add_parser("parity", help="every backend and dtype against the numpy reference (and transformers)",
                        description="Exit status 0 when every comparison is within tolerance, 1 when not.")
    pa.add_argument("model", metavar="MODEL")
    pa.add_argument("--backends", default=None, help="comma-separated (default: every installed backend)")
    pa.add_argument("--dtypes", default="float32,float16")
    pa.add_argument("--reference", default="auto", choices=["auto", "transformers", "none"],
                    help="also check numpy against transformers (auto: when it is installed)")
    pa.add_argument("--max-error", type=float, default=1e-4,
                    help="float32 limit on max|a - b| / max(1, max|ref|)")
    pa.add_argument("--min-cosine", type=float, default=0.999, help="float16/bfloat16 limit on the smallest cosine")
    pa.set_defaults(func=cmd_parity)

    b = sub.add_parser("bench", help="encoder throughput across batch sizes and sequence lengths")
    b.add_argument("model", metavar="MODEL")
    b.add_argument("--backends", default="numpy")
    b.add_argument("--dtypes", default="float32")
    b.add_argument("--batches", default="1,4,8,16,32")
    b.add_argument("--seq", default="32,128")
    b.add_argument("--compare", default="", help="peers timed in the same run: onnxruntime,torch")
    b.add_argument("--runs", type=int, default=5, help="at least this many timed forwards per point (median)")
    b.add_argument("--seconds", type=float, default=2.0, help="keep timing up to this long per point")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--json", metavar="FILE")
    b.add_argument("--plot", metavar="FILE.png", help="tokens/s against batch size (needs cbert[plot])")
    b.add_argument("--cold", action="store_true",
                   help="instead: the wall time of a one-shot `cbert embed` per backend, each run a fresh process")
    b.add_argument("--cold-runs", type=int, default=2, help="fresh processes per backend with --cold")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("tune", help="measure the MLX CPU GEMM plan for a model on this machine (once; cached)",
                       description="Times one BLAS call against split GEMMs for each weight shape of the model and "
                                   "row range, and writes the plan where the MLX backend reads it when it compiles "
                                   "the model (see `cbert devices`). Without a plan every GEMM is one BLAS call.")
    t.add_argument("--model", default=None, metavar="DIR", help="checkpoint folder (default: the default model)")
    t.set_defaults(func=cmd_tune)

    a = sub.add_parser("attention", help="heatmap of one layer's attention over the tokens of a text")
    a.add_argument("model", metavar="MODEL")
    a.add_argument("text", metavar="TEXT")
    a.add_argument("--layer", type=int, default=-1, help="0-based; -1: the last")
    a.add_argument("--head", default="mean", help="a head number or 'mean'")
    a.add_argument("--out", required=True, metavar="FILE.png")
    a.add_argument("--backend", default="numpy", choices=["auto", "numpy", "mlx", "wgpu"])
    a.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    a.set_defaults(func=cmd_attention)


