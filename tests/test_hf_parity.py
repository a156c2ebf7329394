"""The numpy reference against Hugging Face transformers, output by output."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHAPES, assert_close, hf_forward, make_inputs

import cbert

# (batch, seq as a share of max_position, padding, pair)
CASES = [
    (1, 1.0, "none", False),  # full max_position length
    (5, 0.6, "heavy", True),  # heavy padding: one row is a single real token; pair token types
    (2, 0.05, "none", True),  # very short
]


def _hf_outputs(ref):
    out = {"last_hidden_state": ref.get("last_hidden_state")}
    for k in ("pooler_output", "logits", "prediction_logits", "seq_relationship_logits"):
        if ref.get(k) is not None:
            out[k] = ref[k]
    return out


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}-{c[2]}-{'pair' if c[3] else 'single'}")
def test_numpy_matches_transformers(checkpoints, shape, case):
    folder, hf = checkpoints(shape)
    cfg = SHAPES[shape][1]
    batch, frac, padding, pair = case
    seq = max(1, int(cfg["max_position_embeddings"] * frac))
    inputs = make_inputs(cfg, batch, seq, seed=seq, padding=padding, pair=pair)
    model = cbert.load(folder, backend="numpy")
    got = model.forward(**inputs, output_hidden_states=True, output_attentions=True)
    ref = hf_forward(hf, inputs, output_hidden_states=True, output_attentions=True)
    if SHAPES[shape][0] == "BertForPreTraining":
        ref["pooler_output"] = hf_forward(hf.bert, inputs).pooler_output

    if ref.get("last_hidden_state") is None:  # *For* classes give hidden_states only
        ref["last_hidden_state"] = ref["hidden_states"][-1]
    want = {k: v for k, v in _hf_outputs(ref).items() if v is not None}
    # Hugging Face's names for the class, plus the base model's last_hidden_state and,
    # when the checkpoint has a pooler, pooler_output (a BertForPreTraining computes one).
    expected_keys = set(want) | {"hidden_states", "attentions", "last_hidden_state"}
    if SHAPES[shape][0] == "BertForPreTraining":
        expected_keys.add("pooler_output")
    assert set(got) == expected_keys
    for k, v in want.items():
        assert_close(got[k], v.numpy(), k)
    assert len(got.hidden_states) == cfg["num_hidden_layers"] + 1
    for i, (g, w) in enumerate(zip(got.hidden_states, ref.hidden_states)):
        assert_close(g, w.numpy(), f"hidden_states[{i}]")
    for i, (g, w) in enumerate(zip(got.attentions, ref.attentions)):
        assert_close(g, w.numpy(), f"attentions[{i}]")


def test_output_names_follow_the_class(checkpoints):
    for shape, names in [("odd13", {"last_hidden_state", "pooler_output"}),
                         ("head16_pretrain", {"last_hidden_state", "pooler_output", "prediction_logits",
                                              "seq_relationship_logits"}),
                         ("head32_mlm", {"last_hidden_state", "logits"})]:
        folder, _ = checkpoints(shape)
        out = cbert.load(folder, backend="numpy").forward([[2, 3, 4]])
        assert set(out) == names, shape


def test_heads_as_methods_match_forward(checkpoints):
    folder, hf = checkpoints("head16_pretrain")
    model = cbert.load(folder, backend="numpy")
    inputs = make_inputs(SHAPES["head16_pretrain"][1], 3, 11)
    out = model.forward(**inputs)
    assert_close(model.pooler_output(out.last_hidden_state), out.pooler_output, "pooler_output", 1e-6)
    assert_close(model.mlm_logits(out.last_hidden_state), out.prediction_logits, "mlm_logits", 1e-6)


def test_position_ids_are_honoured(checkpoints):
    folder, hf = checkpoints("odd13")
    inputs = make_inputs(SHAPES["odd13"][1], 2, 7, padding="none")
    pos = np.array([[3, 4, 5, 6, 7, 8, 9]] * 2)
    got = cbert.load(folder, backend="numpy").forward(**inputs, position_ids=pos)
    ref = hf_forward(hf, {**inputs, "position_ids": pos})
    assert_close(got.last_hidden_state, ref.last_hidden_state.numpy(), "last_hidden_state")
    plain = cbert.load(folder, backend="numpy").forward(**inputs)
    assert not np.allclose(plain.last_hidden_state, got.last_hidden_state)


@pytest.mark.parametrize("mode", ["in_graph", "host"])
def test_mlm_modes_match_transformers(checkpoints, mode):
    folder, hf = checkpoints("head64_untied")
    inputs = make_inputs(SHAPES["head64_untied"][1], 2, 13)
    got = cbert.load(folder, backend="numpy", mlm_mode=mode).forward(**inputs)
    ref = hf_forward(hf, inputs)
    assert_close(got.prediction_logits, ref.prediction_logits.numpy(), "prediction_logits")
