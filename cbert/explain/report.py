"""Everything ``cbert explain`` shows for one prediction: the attributions of each method, the
attention of the prediction's window, counterfactual edits and the sanity checks, gathered once for
the page (:mod:`.page`) and the JSON file."""

from __future__ import annotations

import sys

import numpy as np

from ..errors import InputError
from ..tasks.classify import class_probabilities
from .counterfactuals import counterfactuals_of
from .methods import CORE_METHODS, METHODS, Options, as_json, check_method, run_method
from .rollout import attentions, rollout_matrix
from .sanity import deletion_curve, randomization_test
from .subject import default_task, make_subject


def default_methods(model, task: str) -> list[str]:
    """The methods needing no optional package that run on the model's backend."""
    grads = hasattr(model.backend, "compile_grad")
    return [m for m in CORE_METHODS if grads or not METHODS[m][1]]


def build_report(model, text: str, task: str | None = None, target=None, question: str | None = None,
                 methods: list[str] | None = None, options: Options | None = None, aggregation: str = "mean",
                 stride: int | None = None, batch_size: int = 32, counterfactuals: bool | None = None, mlm=None,
                 max_edits: int = 2, sanity: bool = True, progress: bool = False) -> dict:
    """The report of ``model``'s prediction on ``text``. ``counterfactuals``: None runs them where they
    can run (a classifier with a masked-LM head or ``mlm``) and says why not elsewhere."""
    options = options or Options()
    task = default_task(model) if task is None else task
    methods = list(dict.fromkeys(methods)) if methods else default_methods(model, task)
    for m in methods:  # every method's backend, extra and task, before any forward
        check_method(model, m, task)
    subject = make_subject(model, text, task, target, question, aggregation, stride, batch_size, progress)
    explanations = {}
    for m in methods:
        if progress:
            print(f"explain: {m}", file=sys.stderr)
        explanations[m] = run_method(subject, m, options)
    report = {"model": str(model.checkpoint.path), "architecture": model.checkpoint.architecture,
              "backend": model.backend.describe(), "task": task, "text": subject.text, "question": question,
              "target": next(iter(explanations.values())).target if explanations else subject.target.describe(),
              "probability": subject.probability, "windows": len(subject.windows),
              "tokens": [{"token": t, "start": s, "end": e} for t, (s, e) in zip(subject.tokens, subject.offsets)],
              "words": [{"start": s, "end": e, "first_token": a, "end_token": b}
                        for a, b, s, e in subject.word_spans()],
              "methods": {m: e.to_dict() for m, e in explanations.items()}}
    if task == "classify":
        probs = class_probabilities(model, [text], aggregation, stride, batch_size)[0]
        report["labels"] = {label: float(p) for label, p in zip(subject.target.labels, probs)}
    report["attention"] = _attention(subject)
    report["counterfactuals"] = _counterfactuals(subject, explanations, options, counterfactuals, mlm, max_edits)
    if sanity:
        report["sanity"] = {}
        for m, e in explanations.items():
            if progress:
                print(f"sanity checks: {m}", file=sys.stderr)
            report["sanity"][m] = {"randomization": randomization_test(subject, e, options),
                                   "deletion": deletion_curve(subject, e, options.seed)}
    return report


def _attention(subject) -> dict:
    """The attention of the window that weighs most in the prediction: every layer and head, and its rollout."""
    w = subject.target.windows[int(np.argmax(subject.target.weights))]
    att = attentions(subject, w)
    win = subject.windows[w]
    return {"window": w, "tokens": subject.model.tokenizer.convert_ids_to_tokens(win.ids),
            "maps": att.astype(np.float32), "rollout": rollout_matrix(att).astype(np.float32),
            "rows": subject.target.rows(w)}


def _counterfactuals(subject, explanations, options, wanted, mlm, max_edits) -> dict:
    if subject.task != "classify":
        if wanted:
            raise InputError(f"counterfactuals change a classifier's label; task {subject.task} has none")
        return {"skipped": f"counterfactuals change a classifier's label; task {subject.task} has none"}
    if wanted is None and mlm is None and not subject.model.checkpoint.loaded.mlm:
        return {"skipped": "the checkpoint has no masked-LM head to propose words; give a companion masked-LM "
                           "checkpoint (--mlm DIR)"}
    if wanted is False:
        return {"skipped": "not asked for"}
    return counterfactuals_of(subject, options, max_edits=max_edits, mlm=mlm,
                              occlusion=explanations.get("occlusion"))


def report_json(report: dict) -> dict:
    """The report as JSON holds it: the numbers of every method, without the attention maps."""
    plain = {k: v for k, v in report.items() if k != "attention"}
    plain["attention"] = {k: v for k, v in report["attention"].items() if k not in ("maps", "rollout")}
    return as_json(plain)
