"""`cbert attention` through a subprocess, and the matrix it draws."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli as run

import cbert
from cbert.tools.attention import attention_matrix

TEXT = "the patient denies chest pain"




@pytest.fixture(scope="module")
def folder(checkpoints):
    return checkpoints("head16_pretrain")[0]  # 3 layers x 3 heads


@pytest.mark.parametrize("backend,head", [("numpy", "mean"), ("wgpu", "2"), ("mlx", "0")])
def test_heatmap(folder, tmp_path, backend, head):
    png = tmp_path / "attn.png"
    r = run("attention", folder, TEXT, "--layer", "1", "--head", head, "--backend", backend, "--out", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    which = "mean of 3 heads" if head == "mean" else f"head {head}"
    assert f"layer 1, {which}, 7 tokens" in r.stderr


def test_matrix_is_the_models_attention(folder):
    model = cbert.load(folder, backend="numpy")
    tokens, m, title = attention_matrix(model, TEXT, -1, "mean")
    assert tokens == ["[CLS]", "the", "patient", "denies", "chest", "pain", "[SEP]"]
    assert title == "layer 2, mean of 3 heads"
    want = model.forward(**model.tokenizer([TEXT]), output_attentions=True).attentions[2][0].mean(0)
    np.testing.assert_allclose(m, want, rtol=1e-6)
    np.testing.assert_allclose(m.sum(-1), 1, atol=1e-5)  # each query's row is a distribution
    _, h1, _ = attention_matrix(model, TEXT, 0, 1)
    assert not np.allclose(h1, attention_matrix(model, TEXT, 0, 0)[1])


@pytest.mark.parametrize("args,message", [
    (("--layer", "3"), "--layer 3: the model has 3 layers"),
    (("--head", "5"), "--head 5: layer 2 has 3 heads"),
    (("--head", "max"), "--head 'max': a head number"),
])
def test_bad_layer_or_head(folder, tmp_path, args, message):
    r = run("attention", folder, TEXT, "--out", str(tmp_path / "a.png"), *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
