"""``fit``: fine-tune a checkpoint on a task's data, as transformers.Trainer would, on the op list.

One optimizer step: ``grad_accum`` length-grouped micro-batches through the backend's gradient
executable (the training graph: dropout and the task's loss added to the family's graph), their
gradients averaged, unscaled (float16), clipped by global norm, then AdamW at the schedule's rate.
Each epoch ends with an evaluation through an executable of the graph without dropout that shares
the weights; the best model so far (by the metric the data names "main") is the Hugging Face folder
at OUT's top level, and OUT/checkpoint-last/ lets ``resume=True`` finish a killed run with the
weights an uninterrupted one ends with (see :mod:`.resume`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..backends import get_backend, probe
from ..errors import InputError
from ..families import build_graph, family_of
from ..heads import Heads, split_qa_logits
from ..ir import Op
from ..losses import DROPOUT_SEED, dropout_probs, prepare_labels, with_dropout, with_losses
from .optim import SCHEDULES, AdamW, LossScaler, clip_grad_norm, global_norm, lr_factor, no_decay_params, warmup_steps
from .resume import LAST, append_log, load_last, prepare_out, save_last, truncate_log
from .save import TASKS, OutputModel, write_replacing

PRECISIONS = ("float32", "bfloat16", "float16")
AGGREGATIONS = ("mean", "max", "vote")
TRAINING_BACKENDS = ("numpy", "mlx")  # the backends with compile_grad
# Metrics where the best checkpoint has the smallest value, when the data's metrics do not say
# (greater_is_better, as TrainingArguments names it).
LOWER_IS_BETTER = ("perplexity", "loss")
TASK_LABELS = {"mlm": ("labels",), "seq-cls": ("labels",), "token-cls": ("labels",),
               "qa": ("start_positions", "end_positions")}


def fit(task: str, model_dir, train_file, out_dir, *, eval_file=None, epochs: int = 3, lr: float = 5e-5,
        batch_size: int = 16, grad_accum: int = 1, warmup_ratio: float = 0.0, weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0, schedule: str = "linear", precision: str = "float32", seed: int = 42,
        backend: str = "auto", resume: bool = False, overwrite: bool = False, early_stopping: int | None = None,
        max_steps: int | None = None, whole_word_mask: bool = False, aggregation: str = "mean",
        save_steps: int = 500, log: Callable[[dict], None] | None = None, lora=None) -> dict:
    """Fine-tune the checkpoint ``model_dir`` on ``train_file`` for ``task`` (mlm, seq-cls, token-cls,
    qa) and save it to ``out_dir`` as a Hugging Face folder; returns a summary (steps, metrics, best).

    Names follow transformers.TrainingArguments (learning_rate -> ``lr``, gradient_accumulation_steps ->
    ``grad_accum``). ``backend="auto"``: MLX where installed, else numpy. ``early_stopping``: stop after
    that many evaluations without improvement. ``max_steps`` overrides ``epochs``. ``log`` receives every
    record also written to OUT/log.jsonl (None: a progress bar on stderr). Every bad argument or input
    is an InputError naming it, raised before anything in ``out_dir`` changes.
    ``lora``: a rank, or cbert.adapt.lora.LoraSettings(r, alpha, targets): train LoRA adapters with the
    base frozen and save them as a PEFT adapter folder (cbert.adapt.lora).
    """
    settings = dict(task=task, epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                    warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                    schedule=schedule, precision=precision, seed=seed, max_steps=max_steps,
                    whole_word_mask=whole_word_mask, aggregation=aggregation)
    check_settings(settings, early_stopping, save_steps, eval_file)
    for name, path in (("train_file", train_file), ("eval_file", eval_file)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{path}: no such file ({name}); give a {settings['task']} data file")
    from .. import load

    base = load(model_dir, backend="numpy")  # the base checkpoint and its tokenizer, read once
    ckpt, cfg = base.checkpoint, base.config
    out = Path(out_dir).absolute()
    if out == ckpt.path.absolute() or ckpt.path.absolute().is_relative_to(out):
        raise InputError(f"{out}: --out is the --model folder (or holds it); give a new folder")
    settings.update(model=str(ckpt.path.absolute()), train_file=str(Path(train_file).absolute()),
                    eval_file=None if eval_file is None else str(Path(eval_file).absolute()))
    compute = training_backend(backend, precision)

    from .data import read_task  # the data side of this package (read_task, TaskData)

    label2id = base_label2id(ckpt, task)
    read = dict(aggregation=aggregation, whole_word=whole_word_mask)
    train = read_task(task, train_file, base.tokenizer, cfg, label2id=label2id, **read)
    if len(train) == 0:
        raise InputError(f"{train_file}: no training examples")
    labels = list(train.label_names) if train.label_names else None
    dev = None
    if eval_file is not None:
        dev_label2id = {name: i for i, name in enumerate(labels)} if labels else None
        dev = read_task(task, eval_file, base.tokenizer, cfg, label2id=dev_label2id, **read)
        if len(dev) == 0:
            raise InputError(f"{eval_file}: no evaluation examples")

    heads, problem = task_heads(task, train, ckpt)
    tcfg = replace(cfg, extra={**cfg.extra, "problem_type": problem}) if problem else cfg
    graph = build_graph(tcfg, heads)
    params, initialized = initial_params(tcfg, graph, ckpt.params, seed)
    output = OutputModel(ckpt.path, cfg, task, heads, tuple(labels) if labels else None, problem)
    # -- LoRA: adapters beside the base's linears, the base frozen; the run saves a PEFT folder --
    trainable = None  # None: every parameter trains
    if lora is not None:
        from ..adapt.lora import LoraOutput, LoraSettings, plan_lora

        plan = plan_lora(LoraSettings.of(lora), tcfg, graph, heads, initialized)
        params.update(plan.init_params(graph, seed))
        graph, output, trainable = plan.graph(graph), LoraOutput(plan, output), plan.trainable
        settings["lora"] = plan.settings.as_dict()
    given = TASK_LABELS[task]
    loss_graph = with_losses(graph, heads, frozenset(given), problem)
    train_graph = with_losses(with_dropout(graph, *dropout_probs(tcfg)), heads, frozenset(given), problem)
    train_graph = train_graph.select({"loss": train_graph.outputs["loss"]})
    eval_graph = loss_graph.select({k: v for k, v in loss_graph.outputs.items()
                                    if k == "loss" or k in heads.outputs()})

    state = prepare_out(out, settings, resume, overwrite)  # the first change to out_dir
    run = _Run(settings, out, tcfg, heads, output, train, dev, compute, train_graph, eval_graph, params,
               early_stopping, save_steps, log if log is not None else Progress(), trainable)
    if state is None and initialized:
        run.record({"step": 0, "message": f"initialized {', '.join(initialized)} as Hugging Face does "
                    f"(normal(0, {initializer_range(cfg)}), zero bias, LayerNorm 1/0): {ckpt.weights_file} "
                    f"has no such tensor{'s' if len(initialized) > 1 else ''} for {output.architecture}"})
    return run.train(state)


def check_settings(s: dict, early_stopping, save_steps, eval_file) -> None:
    def bad(name: str, expected: str):
        raise InputError(f"{name}={s[name]!r}: expected {expected}")

    if s["task"] not in TASKS:
        bad("task", f"one of {', '.join(TASKS)}")
    for name in ("epochs", "batch_size", "grad_accum"):
        if not _is_int(s[name]) or s[name] < 1:
            bad(name, "a positive integer")
    if s["max_steps"] is not None and (not _is_int(s["max_steps"]) or s["max_steps"] < 1):
        bad("max_steps", "a positive integer (or None: epochs decide)")
    if not _is_number(s["lr"]) or not s["lr"] > 0:
        bad("lr", "a positive learning rate")
    if not _is_number(s["warmup_ratio"]) or not 0 <= s["warmup_ratio"] <= 1:
        bad("warmup_ratio", "a fraction of the steps in [0, 1]")
    if not _is_number(s["weight_decay"]) or not s["weight_decay"] >= 0:
        bad("weight_decay", "a non-negative number")
    if s["max_grad_norm"] is not None and (not _is_number(s["max_grad_norm"]) or not s["max_grad_norm"] >= 0):
        bad("max_grad_norm", "a non-negative number (0 or None: no clipping)")
    if s["schedule"] not in SCHEDULES:
        bad("schedule", f"one of {', '.join(SCHEDULES)}")
    if s["precision"] not in PRECISIONS:
        bad("precision", f"one of {', '.join(PRECISIONS)}")
    if not _is_int(s["seed"]):
        bad("seed", "an integer")
    if s["aggregation"] not in AGGREGATIONS:
        bad("aggregation", f"one of {', '.join(AGGREGATIONS)}")
    if s["whole_word_mask"] and s["task"] != "mlm":
        raise InputError(f"whole_word_mask: only the mlm task masks words; task={s['task']!r}")
    if not _is_int(save_steps) or save_steps < 1:
        raise InputError(f"save_steps={save_steps!r}: expected a positive integer")
    if early_stopping is not None:
        if not _is_int(early_stopping) or early_stopping < 1:
            raise InputError(f"early_stopping={early_stopping!r}: expected a positive number of evaluations")
        if eval_file is None:
            raise InputError("early_stopping needs an evaluation file (eval_file / --eval) to judge progress by")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def training_backend(name: str, precision: str):
    """The backend a run computes on: ``auto`` is MLX where installed, else numpy; it must have
    gradients (compile_grad) and run ``precision``."""
    if name == "auto":
        name = "mlx" if probe("mlx").get("available") else "numpy"
    if name not in TRAINING_BACKENDS:
        raise InputError(f"backend={name!r} cannot train; cbert trains on {', '.join(TRAINING_BACKENDS)}")
    if name == "numpy" and precision != "float32":
        raise InputError(f"precision={precision!r}: backend='numpy' trains in float32 only; use backend='mlx' "
                         "for bfloat16 or float16")
    backend = get_backend(name, precision)
    if not hasattr(backend, "compile_grad"):
        raise InputError(f"backend={name!r} has no gradients in this installation of cbert")
    return backend


def base_label2id(ckpt, task: str) -> dict[str, int] | None:
    """The base's own labels when it already holds the task's classifier with named labels (the
    data must then use them); None: the data's labels decide."""
    head = {"seq-cls": ckpt.loaded.seq_cls, "token-cls": ckpt.loaded.token_cls}.get(task, 0)
    names = ckpt.config.id2label
    if not head or not names or all(v == f"LABEL_{k}" for k, v in names.items()):
        return None
    return {v: k for k, v in names.items()}


