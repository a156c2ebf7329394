"""One prediction to explain: the text, its tokens and words (with character offsets in the whole
note), the windows the task splits it into, and the resolved target.

Every method works through a subject: forward-only methods score variants of the note (some of its
words replaced by the mask token) with :meth:`Subject.scores`, which runs each window the variant
changes and aggregates the windows as the task does; per-window methods (gradients, attention)
combine their window attributions with the target's window weights (:meth:`Subject.combine`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import CheckpointError, InputError
from ..tasks.arguments import one_of, positive_int, stride_or_none, string
from ..tasks.classify import AGGREGATIONS, window_probabilities
from ..tasks.run import require, softmax
from ..tasks.windows import Window, centrality, split
from .targets import ClassifyTarget, FillMaskTarget, NerTarget, QaTarget, Target

TASKS = ("classify", "fill-mask", "ner", "qa")
# task -> the head it needs, in the order a checkpoint's own task is looked for
TASK_HEADS = {"classify": "seq_cls", "ner": "token_cls", "qa": "qa", "fill-mask": "mlm"}


def default_task(model) -> str:
    """The task of the checkpoint's class: its classifier, token classifier, QA or masked-LM head."""
    for task, kind in TASK_HEADS.items():
        if getattr(model.checkpoint.heads, kind):
            return task
    raise CheckpointError(f"{model.checkpoint.weights_file}: a {model.checkpoint.architecture} has no head to "
                          "explain (a sequence or token classifier, question answering or masked-LM head)")


@dataclass
class Subject:
    model: object
    task: str
    text: str  # what the offsets point into (QA: the context)
    question: str | None
    token_ids: np.ndarray  # [n] the explained tokens' ids
    encoding_index: np.ndarray  # [n] each token's index in the whole text's encoding (special tokens included)
    tokens: list[str]
    offsets: list[tuple[int, int]]
    words: np.ndarray  # [n] each token's word index
    fixed: np.ndarray  # [n] bool: never replaced (fill-mask's masked position)
    windows: list[Window]  # every window of the note; the target says which make the prediction
    target: Target
    probability: float  # the target's probability for the whole note
    stride: int | None = None
    batch_size: int = 32
    progress: bool = False
    cache: dict = field(default_factory=dict)  # per-window results methods share (attentions)

    @property
    def replacement_id(self) -> int:
        """The token that stands in for a removed word: the mask token, else [UNK], else padding."""
        tok = self.model.tokenizer
        for i in (tok.mask_token_id, tok.unk_token_id, tok.pad_token_id):
            if i is not None:
                return int(i)
        raise InputError("the tokenizer has no mask, unknown or padding token to replace words with")

    def word_spans(self) -> list[tuple[int, int, int, int]]:
        """Per word: (first token, end token, start char, end char)."""
        spans = []
        for w in range(int(self.words.max()) + 1 if len(self.words) else 0):
            idx = np.flatnonzero(self.words == w)
            spans.append((int(idx[0]), int(idx[-1]) + 1, self.offsets[idx[0]][0], self.offsets[idx[-1]][1]))
        return spans

    def window_batch(self, w: int, masked: np.ndarray | None = None, ids: np.ndarray | None = None) -> dict:
        """Model inputs for window ``w``: one row, or one row per row of ``masked`` ([rows, n tokens] bool:
        tokens replaced by the mask token), or the given ``ids`` [rows, seq]."""
        win = self.windows[w]
        pos = np.asarray(win.positions)
        if ids is None:
            base = np.asarray(win.ids, np.int64)
            ids = base[None].copy() if masked is None else np.repeat(base[None], len(masked), 0)
            if masked is not None:
                rows = np.flatnonzero(pos >= 0)
                hit = masked[:, pos[rows]]
                ids[:, rows] = np.where(hit, self.replacement_id, ids[:, rows])
        n = len(ids)
        batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "token_type_ids": np.repeat(np.asarray(win.type_ids, np.int64)[None], n, 0)}
        return self.model.tokenizer.model_inputs(batch)

    def scores(self, masked: np.ndarray) -> np.ndarray:
        """[variants] the target's note probability with the tokens of each row of ``masked`` replaced."""
        masked = np.asarray(masked, bool)
        per_window = np.empty((len(self.target.windows), len(masked)))
        total = sum(len(np.unique(masked[:, self._positions(w)], axis=0)) for w in self.target.windows)
        done, show = 0, self.progress and total > self.batch_size  # a bar only for more than one batch
        for k, w in enumerate(self.target.windows):
            # Only the variants that differ inside this window need a forward of it.
            unique, back = np.unique(masked[:, self._positions(w)], axis=0, return_inverse=True)
            full = np.zeros((len(unique), len(self.tokens)), bool)
            full[:, self._positions(w)] = unique
            probs = np.empty(len(unique))
            for s in range(0, len(unique), self.batch_size):
                probs[s:s + self.batch_size] = self.target.probabilities(
                    self.model, self.window_batch(w, full[s:s + self.batch_size]), w)
                done += min(self.batch_size, len(unique) - s)
                if show:
                    print(f"\r{done}/{total} forwards", end="", file=sys.stderr, flush=True)
            per_window[k] = probs[back.reshape(-1)]
        if show:
            print(file=sys.stderr)
        return self.target.combine(per_window)

    def _positions(self, w: int) -> np.ndarray:
        pos = np.asarray(self.windows[w].positions)
        return pos[pos >= 0]

    def weighted_windows(self) -> list[int]:
        """The windows whose attributions count (weight > 0): per-window methods run only these."""
        return [w for w, weight in zip(self.target.windows, self.target.weights) if weight > 0]

    def combine(self, per_window: dict[int, np.ndarray]) -> np.ndarray:
        """[n tokens] note attributions from {window: [window seq] attributions} of the weighted windows,
        weighted by the target's window weights."""
        out = np.zeros(len(self.tokens))
        for w, weight in zip(self.target.windows, self.target.weights):
            if weight == 0:
                continue
            pos = np.asarray(self.windows[w].positions)
            rows = np.flatnonzero(pos >= 0)
            out[pos[rows]] += weight * np.asarray(per_window[w], np.float64)[rows]
        return out

    def rebind(self, model) -> Subject:
        """This subject, with its target pinned, on another model of the same shape (sanity checks)."""
        other = replace(self, model=model, cache={})
        t = self.target
        if isinstance(t, ClassifyTarget):  # the window weights follow the other model's window probabilities
            window_probs = np.array([t.probabilities(model, other.window_batch(w), w)[0] for w in t.windows])
            other.target = ClassifyTarget(model, t.label, t.labels, t.aggregation, window_probs)
        other.probability = float(other.scores(np.zeros((1, len(self.tokens)), bool))[0])
        return other


