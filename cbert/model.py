"""The Python API: ``cbert.load`` and the ``Model`` it returns.

A thin facade: the checkpoint (with its one graph) comes from :mod:`cbert.checkpoint`, heads
and their placement from :mod:`cbert.heads`, the backend from :mod:`cbert.backends`, and the
tasks from :mod:`cbert.tasks`. Here: loading, input checks, forward, and the task methods.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from . import tasks
from .backends import get_backend
from .backends.numpy import NumpyExecutable
from .checkpoint import Checkpoint, load_checkpoint
from .errors import CheckpointError, InputError
from .families import family_of
from .heads import MLM_LOGITS, MLM_MODES, POOLER_OUTPUT, HostHeads, forward_outputs, mlm_in_graph, split_qa_logits
from .ir import Graph, expose_attentions
from .losses import loss_graph, prepare_labels, with_losses
from .tasks.embed import EmbeddingDefaults
from .tokenizer import Tokenizer


class ModelOutput(dict):
    """Outputs by their Hugging Face names; read them as attributes or keys."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"this output has no {name!r}; it has {', '.join(self)}") from None


def load(path: str | Path, backend: str = "auto", dtype: str = "float32", device: str | None = None,
         mlm_mode: str = "auto", copy_weights: bool = False, adapter: str | Path | None = None) -> Model:
    """Load a checkpoint folder (config.json, model.safetensors, tokenizer.json or vocab.txt).

    The weights file is memory-mapped (no copy) unless ``copy_weights=True``. A file replaced
    (renamed over) while the model lives is harmless; one changed in place is detected before
    each host-side computation and reported as a CheckpointError, since reading a truncated map
    would crash the process (SIGBUS). ``copy_weights=True`` makes the model independent of it.
    ``adapter``: a PEFT LoRA adapter folder, merged into the weights at load (every backend runs it).
    """
    if mlm_mode not in MLM_MODES:
        raise InputError(f"mlm_mode={mlm_mode!r}; choose one of {', '.join(MLM_MODES)}")
    ckpt = load_checkpoint(path, copy=copy_weights, adapter=adapter)
    return Model(ckpt, get_backend(backend, dtype, device), mlm_mode)


