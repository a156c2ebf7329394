"""``distill``: train a smaller student to match a teacher, as DistilBERT was made, on fit's loop.

The loss is DistilBERT's (transformers' examples/research_projects/distillation/distiller.py):
``A T^2 KL(softmax(z_t / T) || softmax(z_s / T)) + B hard + C (1 - cos(h_s, h_t))``, the KL and the
cosine over the positions the attention mask keeps (every row for a sequence classifier's logits),
``hard`` the student's own loss on the data's labels (masked-LM, or a classifier's cross-entropy when
the task data is labeled), h the last hidden states. They are nodes of the op list (KL_DIV, COSINE,
WEIGHTED_SUM) over the student's training graph, the teacher's outputs its runtime inputs.

The teacher runs forward only, on any backend, over each batch the student sees (the masked-LM
batch it masks); for a classifier teacher its outputs may be computed once and kept on disk
(``cache_teacher``: OUT/teacher-cache/), since a task's inputs are the same every epoch. The loop,
the optimizer, the run folder, resume and saving are :mod:`.fit`'s.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError
from ..families import build_graph, family_of
from ..files import read_json
from ..heads import MLM_LOGITS, SEQ_CLS_LOGITS, TOKEN_CLS_LOGITS, Heads
from ..ir import Graph, Op, node
from ..losses import dropout_probs, with_dropout, with_losses
from .fit import Progress, _is_number, _Run, base_label2id, check_settings, fit, initial_params, training_backend
from .resume import RUN_FILE, prepare_out
from .save import OutputModel
from .teacher_targets import (
    CACHE,
    TEACHER_HIDDEN,
    TEACHER_LOGITS,
    TeacherTargets,
    cache_key,
    read_unlabeled,
    teacher_cache,
)

# DistilBERT's (the distillation README's training command): --temperature 2 --alpha_ce 5 --alpha_mlm 2 --alpha_cos 1
DEFAULTS = dict(temperature=2.0, alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0)
TASK_LOGITS = {"mlm": MLM_LOGITS, "seq-cls": SEQ_CLS_LOGITS, "token-cls": TOKEN_CLS_LOGITS}
STUDENT_INIT = "student-init"  # OUT/student-init/: the student as initialized from the teacher
# Settings a resumed distillation must share with the run it continues (beside fit's SAME_ON_RESUME).
SAME_ON_RESUME = ("teacher", "student", "student_layers", "student_family", "temperature", "alpha_ce", "alpha_mlm",
                  "alpha_cos")


def distillation_graph(graph: Graph, heads: Heads, task: str, problem: str | None, labeled: bool, *,
                       temperature: float, alpha_ce: float, alpha_mlm: float, alpha_cos: float) -> Graph:
    """``graph`` (the student's, dropout included) with the distillation loss as its ``loss`` output;
    the terms are outputs too (``loss_ce``, ``loss_hard``, ``loss_cos``). ``labeled``: the data has
    labels (masked-LM labels always), so the hard term is added when ``alpha_mlm`` is not 0."""
    nodes, outputs, inputs = list(graph.nodes), dict(graph.outputs), list(graph.inputs)
    parts: list[tuple[str, float]] = []
    if alpha_ce:
        rows = [] if task == "seq-cls" else ["attention_mask"]  # a classifier's logits: one row per sequence
        nodes.append(node(Op.KL_DIV, [TASK_LOGITS[task], TEACHER_LOGITS, *rows], "loss_ce", temperature=temperature))
        inputs.append(TEACHER_LOGITS)
        parts.append(("loss_ce", alpha_ce * temperature ** 2))
    if alpha_mlm and labeled:
        hard = with_losses(graph, heads, frozenset({"labels"}), problem)
        nodes += hard.nodes[len(graph.nodes):]
        inputs.append("labels")
        outputs["loss_hard"] = hard.outputs["loss"]
        parts.append((hard.outputs["loss"], alpha_mlm))
    if alpha_cos:
        nodes.append(node(Op.COSINE, [graph.outputs["last_hidden_state"], TEACHER_HIDDEN, "attention_mask"],
                          "loss_cos"))
        inputs.append(TEACHER_HIDDEN)
        parts.append(("loss_cos", alpha_cos))
    if not parts:
        raise InputError("alpha_ce, alpha_mlm and alpha_cos are all 0" + ("" if labeled else " or unused (the data "
                         "has no labels for alpha_mlm)") + ": nothing to learn from")
    outputs.update({name: name for name in ("loss_ce", "loss_cos") if any(n.output == name for n in nodes)})
    nodes.append(node(Op.WEIGHTED_SUM, [p for p, _ in parts], "loss", weights=tuple(float(w) for _, w in parts)))
    outputs["loss"] = "loss"
    return Graph(tuple(nodes), tuple(dict.fromkeys(inputs)), outputs, graph.param_shapes)


# -- the run ---------------------------------------------------------------------------------------

def trainer_settings(given: dict) -> dict:
    """fit's keyword settings (epochs, lr, batch_size ... backend, resume, log) with their defaults from
    fit's own signature, updated by ``given``; a name fit does not take is an InputError."""
    defaults = {name: p.default for name, p in inspect.signature(fit).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InputError(f"distill() got an unknown setting {unknown[0]!r}; it takes the trainer's settings "
                         f"({', '.join(defaults)}) and the distillation's")
    return {**defaults, **given}


def teacher_task(ckpt) -> str:
    """The task a teacher is distilled on, by its class's head: masked-LM, sequence or token classifier."""
    h = ckpt.heads
    task = "mlm" if h.mlm else "seq-cls" if h.seq_cls else "token-cls" if h.token_cls else None
    if task is None:
        raise InputError(f"{ckpt.path}: the teacher is a {ckpt.architecture}, with no masked-LM, sequence or token "
                         "classifier head to distill (its logits are the soft targets)")
    if task == "seq-cls":
        problem = ckpt.config.extra.get("problem_type")
        if problem not in (None, "single_label_classification") or h.seq_cls < 2:
            raise InputError(f"{ckpt.path}: the teacher's classifier is {problem or 'a regression (one label)'}; "
                             "soft targets need a single-label classifier of 2 or more classes")
    return task


def check_student(teacher, cfg, tokenizer, where: str, alpha_cos: float) -> None:
    """A student fits its teacher: not wider, the same vocabulary (ids mean the same tokens), inputs
    the teacher can take, and equal widths where the cosine loss compares hidden states."""
    t = teacher.config
    if cfg.hidden_size > t.hidden_size:
        raise InputError(f"{where}: the student is wider than its teacher (hidden_size {cfg.hidden_size} > "
                         f"{t.hidden_size} of {teacher.checkpoint.path}); a student is at most as wide")
    theirs, ours = teacher.tokenizer, tokenizer
    if cfg.vocab_size != t.vocab_size or ours.vocab_size != theirs.vocab_size:
        raise InputError(f"{where}: the student's vocabulary ({cfg.vocab_size} embeddings, {ours.vocab_size} tokens) "
                         f"differs from the teacher's ({t.vocab_size}, {theirs.vocab_size}); a student shares its "
                         "teacher's tokenizer")
    ids = range(ours.vocab_size)
    for i, (a, b) in enumerate(zip(ours.convert_ids_to_tokens(ids), theirs.convert_ids_to_tokens(ids))):
        if a != b:
            raise InputError(f"{where}: token id {i} is {a!r} in the student's tokenizer but {b!r} in the teacher's; "
                             "a student shares its teacher's vocabulary")
    if cfg.max_seq_len > t.max_seq_len:
        raise InputError(f"{where}: the student takes {cfg.max_seq_len} tokens, its teacher only {t.max_seq_len}")
    if alpha_cos and cfg.hidden_size != t.hidden_size:
        raise InputError(f"alpha_cos={alpha_cos}: the cosine loss compares hidden states of equal width; the student "
                         f"has {cfg.hidden_size}, the teacher {t.hidden_size} (set alpha_cos to 0)")


def _check_numbers(temperature, alphas: dict) -> None:
    if not _is_number(temperature) or not temperature > 0:
        raise InputError(f"temperature={temperature!r}: expected a positive number")
    for name, value in alphas.items():
        if not _is_number(value) or value < 0:
            raise InputError(f"{name}={value!r}: expected a non-negative weight")


def distill(teacher_dir, train_file, out_dir, *, student_layers=None, student_dir=None, student_family=None,
            temperature: float = DEFAULTS["temperature"], alpha_ce: float = DEFAULTS["alpha_ce"],
            alpha_mlm: float = DEFAULTS["alpha_mlm"], alpha_cos: float = DEFAULTS["alpha_cos"],
            teacher_backend: str = "numpy", cache_teacher: bool = False, **train) -> dict:
    """Distill the checkpoint ``teacher_dir`` into a student trained on ``train_file`` and saved to
    ``out_dir`` (a Hugging Face folder); returns fit's summary.

    The student is ``student_dir`` (a checkpoint with the teacher's vocabulary, at most as wide), or
    initialized from every other teacher layer (``student_layers``: a number, default half the
    teacher's, or the teacher layer indices; ``student_family``: "distilbert" for a BERT teacher) and
    kept in OUT/student-init/. The task is the teacher's head: a masked-LM teacher distills on raw
    text (mlm data), a sequence or token classifier on the task's data (labels add the hard term).
    ``train``: fit's settings by fit's names (eval_file, epochs, lr, batch_size, backend, resume ...).
    Every bad argument or input is an InputError, raised before anything in ``out_dir`` changes.
    """
    from .. import load
    from ..adapt.student import save_student

    t = trainer_settings(train)
    if t.get("lora") is not None:
        raise InputError("lora: distillation trains the whole student (it is already small); LoRA adapts a model "
                         "with cbert train TASK --lora")
    alphas = dict(alpha_ce=alpha_ce, alpha_mlm=alpha_mlm, alpha_cos=alpha_cos)
    _check_numbers(temperature, alphas)
    if student_dir is not None and student_layers is not None:
        raise InputError("student_dir and student_layers: give one (a student folder, or the layers to initialize "
                         "one from the teacher)")
    if student_dir is not None and student_family is not None:
        raise InputError("student_family: only for a student initialized from the teacher (not with student_dir)")
    teacher = load(teacher_dir, backend=teacher_backend)
    tck = teacher.checkpoint
    task = teacher_task(tck)
    if cache_teacher and task == "mlm":
        raise InputError("cache_teacher: masked-LM batches are masked anew at every step, so the teacher's outputs "
                         "cannot be reused; distill without the cache")
    settings = dict(task=task, **{k: t[k] for k in ("epochs", "lr", "batch_size", "grad_accum", "warmup_ratio",
                                                   "weight_decay", "max_grad_norm", "schedule", "precision", "seed",
                                                   "max_steps", "whole_word_mask", "aggregation")})
    check_settings(settings, t["early_stopping"], t["save_steps"], t["eval_file"])
    for name, path in (("train_file", train_file), ("eval_file", t["eval_file"])):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{path}: no such file ({name}); give {task} data")
    source = student_source(teacher, student_dir, student_layers, student_family, t["seed"])
    cfg = source.config
    check_student(teacher, cfg, source.tokenizer, str(student_dir or "the student"), alpha_cos)
    out = Path(out_dir).absolute()
    for what, folder in (("--teacher", tck.path), ("--student", student_dir)):
        if folder is not None and (out == Path(folder).absolute() or Path(folder).absolute().is_relative_to(out)):
            raise InputError(f"{out}: --out is the {what} folder (or holds it); give a new folder")
    settings.update(distill=True, teacher=str(tck.path.absolute()), teacher_backend=teacher_backend,
                    student=None if student_dir is None else str(Path(student_dir).absolute()),
                    student_layers=source.layers, student_family=family_of(cfg).name, temperature=temperature, **alphas,
                    cache_teacher=cache_teacher, train_file=str(Path(train_file).absolute()),
                    eval_file=None if t["eval_file"] is None else str(Path(t["eval_file"]).absolute()))
    compute = training_backend(t["backend"], t["precision"])

    # The teacher's tokenizer (the student's has the same vocabulary): token types as the teacher takes them
    data, dev = read_data(task, train_file, t, teacher.tokenizer, cfg, base_label2id(tck, task))
    heads = {"seq-cls": Heads(seq_cls=tck.heads.seq_cls), "token-cls": Heads(token_cls=tck.heads.token_cls),
             "mlm": Heads(mlm=True, tied_decoder=source.tied_decoder)}[task]
    problem = "single_label_classification" if task == "seq-cls" else None
    scfg = replace(cfg, extra={**cfg.extra, "problem_type": problem}) if problem else cfg
    graph = build_graph(scfg, heads)
    params, initialized = initial_params(scfg, graph, source.params, t["seed"])
    labeled = getattr(data, "labeled", True)
    loss_args = dict(temperature=float(temperature), **{k: float(v) for k, v in alphas.items()})
    train_graph = distillation_graph(with_dropout(graph, *dropout_probs(scfg)), heads, task, problem, labeled,
                                     **loss_args)
    train_graph = train_graph.select({"loss": "loss"})
    eval_graph = with_losses(graph, heads, frozenset({"labels"}), problem)
    eval_graph = eval_graph.select({k: v for k, v in eval_graph.outputs.items()
                                    if k == "loss" or k in heads.outputs()})
    logits = heads_output(tck, task) if alpha_ce else None
    targets = TeacherTargets(data, teacher, logits, bool(alpha_cos))

    if t["resume"] and (out / RUN_FILE).is_file():
        before = read_json(out / RUN_FILE).get("settings", {})
        for key in SAME_ON_RESUME:
            if before.get(key) != settings.get(key):
                raise InputError(f"{out}: --resume: {key} = {settings.get(key)!r} differs from the run's "
                                 f"{before.get(key)!r} ({RUN_FILE}); resume with the run's settings")
    state = prepare_out(out, settings, t["resume"], t["overwrite"])  # the first change to out_dir
    base = source.folder if source.init is None else save_student(source.init, out / STUDENT_INIT, overwrite=True)
    names = tuple(tck.config.id2label[i] for i in sorted(tck.config.id2label)) if task != "mlm" else None
    output = OutputModel(base, scfg, task, heads, names, problem)
    run = _Run(settings, out, scfg, heads, output, targets, dev, compute, train_graph, eval_graph, params,
               t["early_stopping"], t["save_steps"], t["log"] if t["log"] is not None else Progress())
    if state is None:
        origin = f"{base}" if source.init is None else f"teacher layers {source.layers} ({base})"
        run.record({"step": 0, "message": f"distilling {tck.path} ({tck.architecture}, on {teacher_backend}) into a "
                    f"{cfg.num_hidden_layers}-layer {output.architecture} from {origin}"})
        if initialized:
            run.record({"step": 0, "message": f"initialized {', '.join(initialized)} as Hugging Face does"})
        if not labeled and alpha_mlm:
            run.record({"step": 0, "message": f"{train_file} has no labels: the loss has no hard term (alpha_mlm)"})
    if cache_teacher:
        targets.cache = teacher_cache(out / CACHE, targets, cache_key(teacher, Path(train_file), data, targets),
                                      t["batch_size"], run.record)
    return run.train(state)


@dataclass
class StudentSource:
    """Where a student's weights come from: a checkpoint folder, or a student initialized from the teacher."""

    config: object  # ModelConfig
    tokenizer: object
    params: dict
    tied_decoder: bool
    folder: Path | None  # the checkpoint folder (None: initialized, saved to OUT/student-init/)
    init: object = None  # cbert.adapt.student.Student, when initialized from the teacher
    layers: list[int] | None = None  # the teacher layers it took


def student_source(teacher, student_dir, student_layers, student_family, seed: int) -> StudentSource:
    from .. import load
    from ..adapt.student import student_from_teacher

    if student_dir is not None:
        model = load(student_dir, backend="numpy")
        ck = model.checkpoint
        return StudentSource(model.config, model.tokenizer, ck.params, ck.loaded.tied_decoder, ck.path)
    n = student_layers if student_layers is not None else max(1, teacher.config.num_hidden_layers // 2)
    student = student_from_teacher(teacher.checkpoint, n, student_family, seed)
    return StudentSource(student.config, teacher.tokenizer, student.params, student.heads.tied_decoder, None, student,
                         student.layers)


def read_data(task: str, train_file, t: dict, tokenizer, cfg, label2id):
    """(training data, evaluation data or None): the task's files as fit reads them; a classifier
    teacher's training file may also be a .txt of unlabeled texts, one per line."""
    from .data import read_task

    read = dict(aggregation=t["aggregation"], whole_word=t["whole_word_mask"])
    if task != "mlm" and Path(train_file).suffix.lower() == ".txt":  # texts for the teacher to label
        data = read_unlabeled(task, train_file, tokenizer, cfg)
    else:
        data = read_task(task, train_file, tokenizer, cfg, label2id=label2id, **read)
    if len(data) == 0:
        raise InputError(f"{train_file}: no training examples")
    dev, eval_file = None, t["eval_file"]
    if eval_file is not None:
        if Path(eval_file).suffix.lower() == ".txt" and task != "mlm":
            raise InputError(f"{eval_file}: an evaluation file needs labels (JSONL or CSV {task} data); a .txt file "
                             "of texts serves as training data only")
        dev = read_task(task, eval_file, tokenizer, cfg, label2id=label2id, **read)
        if len(dev) == 0:
            raise InputError(f"{eval_file}: no evaluation examples")
    return data, dev


def heads_output(ckpt, task: str) -> str:
    """The name of the teacher's logits among its forward's outputs."""
    return ckpt.heads.mlm_output if task == "mlm" else "logits"
