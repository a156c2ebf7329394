"""WordPiece tokenization through Hugging Face ``tokenizers``, returning padded numpy batches.

Casing follows ``tokenizer_config.json`` when present. When it is absent (as in
Bio_ClinicalBERT's repository) the vocabulary decides: a cased vocabulary is not
lowercased, and we say so, because Hugging Face's AutoTokenizer would silently lowercase
it (clinicalBERT issue #26; ../shared/notes/CLINICAL.md).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from .errors import CheckpointError, InputError, warn

# A vocabulary with at least this many tokens that contain capitals was trained cased
# (bert-base-cased's has ~11k such tokens; bert-base-uncased's has none).
_CASED_MIN_CAPITALS = 200


def vocab_is_cased(vocab_file: Path) -> tuple[bool, int]:
    words = vocab_file.read_text(encoding="utf-8").splitlines()
    capitals = sum(1 for w in words if not (w.startswith("[") and w.endswith("]")) and w != w.lower())
    return capitals >= _CASED_MIN_CAPITALS, capitals


def read_lowercase(folder: Path) -> tuple[bool | None, str]:
    """``do_lower_case`` from tokenizer_config.json, or None when the file does not say."""
    f = folder / "tokenizer_config.json"
    if f.is_file():
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{f}: not valid JSON ({e})") from None
        if isinstance(d, dict) and "do_lower_case" in d:
            return bool(d["do_lower_case"]), f"do_lower_case={d['do_lower_case']} in {f.name}"
    return None, ""


class Tokenizer:
    """Callable like a Hugging Face tokenizer: ``tok(texts, text_pair=None)`` -> dict of int64 arrays."""

    def __init__(self, tokenizer: HFTokenizer, max_length: int, casing: str, pad_id: int = 0):
        # Thread safety: this object is only read after construction. Truncation is a setting
        # of a ``tokenizers`` object, so it lives on a separate copy per length limit, made once
        # under a lock, instead of being switched on and off around each call (which let one
        # thread's call truncate or not truncate another's).
        self._tok = tokenizer
        self._truncating: dict[int, HFTokenizer] = {}
        self._truncating_lock = threading.Lock()
        # A model without token types (DistilBERT) takes no token_type_ids, as its HF tokenizer gives
        # none; a model with one type (RoBERTa) takes zeros whatever the pair template says.
        self.type_vocab_size = 2
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_length = max_length
        self.casing = casing
        # BERT's specials, or RoBERTa's where the vocabulary has those instead.
        def special(*names: str) -> tuple[str | None, int | None]:
            for n in names:
                if tokenizer.token_to_id(n) is not None:
                    return n, tokenizer.token_to_id(n)
            return None, None

        pad = special("[PAD]", "<pad>")[1]
        self.pad_token_id = pad if pad is not None else pad_id
        self.mask_token, self.mask_token_id = special("[MASK]", "<mask>")
        self.cls_token_id = special("[CLS]", "<s>")[1]
        self.unk_token_id = special("[UNK]", "<unk>")[1]

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int, pad_id: int = 0) -> Tokenizer:
        folder = Path(folder)
        lowercase, said = read_lowercase(folder)
        tj, vocab = folder / "tokenizer.json", folder / "vocab.txt"
        if tj.is_file():
            try:
                tok = HFTokenizer.from_file(str(tj))
            except Exception as e:
                raise CheckpointError(f"{tj}: cannot be read by tokenizers ({e})") from None
            norm = json.loads(tj.read_text(encoding="utf-8")).get("normalizer")
            casing = ("uncased" if normalizer_lowercases(norm) else "cased") + f" (normalizer in {tj.name})"
            return cls(tok, max_length, casing, pad_id)
        if vocab.is_file():
            if lowercase is None:
                cased, capitals = vocab_is_cased(vocab)
                lowercase = not cased
                said = (f"no tokenizer_config.json; {vocab.name} has {capitals} tokens with capitals, "
                        f"so it is treated as {'cased' if cased else 'uncased'}")
                warn(f"{folder}: {said}")
            tok = BertWordPieceTokenizer(str(vocab), lowercase=lowercase)._tokenizer
            return cls(tok, max_length, ("uncased" if lowercase else "cased") + f" ({said})", pad_id)
        merges = folder / "merges.txt"
        if (folder / "vocab.json").is_file() and merges.is_file():
            # RoBERTa's byte-level BPE, with its <s> ... </s></s> ... </s> template, as RobertaTokenizerFast builds it.
            from tokenizers import processors
            from tokenizers.implementations import ByteLevelBPETokenizer

            tok = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(merges), add_prefix_space=False,
                                        trim_offsets=True)._tokenizer
            ids = {t: tok.token_to_id(t) for t in ("<s>", "</s>")}
            if None in ids.values():
                raise CheckpointError(f"{folder / 'vocab.json'}: a byte-level BPE vocabulary without <s> and </s>")
            tok.post_processor = processors.RobertaProcessing(("</s>", ids["</s>"]), ("<s>", ids["<s>"]),
                                                              trim_offsets=True, add_prefix_space=False)
            return cls(tok, max_length, "cased (byte-level BPE from vocab.json + merges.txt)", pad_id)
        raise CheckpointError(f"{folder}: no tokenizer.json, vocab.txt (WordPiece) or vocab.json + merges.txt "
                              "(byte-level BPE)")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self._tok.id_to_token(int(i)) for i in ids]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._tok.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def encode(self, texts, text_pair=None, truncation: bool = False, max_length: int | None = None,
               check_length: bool = True):
        """The raw ``tokenizers`` encodings (ids, offsets, special-token masks), length-checked
        unless the caller windows long texts itself (``check_length=False``)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise InputError("texts is empty: nothing to tokenize")
        for i, t in enumerate(texts):
            _check_text(t, f"texts[{i}]")
        limit = max_length or self.max_length
        if text_pair is not None:
            if isinstance(text_pair, str):
                text_pair = [text_pair]
            text_pair = list(text_pair)
            for i, t in enumerate(text_pair):
                _check_text(t, f"text_pair[{i}]")
            if len(text_pair) != len(texts):
                raise InputError(f"text_pair has {len(text_pair)} texts but texts has {len(texts)}")
            batch = list(zip(texts, text_pair))
        else:
            batch = texts
        encs = (self._truncating_at(limit) if truncation else self._tok).encode_batch(batch)
        for i, e in enumerate(encs if check_length else ()):
            if len(e.ids) > limit:
                raise InputError(
                    f"texts[{i}] is {len(e.ids)} tokens long, more than the model's maximum of {limit} "
                    "(max_position_embeddings); pass truncation=True to cut it (or split the note into windows)")
        return encs

    def _truncating_at(self, limit: int) -> HFTokenizer:
        """A copy of the tokenizer that truncates at ``limit`` tokens, made once per limit."""
        with self._truncating_lock:
            if limit not in self._truncating:
                tok = HFTokenizer.from_str(self._tok.to_str())
                tok.enable_truncation(limit)
                self._truncating[limit] = tok
            return self._truncating[limit]

    def __call__(self, texts, text_pair=None, truncation: bool = False, max_length: int | None = None):
        encs = self.encode(texts, text_pair, truncation, max_length)
        return self.pad(encs)

    def pad(self, encs) -> dict[str, np.ndarray]:
        n, s = len(encs), max(len(e.ids) for e in encs)
        ids = np.full((n, s), self.pad_token_id, dtype=np.int64)
        types = np.zeros((n, s), dtype=np.int64)
        mask = np.zeros((n, s), dtype=np.int64)
        for i, e in enumerate(encs):
            k = len(e.ids)
            ids[i, :k] = e.ids
            types[i, :k] = e.type_ids
            mask[i, :k] = 1
        return self.model_inputs({"input_ids": ids, "token_type_ids": types, "attention_mask": mask})

    def model_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Token types as the model takes them: none, zeros, or as encoded."""
        if self.type_vocab_size == 0:
            del batch["token_type_ids"]
        elif self.type_vocab_size == 1:
            batch["token_type_ids"][:] = 0
        return batch


def _check_text(text, name: str) -> None:
    if not isinstance(text, str):
        raise InputError(f"{name} is a {type(text).__name__}, expected str")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{name} holds a lone surrogate {text[e.start]!r} at character {e.start}, which is "
                         "not valid Unicode text") from None


def normalizer_lowercases(norm) -> bool:
    """Whether a tokenizer.json normalizer lowercases: BertNormalizer(lowercase), Lowercase,
    or either inside a Sequence."""
    if not isinstance(norm, dict):
        return False
    kind = norm.get("type")
    if kind == "Lowercase":
        return True
    if kind == "Sequence":
        return any(normalizer_lowercases(n) for n in norm.get("normalizers") or ())
    return bool(norm.get("lowercase"))
