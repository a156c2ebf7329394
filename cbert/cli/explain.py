"""``cbert explain``: why a model predicted what it did, on one self-contained HTML page (and JSON, PNG)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UsageError
from ..files import check_writable, write_atomic
from .common import add_model_args, add_window_args, load_model, read_text_file, text_file


def read_note(arg: str) -> str:
    """TEXT|FILE: a UTF-8 file is one note (all its lines), - is standard input, anything else the text."""
    if arg == "-":
        return sys.stdin.read()
    return arg if text_file(arg) is None else read_text_file(arg)


def cmd_explain(args) -> int:
    from ..explain import METHODS, Options
    from ..explain.page import render_page
    from ..explain.report import build_report, default_methods, report_json

    text = read_note(args.text)
    outputs = [p for p in (args.out, args.json, args.png) if p]
    if len({str(Path(p).absolute()) for p in outputs}) < len(outputs):
        raise UsageError("--out, --json and --png must name different files")
    for path in outputs:  # refuse a bad output before the work, not after
        check_writable(path, args.overwrite)
    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not methods:
            raise UsageError(f"--methods {args.methods!r}: name at least one of {', '.join(METHODS)}")
    options = Options(steps=args.steps, baseline=args.baseline, seed=args.seed, shap_evals=args.shap_evals,
                      lime_samples=args.lime_samples)
    model = load_model(args)
    report = build_report(model, text, args.task, args.target, args.question, methods, options, args.aggregation,
                          args.stride, args.batch_size, args.counterfactuals, args.mlm, args.max_edits, args.sanity,
                          progress=True)
    if methods is None:
        rest = [m for m in METHODS if m not in default_methods(model, report["task"])]
        print(f"methods run: {', '.join(report['methods'])}; also available with --methods: {', '.join(rest)}",
              file=sys.stderr)
    _summary(report)
    write_atomic(args.out, lambda f: f.write(render_page(report).encode("utf-8")), args.overwrite)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        data = json.dumps(report_json(report), indent=1).encode("utf-8")
        write_atomic(args.json, lambda f: f.write(data), args.overwrite)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.png:
        from ..explain.screenshot import screenshot

        png, refused = screenshot(args.out)
        if refused:  # the page is built to need nothing: a request is a bug, not a user's problem
            raise RuntimeError(f"the page tried to fetch {refused[0]} (and {len(refused) - 1} more)")
        write_atomic(args.png, lambda f: f.write(png), args.overwrite)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def _summary(report: dict) -> None:
    """The prediction, each method's top words and the sanity checks, on stdout."""
    target = {k: v for k, v in report["target"].items() if k != "windows"}
    print(f"{report['task']}: {json.dumps(target)}  probability {report['probability']:.4f}")
    for name, m in report["methods"].items():
        top = sorted(m["words"], key=lambda w: -w["score"])[:3]
        line = ", ".join(f"{w['word']} {w['score']:+.3g}" for w in top)
        gap = m["details"].get("completeness_gap")
        print(f"  {name:<21} {line}" + (f"  (completeness gap {100 * gap:.2f}%)" if gap is not None else ""))
    for name, s in report.get("sanity", {}).items():
        r, d = s["randomization"], s["deletion"]
        rho = r["stages"][-1]["spearman_abs"]
        print(f"  sanity {name:<14} randomized |Spearman| {'n/a' if rho is None else f'{abs(rho):.2f}'} "
              f"{'pass' if r['passed'] else 'FAIL'}; deletion AUC {d['auc_top']:.3f} vs random "
              f"{d['auc_random']:.3f} {'pass' if d['passed'] else 'FAIL'}")
    c = report["counterfactuals"]
    if "skipped" in c:
        print(f"  counterfactuals: none ({c['skipped']})")
    else:
        print(f"  counterfactuals: {len(c['counterfactuals'])} of {c['tried']} edits change the label"
              + (f", e.g. {c['counterfactuals'][0]['text']!r} -> {c['counterfactuals'][0]['label']}"
                 if c["counterfactuals"] else ""))


def add_explain_parser(sub) -> None:
    from ..explain import METHODS, TASKS
    from ..explain.gradients import BASELINES
    from ..tasks.classify import AGGREGATIONS

    e = sub.add_parser("explain", help="why the model predicted that: attributions, attention, counterfactuals "
                       "on one HTML page", description=(
                           "Explain one prediction with several attribution methods side by side, the attention of "
                           "every layer and head, attention rollout, counterfactual edits and sanity checks, on one "
                           "self-contained HTML page (no network when viewed)."))
    e.add_argument("text", help="the text, a UTF-8 file holding it (the whole file is one note), or -")
    add_model_args(e, required=True)
    e.add_argument("--task", choices=TASKS, default=None, help="default: the task of the checkpoint's head")
    e.add_argument("--question", help="qa: the question (TEXT is the context)")
    e.add_argument("--target", help="what to explain: a label (classify), an entity's text (ner), an answer's text "
                   "(qa), a vocabulary token (fill-mask); default: the model's prediction")
    e.add_argument("--methods", help=f"comma-separated, from {', '.join(METHODS)} (default: those needing no extra "
                   "package that the backend runs)")
    e.add_argument("--out", required=True, metavar="FILE", help="the HTML page to write")
    e.add_argument("--json", metavar="FILE", help="also write the numbers, keyed by method name")
    e.add_argument("--png", metavar="FILE", help="also render the page to a PNG (Playwright + the system Chromium)")
    e.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    e.add_argument("--steps", type=int, default=50, help="integrated-gradients: quadrature points (refined where the "
                   "completeness gap needs it)")
    e.add_argument("--baseline", choices=BASELINES, default="pad", help="integrated-gradients: the baseline tokens")
    e.add_argument("--aggregation", choices=AGGREGATIONS, default="mean",
                   help="classify: how a long note's window probabilities combine")
    add_window_args(e, "note", truncate=False, aggregation=False)
    e.add_argument("--counterfactuals", action=argparse.BooleanOptionalAction, default=None,
                   help="word substitutions that change a classifier's label (default: when a masked-LM head is at "
                   "hand)")
    e.add_argument("--mlm", metavar="DIR", help="a companion masked-LM checkpoint to propose the words")
    e.add_argument("--max-edits", type=int, default=2, help="counterfactuals: at most this many words changed")
    e.add_argument("--sanity", action=argparse.BooleanOptionalAction, default=True,
                   help="model-randomization test and deletion curve for each method")
    e.add_argument("--shap-evals", type=int, default=500, help="shap: max_evals of the Partition explainer")
    e.add_argument("--lime-samples", type=int, default=5000, help="lime: num_samples")
    e.add_argument("--seed", type=int, default=0, help="lime's samples, the random deletion orders, re-initialization")
    e.add_argument("--batch-size", type=int, default=32)
    e.set_defaults(func=cmd_explain)