def task_heads(task: str, data, ckpt) -> tuple[Heads, str | None]:
    """The heads of the class trained for ``task`` (labels counted from the data), and the seq-cls
    problem type. Only the task's head: the class saved has no other (its pooler where it reads one)."""
    n = len(data.label_names) if data.label_names else 1
    if task == "seq-cls":
        return Heads(seq_cls=n), data.problem_type or "single_label_classification"
    if task == "token-cls":
        return Heads(token_cls=n), None
    if task == "qa":
        return Heads(qa=True), None
    return Heads(mlm=True, tied_decoder=ckpt.loaded.tied_decoder), None


def initializer_range(cfg) -> float:
    return float(cfg.extra.get("initializer_range", 0.02))


def initial_params(cfg, graph, base: dict, seed: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """The graph's parameters from the base checkpoint; each one it lacks (or holds in another shape)
    initialized as Hugging Face's _init_weights does: LayerNorm scale 1, every other bias and shift 0,
    weights normal(0, initializer_range). Returns (params, the names initialized)."""
    rng = np.random.default_rng([seed, 0x1417])
    scales = {n.inputs[i] for n in graph.nodes for op, i in ((Op.LAYERNORM, 1), (Op.ADD_LN, 2), (Op.EMBED, 0))
              if n.op is op}
    zero = no_decay_params(graph) - scales  # biases and LayerNorm shifts
    params, initialized = {}, []
    for name in graph.params:
        shape = tuple(graph.param_shapes[name])
        if name in base and tuple(base[name].shape) == shape:
            params[name] = np.array(base[name], np.float32)
            continue
        initialized.append(name)
        if name in scales:
            params[name] = np.ones(shape, np.float32)
        elif name in zero:
            params[name] = np.zeros(shape, np.float32)
        else:
            params[name] = rng.normal(0.0, initializer_range(cfg), shape).astype(np.float32)
    return params, initialized


def length_grouped_batches(lengths, batch_size: int, perm: np.ndarray) -> list[list[int]]:
    """transformers' get_length_grouped_indices over the shuffled order ``perm``: megabatches of up
    to 50 batches each sorted longest first, the longest example of all in the first batch (memory
    runs out at once or never), then cut into batches."""
    n = len(lengths)
    mult = min(n // (batch_size * 4), 50) or 1
    size = mult * batch_size
    megas = [sorted(perm[i:i + size].tolist(), key=lambda j: lengths[j], reverse=True) for i in range(0, n, size)]
    longest = int(np.argmax([lengths[m[0]] for m in megas]))
    megas[0][0], megas[longest][0] = megas[longest][0], megas[0][0]
    flat = [j for m in megas for j in m]
    return [flat[i:i + batch_size] for i in range(0, n, batch_size)]


def draw(seed: int, *counters: int) -> int:
    """A 31-bit seed for one draw (a batch order, a dropout mask, a masking), a pure function of the
    run's seed and where in the run it happens: the step is the RNG state a resumed run needs."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, *counters]).generate_state(1)[0] & 0x7FFFFFFF)


class Diverged(InputError):
    """The loss or the gradients became NaN or infinite: the run stopped, its last good saves kept."""


class _Run:
    """One training run's state and loop (fit's body, split out to keep the steps readable)."""

    def __init__(self, settings, out: Path, cfg, heads, output: OutputModel, train, dev, backend, train_graph,
                 eval_graph, params, early_stopping, save_steps, log, trainable=None):
        self.s, self.out, self.cfg, self.heads, self.output = settings, out, cfg, heads, output
        self.train_data, self.dev, self.backend, self.log = train, dev, backend, log
        self.early_stopping, self.save_steps = early_stopping, save_steps
        self.trainable = trainable  # the parameters that learn (LoRA: adapters and head), None: all
        self.exe = backend.compile_grad(train_graph, params)
        self.eval_exe = backend.compile_grad(eval_graph, params) if dev is not None else None
        self.xp = self.exe.xp
        self.adam = AdamW(self.xp, weight_decay=settings["weight_decay"], no_decay=no_decay_params(train_graph))
        self.scaler = LossScaler(settings["precision"] == "float16")
        self.given = TASK_LABELS[settings["task"]]
        self.lengths = list(train.lengths())
        n_batches = math.ceil(len(train) / settings["batch_size"])
        self.steps_per_epoch = math.ceil(n_batches / settings["grad_accum"])
        self.total = settings["max_steps"] or settings["epochs"] * self.steps_per_epoch
        self.warmup = warmup_steps(self.total, settings["warmup_ratio"])
        self.step = 0  # optimizer steps taken (an fp16 step skipped for overflow counts, as in Trainer)
        self.best: dict | None = None  # {"step", "name", "value", "metrics"}
        self.evals_without_gain = 0
        self.saved_model_step: int | None = None  # the step of the model at OUT's top level
        self.saved_last_step: int | None = None

    # -- records ------------------------------------------------------------------------------

    def record(self, rec: dict) -> None:
        append_log(self.out, rec)
        self.log({**rec, "total_steps": self.total})

    # -- the loop -----------------------------------------------------------------------------

    def train(self, state: dict | None) -> dict:
        epoch, group, order = 0, 0, None
        if state is not None:
            epoch, group, order = self._restore(state)
        self.started, self.steps_here = time.perf_counter(), 0
        n_epochs = math.ceil(self.total / self.steps_per_epoch)
        stop = False
        metrics = None
        while epoch < n_epochs and not stop and self.step < self.total:
            if order is None:
                perm = np.random.default_rng(draw(self.s["seed"], 1, epoch)).permutation(len(self.lengths))
                order = length_grouped_batches(self.lengths, self.s["batch_size"], perm)
            accum = self.s["grad_accum"]
            groups = [order[i:i + accum] for i in range(0, len(order), accum)]
            while group < len(groups) and self.step < self.total:
                self._optimizer_step(groups[group])
                group += 1
                if self.step % self.save_steps == 0:
                    self._save_last(epoch, group, order)
            if self.dev is not None:
                metrics = self._evaluate(epoch)
                stop = self.early_stopping is not None and self.evals_without_gain >= self.early_stopping
            else:
                self._save_model()
            epoch, group, order = epoch + 1, 0, None
            self._save_last(epoch, group, order)
        if self.dev is None and self.saved_model_step != self.step:
            self._save_model()
        summary = {"out": str(self.out), "architecture": self.output.architecture, "steps": self.step,
                   "stopped_early": stop, "metrics": metrics, "best": self.best}
        best = f", best {self.best['name']} {self.best['value']:.4g} at step {self.best['step']}" if self.best else ""
        self.record({"step": self.step, "message": f"saved {self.out} ({self.output.architecture}, "
                     f"{self.step} steps{best})"})
        return summary

    def _optimizer_step(self, group: list[list[int]]) -> None:
        """``grad_accum`` micro-batches, their mean gradient, one AdamW update."""
        s, xp, exe = self.s, self.xp, self.exe
        step_started = time.perf_counter()
        scale = self.scaler.scale
        grads, losses, tokens = None, [], 0
        for micro, indices in enumerate(group):
            batch = self.train_data.collate(indices, draw(s["seed"], 2, self.step, micro))
            inputs = self._inputs(batch, exe.graph.inputs, dropout_seed=draw(s["seed"], 3, self.step, micro))
            with np.errstate(over="ignore", invalid="ignore"):  # a non-finite loss is caught below, by name
                outputs, g = exe(inputs, loss_scale=scale / len(group), trainable=self.trainable)
            losses.append(float(outputs["loss"]))
            tokens += int(np.asarray(inputs["attention_mask"]).sum()) if "attention_mask" in inputs else 0
            grads = g if grads is None else {k: grads[k] + v for k, v in g.items()}
        loss = sum(losses) / len(losses)
        if scale != 1.0:
            grads = {k: v * (1.0 / scale) for k, v in grads.items()}
        norm = global_norm(xp, grads)
        finite = math.isfinite(loss) and math.isfinite(norm)
        applied = self.scaler.update(not finite)
        if not finite and not self.scaler.enabled:
            self._diverged(self.step + 1, "loss" if not math.isfinite(loss) else "gradient norm", loss, norm)
        lr = s["lr"] * lr_factor(s["schedule"], self.adam.steps, self.warmup, self.total)
        if applied:
            if s["max_grad_norm"]:
                clip_grad_norm(xp, grads, s["max_grad_norm"], norm)
            self.adam.step(exe.params, grads, lr)
        self.step += 1
        self.steps_here += 1
        now = time.perf_counter()
        elapsed = now - self.started
        rec = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "loss": loss, "lr": lr,
               "grad_norm": norm, "tokens": tokens, "tokens_per_s": round(tokens / max(now - step_started, 1e-9), 1),
               "eta_s": round(elapsed / self.steps_here * (self.total - self.step), 1)}
        if self.scaler.enabled:
            rec.update(loss_scale=scale, skipped=not applied)
        self.record(rec)

    def _inputs(self, batch: dict, wanted, dropout_seed: int | None = None) -> dict[str, np.ndarray]:
        """The graph's runtime inputs from a collated batch: positions by the family's rule, the
        labels checked as a forward checks them."""
        ids = np.asarray(batch["input_ids"], np.int64)
        B, S = ids.shape
        x = {"input_ids": ids,
             "attention_mask": np.asarray(batch.get("attention_mask", np.ones((B, S))), np.int64),
             "token_type_ids": np.asarray(batch.get("token_type_ids", np.zeros((B, S))), np.int64),
             "position_ids": family_of(self.cfg).position_ids(ids, self.cfg)}
        labels, _ = prepare_labels(self.cfg, self.heads, B, S, {k: batch.get(k) for k in self.given})
        x.update(labels)
        # Float inputs a graph reads beside the tokens (distillation's teacher outputs: cbert.train.distill)
        x.update({k: batch[k] for k in wanted if k not in x and k in batch})
        if dropout_seed is not None:
            x[DROPOUT_SEED] = np.asarray(dropout_seed, np.int64)
        return {k: x[k] for k in wanted}

    def _evaluate(self, epoch: int) -> dict:
        """The data's metrics over the eval set, by the eval executable (no dropout) sharing the weights."""
        exe = self.eval_exe
        exe.params = self.exe.params

        def run(batch: dict) -> dict:
            outputs, _ = exe(self._inputs(batch, exe.graph.inputs), trainable=())
            split_qa_logits(outputs)
            return outputs

        metrics = {k: (v if isinstance(v, (str, bool)) else float(v))
                   for k, v in self.dev.evaluate(run, self.s["batch_size"]).items()}
        name, value = main_metric(metrics)
        greater = metrics.get("greater_is_better", name not in LOWER_IS_BETTER)
        better = self.best is None or (value > self.best["value"] if greater else value < self.best["value"])
        if better:
            self.best = {"step": self.step, "name": name, "value": value, "metrics": metrics}
            self.evals_without_gain = 0
            self._save_model()
        else:
            self.evals_without_gain += 1
        self.record({"step": self.step, "epoch": epoch + 1, "eval": metrics, "best": better})
        return metrics

    def _diverged(self, step: int, what: str, loss: float, norm: float) -> None:
        value = loss if what == "loss" else norm
        kept = []
        if self.saved_model_step is not None:
            kept.append(f"{self.out} (the model of step {self.saved_model_step})")
        if self.saved_last_step is not None:
            kept.append(f"{self.out / LAST} (the state of step {self.saved_last_step})")
        self.record({"step": step, "message": f"stopped: the {what} is {value}"})
        raise Diverged(f"step {step}: the training {what} is {value}; training stopped. "
                       + (f"Kept: {', '.join(kept)}." if kept else "Nothing was saved yet.")
                       + " A lower lr (--lr) or float32 precision usually avoids this")

    # -- saving ---------------------------------------------------------------------------------

    def _host_params(self) -> dict[str, np.ndarray]:
        """The parameters that learn, on the host (a frozen base is neither saved nor restored)."""
        names = self.exe.params if self.trainable is None else self.trainable
        return {k: np.asarray(self.exe.to_host(self.exe.params[k]), np.float32) for k in names}

    def _save_model(self) -> None:
        """The model so far as the Hugging Face folder at OUT's top level."""
        write_replacing(self.out, self.output.files(self._host_params()))
        self.saved_model_step = self.step

    def _save_last(self, epoch: int, group: int, order) -> None:
        state = {"step": self.step, "epoch": epoch, "group": group, "order": order, "seed": self.s["seed"],
                 "loss_scale": self.scaler.state_dict(), "best": self.best,
                 "evals_without_gain": self.evals_without_gain, "saved_model_step": self.saved_model_step,
                 "examples": len(self.lengths)}
        save_last(self.out, self._host_params(), self.adam.state_dict(self.exe.to_host), state)
        self.saved_last_step = self.step

    def _restore(self, state: dict):
        if state.get("examples") != len(self.lengths):
            raise InputError(f"{self.out / LAST}: the run had {state.get('examples')} training features, the "
                             f"train file now gives {len(self.lengths)}; resume with the run's own data")
        params, moments, state = load_last(self.out)
        exe = self.exe
        learned = exe.params if self.trainable is None else self.trainable
        missing = set(learned) - set(params)
        if missing:
            raise InputError(f"{self.out / LAST}: no weights for {sorted(missing)[0]}; not this run's checkpoint")
        for name in learned:
            exe.params[name] = exe.from_host(params[name])
        self.adam.load_state_dict(moments, exe.from_host)
        self.scaler.load_state_dict(state["loss_scale"])
        self.step = int(state["step"])
        self.best = state["best"]
        self.evals_without_gain = int(state["evals_without_gain"])
        self.saved_model_step = state["saved_model_step"]
        self.saved_last_step = self.step
        truncate_log(self.out, self.step)
        self.record({"step": self.step, "message": f"resumed from {self.out / LAST} at step {self.step}"})
        return int(state["epoch"]), int(state["group"]), state["order"]


def main_metric(metrics: dict) -> tuple[str, float]:
    """(name, value) of the metric the best checkpoint is chosen by: the one ``metrics["main"]`` names."""
    main = metrics.get("main")
    if isinstance(main, str) and main in metrics:
        return main, float(metrics[main])
    if _is_number(main):
        return "main", float(main)
    raise InputError(f"evaluation metrics {sorted(metrics)} name no main metric (key 'main')")


class Progress:
    """A progress bar on stderr: step, loss, learning rate, tokens/s, ETA; messages and evaluations
    on lines of their own. Not a terminal: a line every ~5% of the steps."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.open = False  # a bar is on the current line

    def __call__(self, rec: dict) -> None:
        if "message" in rec or "eval" in rec:
            text = rec.get("message") or (f"eval at step {rec['step']}: "
                                          + ", ".join(f"{k} {v:.4g}" for k, v in rec["eval"].items()
                                                      if isinstance(v, float)))
            self._line(text)
            return
        total, step = rec["total_steps"], rec["step"]
        eta = time.strftime("%H:%M:%S", time.gmtime(rec["eta_s"]))
        width = 24
        bar = "#" * (width * step // total) + "." * (width - width * step // total)
        text = (f"step {step}/{total} [{bar}] loss {rec['loss']:.4f} lr {rec['lr']:.2e} "
                f"{rec['tokens_per_s']:,.0f} tok/s ETA {eta}")
        if self.tty:
            self.stream.write("\r" + text)
            self.open = True
            self.stream.flush()
        elif step == total or step % max(1, total // 20) == 0:
            self._line(text)

    def _line(self, text: str) -> None:
        self.stream.write(("\n" if self.open else "") + text + "\n")
        self.open = False
        self.stream.flush()