class Model:
    def __init__(self, ckpt: Checkpoint, backend, mlm_mode: str = "auto"):
        self.checkpoint = ckpt
        self.config = ckpt.config
        self.backend = backend
        self.mlm_mode = mlm_mode
        self._compiled: dict[tuple, tuple[tuple[str, ...], object]] = {}
        # Guards the caches of compiled executables: threads that meet a new output set at once
        # compile it once (a second compile would upload the weights again), then share it.
        self._compile_lock = threading.Lock()
        self._host_heads = HostHeads(ckpt)
        self._losses: dict[tuple, NumpyExecutable] = {}  # (labels given, problem type) -> host loss nodes
        self._grads: dict[tuple, object] = {}  # (labels given, problem type) -> the backend's gradient executable
        self._tokenizer: Tokenizer | None = None
        # Read once here, so model.embed, cbert embed and cbert info cannot disagree on them.
        self.embedding_defaults = EmbeddingDefaults.of_folder(ckpt.path)

    def __repr__(self) -> str:
        c = self.config
        return (f"cbert.Model({self.checkpoint.architecture}, {c.num_hidden_layers} layers x {c.hidden_size}, "
                f"vocab {c.vocab_size}, backend={self.backend.describe()}, dtype={self.backend.dtype})")

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_folder(
                self.checkpoint.path, self.config.max_seq_len, self.config.pad_token_id)
            self._tokenizer.type_vocab_size = self.config.type_vocab_size
        return self._tokenizer

    def stats(self) -> dict:
        """What the backend did in the most recent forward (submits, dispatches, ...)."""
        get = getattr(self.backend, "stats", None)
        if get is None:
            raise RuntimeError(f"backend={self.backend.name!r} keeps no execution statistics")
        return get()

    # -- execution -------------------------------------------------------------------------

    def _executable(self, hidden: bool, attentions: bool, mlm_here: bool, only: tuple[str, ...] | None = None):
        """(inputs it reads, the backend's compiled cut of the checkpoint's graph) for one output set;
        ``only``: just these Hugging Face outputs (and the last hidden state)."""
        key = (hidden, attentions, mlm_here, only)
        found = self._compiled.get(key)
        if found is not None:
            return found
        with self._compile_lock:
            if key not in self._compiled:
                graph = self.checkpoint.graph
                if attentions:
                    graph = expose_attentions(graph)
                wanted = forward_outputs(graph, self.checkpoint.heads, hidden, attentions, mlm_here)
                if only is not None:
                    wanted = {k: v for k, v in wanted.items() if k in only or k == "last_hidden_state"
                              or (k == "qa_logits" and {"start_logits", "end_logits"} & set(only))}
                graph = graph.select(wanted)
                self._compiled[key] = (graph.inputs, self.backend.compile(graph, self._graph_params(graph)))
            return self._compiled[key]

    def _graph_params(self, graph: Graph) -> dict[str, np.ndarray]:
        return self.checkpoint.params_for(graph)

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        """Validate and default the inputs; returns the dict the graph reads."""
        c = self.config
        ids = _as_int_array(input_ids, "input_ids")
        if ids.size == 0:
            raise InputError(f"input_ids is empty (shape {list(ids.shape)}): nothing to run")
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2:
            raise InputError(f"input_ids must be [batch, seq]; got shape {list(ids.shape)}")
        B, S = ids.shape
        if S > c.max_seq_len:
            raise InputError(f"input_ids has seq length {S}, more than the model's maximum of {c.max_seq_len} "
                             f"(max_position_embeddings = {c.max_position_embeddings})")
        _check_range(ids, 0, c.vocab_size, "input_ids", "vocab_size")
        out = {"input_ids": ids}
        for name, value, default, limit, limit_name in (
            ("attention_mask", attention_mask, np.ones, 2, None),
            ("token_type_ids", token_type_ids, np.zeros, max(c.type_vocab_size, 1), "type_vocab_size"),
        ):
            if value is None:
                out[name] = default((B, S), dtype=np.int64)
                continue
            a = _as_int_array(value, name, bools=name == "attention_mask")
            if a.ndim == 1 and B == 1:
                a = a[None]
            if name == "token_type_ids" and c.type_vocab_size == 0 and a.any():
                raise InputError(f"token_type_ids holds non-zero values, but a {c.model_type} model has no token types")
            if a.shape != ids.shape:
                raise InputError(f"{name} has shape {list(a.shape)} but input_ids has {list(ids.shape)}")
            _check_range(a, 0, limit, name, limit_name or "0/1 values")
            out[name] = a
        if position_ids is None:
            out["position_ids"] = family_of(c).position_ids(ids, c)
        else:
            p = _as_int_array(position_ids, "position_ids")
            if p.ndim == 1:
                p = p[None]
            if p.ndim != 2 or p.shape[-1] != S or p.shape[0] not in (1, B):
                raise InputError(f"position_ids has shape {list(p.shape)} but input_ids has {list(ids.shape)}")
            _check_range(p, 0, c.max_position_embeddings, "position_ids", "max_position_embeddings")
            out["position_ids"] = np.broadcast_to(p, (B, S))
        return out

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states: bool = False, output_attentions: bool = False, labels=None,
                next_sentence_label=None, start_positions=None, end_positions=None,
                outputs: tuple[str, ...] | None = None) -> ModelOutput:
        """Hugging Face's outputs for the checkpoint's class; with labels, ``.loss`` (a float) as its
        class defines it (-100 ignored; masked-LM + next-sentence for a pre-training model; a
        classifier's cross-entropy, MSE for one label, BCE for multi-label; QA's mean of start and end).

        ``outputs`` names the heads' outputs wanted (e.g. ``("last_hidden_state",)`` to embed a
        masked-LM checkpoint without its [batch, seq, vocab] logits); None: all the class gives."""
        inputs = self.check_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        heads = self.checkpoint.heads
        B, S = inputs["input_ids"].shape
        given, problem = prepare_labels(self.config, heads, B, S, dict(
            labels=labels, next_sentence_label=next_sentence_label, start_positions=start_positions,
            end_positions=end_positions))
        only = None if outputs is None else tuple(sorted(set(outputs) | _label_outputs(heads, given)))
        if only is not None:
            known = {"last_hidden_state", "start_logits", "end_logits", *heads.outputs()} - {"qa_logits"}
            unknown = sorted(set(only) - known)
            if unknown:
                raise InputError(f"outputs: {unknown[0]!r} is not an output of this {self.checkpoint.architecture}; "
                                 f"it has {', '.join(sorted(known))}")
        wants_mlm = heads.mlm and (only is None or heads.mlm_output in only)
        mlm_here = mlm_in_graph(self.mlm_mode, self.backend, B, S) if wants_mlm else True
        wanted, run = self._executable(bool(output_hidden_states), bool(output_attentions), mlm_here, only)
        if self.backend.name == "numpy" or not mlm_here:
            self._check_weights()  # host memory maps the file: a clear error, not SIGBUS
        raw = run({k: inputs[k] for k in wanted})
        if not mlm_here and wants_mlm:
            raw[heads.mlm_output] = self._host_heads(MLM_LOGITS, raw["last_hidden_state"])
        losses = self._loss(raw, given, problem) if given else {}
        split_qa_logits(raw)
        out = self._package(raw)
        out.update(losses)
        return out

    def _loss(self, raw: dict, given: dict, problem: str | None) -> dict[str, float]:
        """The loss nodes of the labels given, run by the numpy reference over the logits the backend
        returned: one definition whichever backend computed them."""
        key = (tuple(sorted(given)), problem)
        with self._compile_lock:
            if key not in self._losses:
                self._losses[key] = NumpyExecutable(loss_graph(self.checkpoint.graph, self.checkpoint.heads,
                                                               given, problem), {})
            run = self._losses[key]
        names = {v: k for k, v in self.checkpoint.heads.outputs().items()}  # graph value -> HF output name
        feed = {name: np.asarray(raw[names[name]], np.float32) for name in run.graph.inputs if name in names}
        out = run({**feed, **given})
        losses = {k: float(v) for k, v in out.items()}
        bad = [k for k, v in losses.items() if not np.isfinite(v)]
        if bad:
            raise FloatingPointError(f"the {bad[0]} is NaN or infinite (the logits overflow the loss)")
        return losses

    __call__ = forward

    def _package(self, raw: dict) -> ModelOutput:
        out = ModelOutput()
        order = ["last_hidden_state", "pooler_output", "logits", "prediction_logits", "seq_relationship_logits",
                 "start_logits", "end_logits"]
        for k in order:
            if k in raw:
                out[k] = _checked(raw[k], k, self.backend.name)
        for group in ("hidden_states", "attentions"):
            keys = sorted((k for k in raw if k.startswith(group + ".")), key=lambda k: int(k.split(".")[1]))
            if keys:
                out[group] = tuple(_checked(raw[k], k, self.backend.name) for k in keys)
        return out

    def pooler_output(self, hidden) -> np.ndarray:
        """tanh(W h[:, 0] + b) over a last_hidden_state [batch, seq, hidden]."""
        if not self.checkpoint.loaded.pooler:
            pooler = family_of(self.config).pooler
            raise CheckpointError(f"{self.checkpoint.weights_file}: this checkpoint has no pooler"
                                  + (f" ({pooler}.*)" if pooler else ""))
        return self._host_head(POOLER_OUTPUT, hidden, "pooler")

    def mlm_logits(self, hidden) -> np.ndarray:
        """The masked-LM head over a last_hidden_state: [batch, seq, vocab]."""
        if not self.checkpoint.loaded.mlm:
            mlm = family_of(self.config).mlm
            raise CheckpointError(f"{self.checkpoint.weights_file}: this checkpoint has no masked-LM head"
                                  + (f" ({mlm.dense}.*)" if mlm else ""))
        return self._host_head(MLM_LOGITS, hidden, "masked-LM head")

    def _host_head(self, value: str, hidden, head: str) -> np.ndarray:
        self._check_weights()
        out = self._host_heads(value, _as_hidden(hidden, self.config))
        # Finite but huge values (1e30) overflow inside the head: the caller's values, not a backend fault.
        if not np.isfinite(out).all():
            raise InputError(f"hidden: the {head} overflows to NaN or infinity on these values "
                             f"(largest |value| {float(np.abs(np.asarray(hidden, np.float32)).max()):.3g})")
        return out

    def _check_weights(self) -> None:
        if self.checkpoint.weights is not None:
            self.checkpoint.weights.check_unchanged()

    # -- tasks -----------------------------------------------------------------------------

    def embed(self, texts, pooling: str | None = None, normalize: bool | None = None, batch_size: int = 32,
              truncation: bool = False, window_aggregation: str = "mean", stride: int | None = None,
              progress: bool = False) -> np.ndarray:
        """One vector per text: [n, hidden] float32. ``pooling`` (cls, mean, max) and ``normalize``
        default to what the checkpoint's sentence-transformers modules.json declares, else mean pooling
        without normalization (``model.embedding_defaults``). A text longer than the model's positions is
        split into windows overlapping by ``stride`` tokens (default: 128, at most half a window) whose
        vectors are combined by ``window_aggregation`` (mean, max, first); ``truncation=True`` cuts it instead."""
        return tasks.embed(self, texts, pooling, normalize, batch_size, truncation, window_aggregation, stride,
                           progress)

    def classify(self, texts, top_k: int | None = 1, aggregation: str = "mean", stride: int | None = None,
                 batch_size: int = 32, function_to_apply: str | None = None):
        """Labels and scores as Hugging Face's text-classification pipeline gives them; a long note's
        window probabilities are combined by ``aggregation``: mean, max, or vote (Huang's readmission score)."""
        return tasks.classify(self, texts, top_k, aggregation, stride, batch_size, function_to_apply)

    def ner(self, texts, stride: int | None = None, batch_size: int = 32):
        """Entity spans with character offsets (Hugging Face's aggregation_strategy="simple")."""
        return tasks.ner(self, texts, stride, batch_size)

    def qa(self, question: str, context: str, top_k: int = 1, max_answer_len: int = 15,
           stride: int | None = None, batch_size: int = 32):
        """The best answer span in ``context``: {score, start, end, answer}."""
        return tasks.qa(self, question, context, top_k, max_answer_len, stride, batch_size)

    def fill_mask(self, text: str, top_k: int = 5) -> list:
        """Hugging Face fill-mask pipeline results: for each [MASK], the top_k candidates."""
        return tasks.fill_mask(self, text, top_k)

    # -- explanations (cbert.explain) ------------------------------------------------------------

    def explain(self, text: str, target=None, task: str | None = None, method: str = "integrated-gradients",
                **kwargs):
        """Per-token attributions of this model's prediction on ``text`` (``cbert.explain.Explanation``):
        ``method`` one of ``cbert.explain.METHODS``; ``task`` classify, fill-mask, ner or qa (None: the
        checkpoint's); ``target`` a label, masked-position token, entity text or answer text (None: the
        prediction). ``kwargs``: question, aggregation, stride, batch_size, steps, baseline, seed, shap_evals,
        lime_samples."""
        from .explain import explain

        return explain(self, text, target, task, method, **kwargs)

    def predict_proba(self, texts, aggregation: str = "mean", stride: int | None = None,
                      batch_size: int = 32) -> np.ndarray:
        """[n texts, labels]: a classifier's label probabilities (long notes windowed as ``classify``),
        the function shap, lime and scikit-learn expect."""
        return tasks.classify_probabilities(self, texts, aggregation, stride, batch_size)

    def counterfactuals(self, text: str, target=None, max_edits: int = 2, mlm=None, **kwargs) -> list[dict]:
        """The smallest word substitutions (proposed by this model's masked-LM head, or by ``mlm``, a companion
        masked-LM checkpoint) that change the predicted label (to ``target`` when given)."""
        from .explain.counterfactuals import counterfactuals

        return counterfactuals(self, text, target, max_edits, mlm, **kwargs)

    # -- gradients (the learning issue: numpy and MLX gradient executors) ---------------------

    def loss_and_grads(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                       **labels) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, d loss / d every parameter) in eval mode (no dropout), the loss as ``forward(labels=...)``
        gives it; the gradients keyed by the tensor names of the checkpoint's model.safetensors (a tied
        masked-LM decoder's gradient is part of the word embeddings')."""
        compile_grad = getattr(self.backend, "compile_grad", None)
        if compile_grad is None:
            raise InputError(f"backend={self.backend.name!r} computes no gradients; use backend='numpy' or 'mlx'")
        inputs = self.check_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        heads = self.checkpoint.heads
        B, S = inputs["input_ids"].shape
        given, problem = prepare_labels(self.config, heads, B, S, labels)
        key = (tuple(sorted(given)), problem)
        if key not in self._grads:
            full = with_losses(self.checkpoint.graph, heads, frozenset(given), problem)
            graph = full.select({k: v for k, v in full.outputs.items() if k in ("loss", "mlm_loss", "nsp_loss")})
            self._grads[key] = (graph.inputs, compile_grad(graph, self._graph_params(graph)))
        reads, run = self._grads[key]
        self._check_weights()
        outputs, grads = run({**{k: inputs[k] for k in reads if k in inputs}, **given})
        names = self.checkpoint.tensor_names
        return float(outputs["loss"]), {names[k]: run.to_host(g) for k, g in grads.items()}

    # -- loss from text (lucid's get_loss_from_text; the data side of the learning issue) ----------

    def loss_from_text(self, text_a: str, text_b: str | None = None, is_next: bool = True,
                       mask_prob: float = 0.15, seed: int = 0) -> dict:
        """The pre-training loss of a text or a pair, as lucid's ``get_loss_from_text``: ``mask_prob`` of
        the non-special tokens masked by :func:`cbert.train.mask_tokens` (80% mask token, 10% random,
        10% kept; at least one, seeded by ``seed``) and the masked-LM loss over them; for a pair on a
        checkpoint with a next-sentence head (BertForPreTraining) also the NSP loss of ``is_next``
        (label 0: text_b follows text_a, 1: it does not), and ``loss`` is their sum, as the class computes it.

        Returns ``{"loss", "mlm_loss", "nsp_loss", "masked": n}``. ``nsp_loss`` is None for a masked-LM-only
        checkpoint (BertForMaskedLM, ...) or a single text, and ``loss`` is then ``mlm_loss``."""
        from .tasks.arguments import flag, string
        from .train.masking import mask_tokens

        if not self.checkpoint.heads.mlm:
            raise CheckpointError(f"{self.checkpoint.weights_file}: loss_from_text needs a masked-LM head; this "
                                  f"checkpoint is a {self.checkpoint.architecture}")
        text_a = string(text_a, "text_a")
        text_b = None if text_b is None else string(text_b, "text_b")
        flag(is_next, "is_next")
        enc = self.tokenizer(text_a, text_pair=text_b)
        ids, labels = mask_tokens(enc["input_ids"], self.tokenizer, mask_prob, seed=seed)
        nsp = text_b is not None and self.checkpoint.heads.nsp
        out = self.forward(ids, enc["attention_mask"], enc.get("token_type_ids"), labels=labels,
                           next_sentence_label=[0 if is_next else 1] if nsp else None)
        return {"loss": out["loss"], "mlm_loss": out["mlm_loss"], "nsp_loss": out["nsp_loss"] if nsp else None,
                "masked": int((labels != -100).sum())}


def _label_outputs(heads, given: dict) -> set[str]:
    """The outputs a loss reads: computed whatever ``outputs`` says, when labels are given."""
    if not given:
        return set()
    return {k for k in heads.outputs() if k != "pooler_output"} - {"qa_logits"} | (
        {"start_logits", "end_logits"} if heads.qa else set())


def _as_int_array(x, name: str, bools: bool = False) -> np.ndarray:
    """``x`` as int64; integers only (and booleans where ``bools``, as an attention mask may be)."""
    try:
        a = np.asarray(x)
    except ValueError:  # nested lists of different lengths
        raise InputError(f"{name} is ragged (rows of different lengths); pad its rows to one length "
                         "(and mark the padding in attention_mask)") from None
    if a.dtype == np.bool_ and not bools:
        raise InputError(f"{name} must hold integers; got booleans")
    if a.size == 0:  # [] and [[]] come as float64; the caller says empty, not "got dtype float64"
        return np.zeros(a.shape, np.int64)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise InputError(f"{name} must hold integers; got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.max() > np.iinfo(np.int64).max:
        raise InputError(f"{name} holds {a.max()}, beyond any token, type or position id")
    return a.astype(np.int64, copy=False)


def _check_range(a: np.ndarray, lo: int, hi: int, name: str, what: str) -> None:
    bad = np.argwhere((a < lo) | (a >= hi))
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        raise InputError(f"{name}{list(where)} = {int(a[where])} is outside [{lo}, {hi}) ({what})")


def _as_hidden(hidden, cfg) -> np.ndarray:
    try:
        h = np.asarray(hidden, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"hidden must be a float array [batch, seq, {cfg.hidden_size}]; got a "
                         f"{type(hidden).__name__} that numpy cannot read as floats") from None
    if h.ndim == 2:
        h = h[None]
    if h.ndim != 3 or h.shape[-1] != cfg.hidden_size:
        raise InputError(f"hidden must be [batch, seq, {cfg.hidden_size}]; got shape {list(h.shape)}")
    if not np.isfinite(h).all():
        raise InputError("hidden holds NaN or infinite values")
    return h


def _checked(a, name: str, backend: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise FloatingPointError(f"backend={backend!r} produced NaN or infinite values in {name}")
    return a
