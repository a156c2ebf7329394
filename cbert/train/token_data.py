"""token-cls data: CoNLL-style words and tags, or a text with labeled character spans, as word-level
tags whose label sits on each word's first piece (-100 on the rest, as transformers' run_ner does)."""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from ..errors import InputError, shown
from ..ir import IGNORE_INDEX
from ..tasks.windows import centrality
from .data import TaskData, check_unicode, class_id, jsonl_objects, window_or_fail
from .metrics import entity_scores

FORMATS = '{"tokens": [...], "tags": [...]} or {"text": ..., "spans": [[start, end, label], ...]}'


def read_token_cls(path: Path, tokenizer, *, label2id, max_length: int, stride, aggregation: str = "mean",
                   whole_word: bool = False) -> TokenClsData:
    rows = []  # (line, text, word character spans or None: the tokenizer's words, tags or the spans)
    for number, row in jsonl_objects(path, FORMATS):
        where = f"{path}:{number}"
        if "tokens" in row or "tags" in row:
            rows.append((number, *_words_and_tags(where, row)))
        elif "text" in row or "spans" in row:
            rows.append((number, *_text_and_spans(where, row)))
        else:
            raise InputError(f"{where}: expected {FORMATS}; the fields are {', '.join(row) or 'none'}")
    encs = tokenizer.encode([r[1] for r in rows], check_length=False) if rows else []
    examples = []  # per row: (each word's first content token or -1, the word's tag)
    for (number, text, words, labels), enc in zip(rows, encs):
        content = [k for k, m in enumerate(enc.special_tokens_mask) if not m]
        if words is None:  # the spans format: the tokenizer's own words, tagged by the spans they overlap
            words, labels = _tag_words(f"{path}:{number}", text, enc, content, labels)
        starts = [s for s, _ in words]
        first = [-1] * len(words)
        for c, k in enumerate(content):
            w = bisect.bisect_right(starts, enc.offsets[k][0]) - 1
            if w >= 0 and enc.offsets[k][0] < words[w][1] and first[w] < 0:
                first[w] = c
        examples.append((number, first, labels))
    if label2id is None:  # sorted, as run_ner sorts them; a spans file's labels give B-, I- and O each
        seen = {t for _, _, tags in examples for t in tags}
        seen |= {f"{bi}-{sp[2]}" for r in rows if r[2] is None for sp in r[3] for bi in "BI"}
        seen |= {"O"} if any(r[2] is None for r in rows) else set()
        ints = {t for t in seen if isinstance(t, int)}
        if ints and len(ints) != len(seen):
            raise InputError(f"{path}: tags mix integer class ids with tag names; use one kind")
        label2id = ({str(i): i for i in range(max(ints) + 1)} if ints
                    else {t: i for i, t in enumerate(sorted(seen))})
    names = [str(n) for n in sorted(label2id, key=label2id.get)]
    features, owner, feature_labels, word_tags = [], [], [], []
    for n, ((number, first, tags), enc) in enumerate(zip(examples, encs)):
        ids = [class_id(f"{path}:{number}", t, label2id) for t in tags]
        by_content = np.full(sum(1 for m in enc.special_tokens_mask if not m), IGNORE_INDEX, np.int64)
        for c, i in zip(first, ids):
            if c >= 0:
                by_content[c] = i
        for w in window_or_fail(f"{path}:{number}", enc, max_length, stride):
            features.append(w)
            owner.append(n)
            feature_labels.append(np.array([by_content[p] if p >= 0 else IGNORE_INDEX for p in w.positions]))
        word_tags.append((first, [names[i] for i in ids]))
    return TokenClsData(tokenizer, features, owner, feature_labels, word_tags, names)


def _words_and_tags(where: str, row: dict):
    tokens, tags = row.get("tokens"), row.get("tags")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise InputError(f"{where}: \"tokens\" is {shown(tokens)}; expected a list of strings (the words)")
    if not isinstance(tags, list) or not all(isinstance(t, (str, int)) and not isinstance(t, bool) for t in tags):
        raise InputError(f"{where}: \"tags\" is {shown(tags)}; expected a list of tags (strings such as \"B-PER\", "
                         "or integer class ids)")
    if len(tokens) != len(tags):
        raise InputError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; expected one tag per token")
    if not tokens:
        raise InputError(f"{where}: no tokens")
    words, pos = [], 0
    for t in tokens:  # the words joined by spaces: each word's characters in the text
        check_unicode(where, "tokens", t)
        words.append((pos, pos + len(t)))
        pos += len(t) + 1
    return " ".join(tokens), words, list(tags)


