"""Every backend and dtype against the numpy reference, on every checkpoint shape."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKEND_DTYPES, HALF_COSINE, SHAPES, assert_close, make_inputs, min_cosine

import cbert

CASES = [
    # (batch, seq as a share of max_position, pair)
    (3, 0.5, True),
    (1, 1.0, False),  # full max_position length
    (4, 1.0, True),  # heavy padding: the last row is one real token
]


def _compare(name: str, got: np.ndarray, want: np.ndarray, dtype: str, mask: np.ndarray | None = None) -> None:
    if dtype == "float32":
        assert_close(got, want, name)
        return
    assert np.isfinite(got).all(), f"{name}: NaN or inf in {dtype}"
    if mask is not None and got.ndim == 3:
        got, want = got[mask.astype(bool)], want[mask.astype(bool)]
    cos = min_cosine(got, want)
    assert cos >= HALF_COSINE, f"{name}: min cosine {cos:.5f} < {HALF_COSINE} in {dtype}"


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_backend_matches_numpy(checkpoints, shape, backend, dtype):
    folder, _ = checkpoints(shape)
    ref = cbert.load(folder, backend="numpy")
    model = cbert.load(folder, backend=backend, dtype=dtype)
    cfg = SHAPES[shape][1]
    for batch, frac, pair in CASES:
        seq = max(1, int(cfg["max_position_embeddings"] * frac))
        inputs = make_inputs(cfg, batch, seq, seed=batch, pair=pair)
        want = ref.forward(**inputs, output_hidden_states=True, output_attentions=True)
        got = model.forward(**inputs, output_hidden_states=True, output_attentions=True)
        assert set(got) == set(want)
        mask = inputs["attention_mask"]
        for key in want:
            if key in ("hidden_states", "attentions"):
                for i, (g, w) in enumerate(zip(got[key], want[key])):
                    if key == "attentions":
                        # Probabilities of padded query rows carry no meaning beyond being finite.
                        _compare(f"{key}[{i}]", g.transpose(0, 2, 1, 3)[mask.astype(bool)],
                                 w.transpose(0, 2, 1, 3)[mask.astype(bool)], dtype)
                    else:
                        _compare(f"{key}[{i}]", g, w, dtype, mask)
            else:
                _compare(key, got[key], want[key], dtype, mask)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_mlm_host_and_in_graph_agree(checkpoints, backend, dtype):
    folder, _ = checkpoints("head16_pretrain")
    inputs = make_inputs(SHAPES["head16_pretrain"][1], 2, 9)
    a = cbert.load(folder, backend=backend, dtype=dtype, mlm_mode="in_graph").forward(**inputs)
    b = cbert.load(folder, backend=backend, dtype=dtype, mlm_mode="host").forward(**inputs)
    tol = 1e-5 if dtype == "float32" else 2e-2
    assert_close(a.prediction_logits, b.prediction_logits, "prediction_logits", tol)