def make_subject(model, text: str, task: str | None = None, target=None, question: str | None = None,
                 aggregation: str = "mean", stride: int | None = None, batch_size: int = 32,
                 progress: bool = False) -> Subject:
    """Tokenize ``text`` (QA: the context of ``question``), split it into the task's windows, and
    resolve ``target`` (None: the model's own prediction)."""
    task = default_task(model) if task is None else one_of(task, "task", TASKS)
    text = string(text, "text")
    stride = stride_or_none(stride)
    batch_size = positive_int(batch_size, "batch_size")
    aggregation = one_of(aggregation, "aggregation", AGGREGATIONS)
    if task == "fill-mask" and not model.checkpoint.loaded.mlm:
        raise CheckpointError(f"{model.checkpoint.weights_file}: fill-mask needs a masked-LM head; this checkpoint "
                              f"is a {model.checkpoint.architecture}")
    if task != "fill-mask":
        require(model, TASK_HEADS[task], task)
    tok = model.tokenizer
    if task == "qa":
        question = string(question, "question") if question is not None else None
        if not question or not question.strip():
            raise InputError("qa: a question is needed (question=..., --question)")
        enc = tok.encode([question], text_pair=[text], check_length=False)[0]
        content = [i for i, (s, q) in enumerate(zip(enc.special_tokens_mask, enc.sequence_ids)) if not s and q == 1]
    else:
        enc = tok.encode([text], check_length=False)[0]  # long notes are windowed below
        content = [i for i, s in enumerate(enc.special_tokens_mask) if not s]
    if not content:
        raise InputError(f"the text {'(context) ' if task == 'qa' else ''}has no tokens (empty, or only spaces and "
                         "control characters): nothing to explain")
    if task == "fill-mask" and len(enc.ids) > model.config.max_seq_len:
        raise InputError(f"the text is {len(enc.ids)} tokens long, more than the model's maximum of "
                         f"{model.config.max_seq_len}: fill-mask runs one window (as model.fill_mask does)")
    ids = np.array([enc.ids[i] for i in content], np.int64)
    words: list[int] = []  # consecutive tokens of one pre-tokenized word share a word index
    for k, i in enumerate(content):
        same = k > 0 and enc.word_ids[i] is not None and enc.word_ids[i] == enc.word_ids[content[k - 1]]
        words.append(words[-1] if same else (words[-1] + 1 if words else 0))
    windows = split(enc, model.config.max_seq_len, stride, content_sequence=1 if task == "qa" else None)
    subject = Subject(model, task, text, question, ids, np.array(content, np.int64), tok.convert_ids_to_tokens(ids),
                      [tuple(enc.offsets[i]) for i in content], np.array(words, np.int64),
                      np.zeros(len(content), bool), windows, None, 0.0, stride, batch_size, progress)
    resolve = {"classify": _classify, "ner": _ner, "qa": _qa, "fill-mask": _fill_mask}[task]
    subject.target, subject.probability = resolve(subject, target, aggregation, stride)
    return subject


def _forward_windows(subject: Subject, outputs: tuple[str, ...]) -> list[dict]:
    return [subject.model.forward(**subject.window_batch(w), outputs=outputs) for w in range(len(subject.windows))]


