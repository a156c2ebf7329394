"""The numpy backend's fused ATTENTION, run in cache-sized blocks, equals ATTN_PROBS then ATTN_APPLY."""

import numpy as np
import pytest

from cbert.backends.numpy import lowering


@pytest.mark.parametrize("block", [None, 64, 500], ids=["default", "query-rows", "sequences"])
def test_blocked_attention_matches_probs_then_apply(monkeypatch, block):
    if block is not None:  # 64: a few query rows of one sequence per block; 500: two sequences per block
        monkeypatch.setattr(lowering, "_ATTENTION_BLOCK", block)
    rng = np.random.default_rng(0)
    B, S, heads, d = 3, 10, 2, 4
    qkv = rng.standard_normal((B, S, 3 * heads * d)).astype(np.float32)
    mask = np.ones((B, S), np.int64)
    mask[1, 6:] = 0
    mask[2, :] = 0  # no key attended: uniform weights, as the reference gives
    bias = lowering.mask_bias(mask)
    want = lowering.attn_apply(lowering.attn_probs(qkv, bias, heads), qkv, heads)
    got = lowering.attention(qkv, bias, heads)
    assert got.shape == (B, S, heads * d) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