def _text_and_spans(where: str, row: dict):
    text, spans = row.get("text"), row.get("spans")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: \"text\" is {shown(text)}; expected a non-empty string")
    check_unicode(where, "text", text)
    if not isinstance(spans, list):
        raise InputError(f"{where}: \"spans\" is {shown(spans)}; expected a list of [start, end, label]")
    checked = []
    for s in spans:
        if not (isinstance(s, list) and len(s) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in s[:2]) and isinstance(s[2], str) and s[2]):
            raise InputError(f"{where}: span {shown(s)}; expected [start, end, label] (character offsets, a label)")
        if not 0 <= s[0] < s[1] <= len(text):
            raise InputError(f"{where}: span {s} lies outside the text's {len(text)} characters (or is empty)")
        checked.append(tuple(s))
    checked.sort()
    for a, b in zip(checked, checked[1:]):
        if b[0] < a[1]:
            raise InputError(f"{where}: spans {list(a)} and {list(b)} overlap; a token has one tag")
    return text, None, checked


def _tag_words(where: str, text: str, enc, content: list[int], spans) -> tuple[list, list[str]]:
    """The tokenizer's words of ``text`` (character spans) and their BIO tags from the labeled spans."""
    words: dict[int, list[int]] = {}
    for k in content:
        w = enc.word_ids[k]
        s, e = enc.offsets[k]
        if w in words:
            words[w][1] = max(words[w][1], e)
        else:
            words[w] = [s, e]
    spans_of_words = [words[w] for w in sorted(words)]
    tags, used = [], set()
    for s, e in spans_of_words:
        hit = next((sp for sp in spans if s < sp[1] and sp[0] < e), None)
        if hit is None:
            tags.append("O")
        else:
            tags.append(("I-" if hit in used else "B-") + hit[2])
            used.add(hit)
    for sp in spans:
        if sp not in used:
            raise InputError(f"{where}: span {list(sp)} ({text[sp[0]:sp[1]]!r}) covers no token of the text")
    return [tuple(w) for w in spans_of_words], tags


class TokenClsData(TaskData):
    task = "token-cls"

    def __init__(self, tokenizer, features, owner, feature_labels, word_tags, label_names):
        super().__init__(tokenizer, features)
        self.owner, self.feature_labels, self.word_tags = owner, feature_labels, word_tags
        self.label_names = label_names

    def collate(self, indices, seed: int) -> dict[str, np.ndarray]:
        batch = self.inputs(indices)
        labels = np.full(batch["input_ids"].shape, IGNORE_INDEX, np.int64)
        for row, i in enumerate(indices):
            labels[row, :len(self.feature_labels[i])] = self.feature_labels[i]
        batch["labels"] = labels
        return batch

    def evaluate(self, run, batch_size: int) -> dict:
        """Entity-level precision, recall and F1 (seqeval) over words: each word tagged by its first
        piece's prediction in the window where that piece sits most centrally (as ``model.ner`` reads
        a long note); a word the tokenizer gave no piece is predicted "O"."""
        best = [np.full(len(first), -1) for first, _ in self.word_tags]
        pred = [np.zeros(len(first), np.int64) for first, _ in self.word_tags]
        total, counted = 0.0, 0
        for indices in self.eval_batches(batch_size):
            batch = self.collate(indices, 0)
            out = run(batch)
            n = int((batch["labels"] != IGNORE_INDEX).sum())
            total, counted = total + float(out["loss"]) * n, counted + n
            for row, i in enumerate(indices):
                window, (first, _) = self.features[i], self.word_tags[self.owner[i]]
                central = dict(zip([p for p in window.positions if p >= 0], centrality(window)))
                where = {p: k for k, p in enumerate(window.positions) if p >= 0}
                for w, c in enumerate(first):
                    if c in where and central[c] > best[self.owner[i]][w]:
                        best[self.owner[i]][w] = central[c]
                        pred[self.owner[i]][w] = int(out["logits"][row, where[c]].argmax())
        o = self.label_names.index("O") if "O" in self.label_names else None
        predicted = [[self.label_names[int(p)] if b >= 0 or o is None else "O" for p, b in zip(ps, bs)]
                     for ps, bs in zip(pred, best)]
        scores = entity_scores([tags for _, tags in self.word_tags], predicted)
        return {"loss": total / counted if counted else 0.0, **scores, "main": "f1"}