def _classify(subject: Subject, target, aggregation: str, stride) -> tuple[Target, float]:
    model = subject.model
    logits = np.concatenate([o.logits for o in _forward_windows(subject, ("logits",))])
    probs = window_probabilities(model, logits)  # [windows, labels]
    labels = model.config.labels(probs.shape[-1])
    note = ClassifyTarget(model, 0, labels, aggregation, probs[:, 0]).combine(probs)
    if target is None:
        label = int(np.argmax(note))
    elif isinstance(target, (int, np.integer)) and not isinstance(target, bool) and 0 <= target < len(labels):
        label = int(target)
    elif isinstance(target, str) and target in labels:
        label = labels.index(target)
    else:
        raise InputError(f"target={target!r} is not a label of this classifier; its labels: {', '.join(labels)}")
    t = ClassifyTarget(model, label, labels, aggregation, probs[:, label])
    return t, float(note[label])


def _ner(subject: Subject, target, aggregation: str, stride) -> tuple[Target, float]:
    model = subject.model
    entities = model.ner(subject.text, stride=stride)
    if not entities:
        raise InputError("the model finds no entity in the text: nothing to explain (ner explains one entity)")
    if target is None:
        entity = max(entities, key=lambda e: e["score"])
    else:
        found = [e for e in entities if isinstance(target, str) and (
            subject.text[e["start"]:e["end"]].lower() == target.lower() or e["word"].lower() == target.lower())]
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool) and 0 <= target < len(entities):
            found = [entities[int(target)]]
        if not found:
            listed = ", ".join(f"{subject.text[e['start']:e['end']]!r} ({e['entity_group']})" for e in entities)
            raise InputError(f"target={target!r} is not an entity the model finds in the text; it finds {listed}")
        entity = found[0]
    tokens = [i for i, (s, e) in enumerate(subject.offsets) if s < entity["end"] and e > entity["start"]]
    # The entity's prediction comes from the window where its first token sits most centrally (tasks/ner.py).
    best, window = -1, 0
    for w, win in enumerate(subject.windows):
        content_pos = [p for p in win.positions if p >= 0]
        if tokens[0] in content_pos and tokens[-1] in content_pos:
            c = centrality(win)[content_pos.index(tokens[0])]
            if c > best:
                best, window = c, w
    pos = list(subject.windows[window].positions)
    rows = [pos.index(t) for t in tokens]
    logits = model.forward(**subject.window_batch(window), outputs=("logits",)).logits[0]
    names = model.config.labels(logits.shape[-1])
    labels = [int(np.argmax(logits[r])) for r in rows]
    described = {"entity": entity["entity_group"], "text": subject.text[entity["start"]:entity["end"]],
                 "start": entity["start"], "end": entity["end"]}
    t = NerTarget(window, rows, labels, names, described)
    return t, float(t.probabilities(model, subject.window_batch(window), window)[0])


def _qa(subject: Subject, target, aggregation: str, stride) -> tuple[Target, float]:
    model, text = subject.model, subject.text
    if target is None:
        answer = model.qa(subject.question, text, stride=stride)
        start, end = answer["start"], answer["end"]
    else:
        start = text.find(string(target, "target"))
        if not target.strip() or start < 0:
            raise InputError(f"target={target!r} does not occur in the context; a QA target is the answer's text")
        end = start + len(target)
    tokens = [i for i, (s, e) in enumerate(subject.offsets) if s < end and e > start]
    if not tokens:
        raise InputError(f"target={text[start:end]!r} covers no token of the context")
    tok = model.tokenizer
    best = None
    for w, win in enumerate(subject.windows):
        pos = list(win.positions)
        if tokens[0] not in pos or tokens[-1] not in pos:
            continue
        allowed = np.array([p >= 0 or i == tok.cls_token_id for i, p in zip(win.ids, win.positions)])
        t = QaTarget(w, pos.index(tokens[0]), pos.index(tokens[-1]), allowed, win.ids[0] == tok.cls_token_id,
                     {"answer": text[start:end], "start": start, "end": end, "question": subject.question})
        p = float(t.probabilities(model, subject.window_batch(w), w)[0])
        if best is None or p > best[1]:
            best = (t, p)
    if best is None:
        raise InputError(f"target={text[start:end]!r} fits in no window of the context (a longer --stride helps)")
    return best


def _fill_mask(subject: Subject, target, aggregation: str, stride) -> tuple[Target, float]:
    model, tok = subject.model, subject.model.tokenizer
    where = np.flatnonzero(subject.token_ids == tok.mask_token_id)
    if len(where) != 1:
        raise InputError(f"fill-mask explains one {tok.mask_token} at a time; the text holds {len(where)}")
    subject.fixed[where] = True  # the masked position is the question, not evidence
    pos = list(subject.windows[0].positions)
    row = pos.index(int(where[0]))
    hidden = model.forward(**subject.window_batch(0), outputs=("last_hidden_state",)).last_hidden_state
    probs = softmax(model.mlm_logits(hidden[:, [row]])[0, 0].astype(np.float64))
    if target is None:
        token = int(np.argmax(probs))
    else:
        token = tok.token_to_id(string(target, "target"))
        if token is None:
            raise InputError(f"target={target!r} is not a token of the model's vocabulary (fill-mask explains one "
                             "vocabulary token at the masked position)")
    return FillMaskTarget(row, token, tok.convert_ids_to_tokens([token])[0]), float(probs[token])
