"""The numpy reference: one short function per op, the living definition of each, and the table.

Every other backend is checked against these, op by op and end to end. Float32
throughout (float64 inputs stay float64, for the gradient tests' finite differences); the GELU
is the exact (erf) form to float32 precision; the attention mask is Hugging Face's additive
one (the dtype's minimum, never -inf).
"""

from __future__ import annotations

import numpy as np

from ...ir import IGNORE_INDEX, Op

F32 = np.float32

# erf(x) as a rational function of x, accurate to a few float32 ulp (max abs error ~4e-7
# on any x), from Eigen's generic_fast_erf_float, which TensorFlow/XLA use too:
# https://gitlab.com/libeigen/eigen/-/blob/master/Eigen/src/Core/MathFunctionsImpl.h
# Every backend uses these same coefficients, so GELU agrees across them without a
# transcendental function (slow on MLX CPU, missing in WGSL).
ERF_CLAMP = 3.832506856900711
ERF_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
             -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
             -1.60960333262415e-02)
ERF_BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
            -7.37332916720468e-03, -1.42647390514189e-02)

# Element-wise epilogues (bias, activation) run in place over cache-sized blocks of rows:
# numpy's element-wise passes are memory-bound on [B*S, 4H] arrays. Measured at 8 x 128 on
# BERT-base's FFN (1024 x 3072), bias + GELU: 13.2 ms in 16K-float blocks, 10.2 ms in 128K.
# Spreading the blocks over a thread pool won nothing inside a forward (OpenBLAS's workers
# still spin on the other core after each GEMM), so it stays on one thread.
_CHUNK = 1 << 17


def _float(a) -> np.ndarray:
    """``a`` as float32, or as it is when float64 (the finite-difference tests' path)."""
    a = np.asarray(a)
    return a if a.dtype == np.float64 else a.astype(F32, copy=False)


def _blockwise(fn, y2d: np.ndarray) -> None:
    """Apply ``fn`` in place to row blocks of ``y2d``."""
    rows = max(1, _CHUNK // max(1, y2d.shape[1]))
    for r in range(0, y2d.shape[0], rows):
        fn(y2d[r:r + rows])


def erf(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, -ERF_CLAMP, ERF_CLAMP)
    x2 = x * x
    p = np.full_like(x, ERF_ALPHA[0])
    for c in ERF_ALPHA[1:]:
        p *= x2
        p += F32(c)
    q = np.full_like(x, ERF_BETA[0])
    for c in ERF_BETA[1:]:
        q *= x2
        q += F32(c)
    return x * p / q


def _gelu_inplace(x: np.ndarray) -> None:
    # 0.5 * x * (1 + erf(x / sqrt(2)))
    e = erf(x * F32(0.7071067811865476))
    e += F32(1.0)
    e *= F32(0.5)
    x *= e


def _gelu_tanh_inplace(x: np.ndarray) -> None:
    t = np.tanh(F32(0.7978845608028654) * (x + F32(0.044715) * x * x * x))
    t += F32(1.0)
    t *= F32(0.5)
    x *= t


def _silu_inplace(x: np.ndarray) -> None:
    x *= F32(1) / (F32(1) + np.exp(-x))


_INPLACE = {
    "none": lambda x: None,
    "gelu": _gelu_inplace,
    "gelu_tanh": _gelu_tanh_inplace,
    "relu": lambda x: np.maximum(x, F32(0), out=x),
    "silu": _silu_inplace,
    "tanh": lambda x: np.tanh(x, out=x),
}


def activation(y: np.ndarray, name: str, bias: np.ndarray | None = None) -> np.ndarray:
    """``act(y + bias)`` computed in place over ``y`` (which must be ours to change); returns it."""
    if name not in _INPLACE:
        raise ValueError(f"unknown activation {name!r}")
    act = _INPLACE[name]
    if bias is None:
        _blockwise(act, y.reshape(-1, y.shape[-1]))
        return y

    def epilogue(blk: np.ndarray) -> None:
        blk += bias
        act(blk)

    _blockwise(epilogue, y.reshape(-1, y.shape[-1]))
    return y


def layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    var = np.einsum("...i,...i->...", xc, xc)[..., None] / F32(x.shape[-1])
    xc *= F32(1) / np.sqrt(var + F32(eps))
    xc *= w
    xc += b
    return xc


def embed(ln_w, ln_b, *tables_and_ids, eps):
    x = None
    for table, ids in zip(tables_and_ids[::2], tables_and_ids[1::2]):
        g = _float(np.take(table, ids, axis=0))
        x = g if x is None else x + g
    return layernorm(x, ln_w, ln_b, eps)


def mask_bias(attention_mask: np.ndarray) -> np.ndarray:
    return np.where(attention_mask != 0, F32(0), np.finfo(F32).min).astype(F32)


def linear(x, w, b, activation_name="none"):
    # One 2-D GEMM over all B*S rows: a 3-D x @ w.T runs as B separate GEMMs, 1.3x slower
    # at 8 x 128 (33.5 vs 25.6 ms for BERT-base's FFN input).
    y = x.reshape(-1, x.shape[-1]) @ w.T
    return activation(y, activation_name, bias=b).reshape(*x.shape[:-1], w.shape[0])


def lora_delta(x, a, b, scale) -> np.ndarray:
    """scale * (x a^T) b^T over the rows of x: [rows, N]."""
    return (x.reshape(-1, x.shape[-1]) @ a.T) @ (b.T * x.dtype.type(scale))


def lora(y, x, a, b, scale, offset, activation_name):
    z = np.array(y, copy=True).reshape(-1, y.shape[-1])
    z[:, offset:offset + b.shape[0]] += lora_delta(x, a, b, scale)
    return activation(z, activation_name).reshape(y.shape)


def _split_heads(qkv: np.ndarray, heads: int):
    B, S, H3 = qkv.shape
    d = H3 // 3 // heads
    # [B, S, 3, heads, d] -> three [B, heads, S, d] views
    t = qkv.reshape(B, S, 3, heads, d).transpose(2, 0, 3, 1, 4)
    return t[0], t[1], t[2], d


# Attention is B x heads small products a layer, and OpenBLAS runs each product of more than
# 2^18 multiply-adds on all its threads: a wake-up and a join per product, 384 of them a layer
# at batch 32 (12 heads). all-MiniLM-L6-v2, 100 notes of 1-14 sentences at batch 32, 2 BLAS
# threads on 2 busy cores: 156 s, 128 of them in the attention products; at 1 thread, 29 s.
# Products of fewer query rows stay under the threshold (one thread each, no join).
_SMALL_GEMM = 1 << 18


def _by_query_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for stacks [..., S, K] @ [..., K, N], in blocks of query rows small enough for one BLAS thread."""
    *lead, S, K = a.shape
    N = b.shape[-1]
    rows = max(1, _SMALL_GEMM // max(1, K * N))
    if rows >= S:
        return a @ b
    out = np.empty((*lead, S, N), np.result_type(a, b))
    for i in range(0, S, rows):
        np.matmul(a[..., i:i + rows, :], b, out=out[..., i:i + rows, :])
    return out


def attn_probs(qkv, bias, heads):
    q, k, _, d = _split_heads(qkv, heads)
    scores = _by_query_rows(q, k.transpose(0, 1, 3, 2))
    scores *= F32(1.0 / np.sqrt(d))
    scores += bias[:, None, None, :]
    scores -= scores.max(-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(-1, keepdims=True)
    return scores


def attn_apply(probs, qkv, heads):
    _, _, v, _ = _split_heads(qkv, heads)
    ctx = _by_query_rows(probs, v)  # [B, heads, S, d]
    B, _, S, d = ctx.shape
    return np.ascontiguousarray(ctx.transpose(0, 2, 1, 3)).reshape(B, S, heads * d)


# The fused ATTENTION runs in blocks of at most this many attention weights (512 KB): each block's
# scores, softmax and product with V stay in the core's L2 cache, where the unfused form sends the
# whole [B, heads, S, S] array through memory once per pass (six passes: 157 MB each at 32 x 320).
# Measured (all-MiniLM-L6-v2's 12 heads of 32, CPU time on 2 busy cores): 32 x 128 39 -> 28 ms,
# 32 x 320 290 -> 168 ms, 8 x 512 183 -> 111 ms; no change at 32 x 64 and below. Both products of
# a block also stay under _SMALL_GEMM per head (one BLAS thread, no join): 2^18 weights, which
# breaks that at head size 32, took 3-4x as long.
_ATTENTION_BLOCK = 1 << 17


def _softmax_block(s: np.ndarray, scale, bias: np.ndarray) -> np.ndarray:
    """attn_probs' softmax of raw scores ``s`` [..., rows, S], in place: the same operations in the same order."""
    s *= scale
    s += bias
    s -= s.max(-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(-1, keepdims=True)
    return s


def attention(qkv, bias, heads):
    """attn_apply(attn_probs(...)) in cache-sized blocks: several sequences at once, or query rows of one."""
    q, k, v, d = _split_heads(qkv, heads)
    B, _, S, _ = q.shape
    kt = k.transpose(0, 1, 3, 2)  # [B, heads, d, S]
    scale = F32(1.0 / np.sqrt(d))
    out = np.empty((B, S, heads, d), np.result_type(qkv, bias))
    ctx = out.transpose(0, 2, 1, 3)  # [B, heads, S, d], written in place
    if heads * S * S <= _ATTENTION_BLOCK and S * S * d <= _SMALL_GEMM:
        n = _ATTENTION_BLOCK // (heads * S * S)
        for b in range(0, B, n):
            s = _softmax_block(q[b:b + n] @ kt[b:b + n], scale, bias[b:b + n, None, None, :])
            np.matmul(s, v[b:b + n], out=ctx[b:b + n])
    else:
        rows = max(1, min(_ATTENTION_BLOCK // (heads * S), _SMALL_GEMM // (d * S)))
        for b in range(B):
            for i in range(0, S, rows):
                s = _softmax_block(q[b, :, i:i + rows] @ kt[b], scale, bias[b])
                np.matmul(s, v[b], out=ctx[b, :, i:i + rows])
    return out.reshape(B, S, heads * d)


def add_ln(x, residual, w, b, eps):
    y = x + residual
    return layernorm(y, w, b, eps)


def first_token(x):
    return np.ascontiguousarray(x[:, 0])


def concat(arrays, axis):
    return np.concatenate([_float(a) for a in arrays], axis=axis)


def dropout_keep(shape, seed, salt: int, rate: float) -> np.ndarray:
    """The keep mask of a DROPOUT node: the same (seed, salt) draws the same mask, so the
    backward pass redraws what the forward used instead of storing it."""
    rng = np.random.default_rng((int(seed), int(salt)))
    return rng.random(shape, dtype=F32) >= F32(rate)


def dropout(x, seed, rate, salt):
    if rate == 0.0:
        return x
    return x * dropout_keep(x.shape, seed, salt, rate) * F32(1.0 / (1.0 - rate))


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def counted(labels: np.ndarray) -> np.ndarray:
    """The labels a cross-entropy counts: every one but IGNORE_INDEX."""
    return labels != IGNORE_INDEX


def cross_entropy(logits, labels, reduction):
    logits = _float(logits)
    keep = counted(labels)
    rows = log_softmax(logits[keep])  # [counted, C]
    picked = rows[np.arange(len(rows)), labels[keep]]
    total = -picked.sum(dtype=np.float64)
    if reduction == "sum":
        return np.asarray(total, logits.dtype)
    return np.asarray(total / max(int(keep.sum()), 1), logits.dtype)


def mse(prediction, target):
    p = _float(prediction)
    d = p - np.asarray(target, p.dtype)
    return np.asarray(np.mean(d * d, dtype=np.float64), p.dtype)


def bce_logits(logits, target):
    # max(x, 0) - x t + log(1 + e^-|x|): PyTorch's stable form of -[t log s(x) + (1-t) log(1-s(x))]
    x = _float(logits)
    t = np.asarray(target, x.dtype)
    return np.asarray(np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))), dtype=np.float64), x.dtype)


def pick(x, index):
    return np.ascontiguousarray(x[..., index])


def weighted_sum(*scalars, weights):
    dtype = np.result_type(F32, *(np.asarray(s).dtype for s in scalars))
    return np.asarray(sum(float(w) * float(s) for w, s in zip(weights, scalars)), dtype)


# -- distillation: soft targets and hidden-state cosine (DistilBERT's distiller.py) ---------------

COSINE_EPS = 1e-12  # CosineEmbeddingLoss's EPSILON, added to each squared norm


def selected_rows(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The rows [n, last] of ``x`` a row loss counts: those whose mask is not 0, or every row."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if mask is None else rows[np.asarray(mask).reshape(-1) != 0]


def kl_rows(logits: np.ndarray, target: np.ndarray, temperature: float):
    """(per-row KL(p || q), log q, log p) with p = softmax(target / T), q = softmax(logits / T)."""
    t = logits.dtype.type(temperature)
    log_q, log_p = log_softmax(logits / t), log_softmax(target / t)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1), log_q, log_p


def kl_div(logits, target, mask=None, *, temperature):
    x = _float(logits)
    rows, _, _ = kl_rows(selected_rows(x, mask), selected_rows(np.asarray(target, x.dtype), mask), temperature)
    return np.asarray(rows.sum(dtype=np.float64) / max(len(rows), 1), x.dtype)


def cosine_rows(x: np.ndarray, y: np.ndarray):
    """(cos, x.y, |x|^2 + eps, |y|^2 + eps) per row, as CosineEmbeddingLoss computes them."""
    dot = np.einsum("ij,ij->i", x, y)
    a = np.einsum("ij,ij->i", x, x) + COSINE_EPS
    b = np.einsum("ij,ij->i", y, y) + COSINE_EPS
    return dot / np.sqrt(a * b), dot, a, b


def cosine(x, target, mask=None):
    x = _float(x)
    cos, _, _, _ = cosine_rows(selected_rows(x, mask), selected_rows(np.asarray(target, x.dtype), mask))
    return np.asarray((1 - cos).sum(dtype=np.float64) / max(len(cos), 1), x.dtype)


# The lowering table: op -> definition. Attrs arrive as keyword arguments.
TABLE = {
    Op.EMBED: embed,
    Op.MASK_BIAS: mask_bias,
    Op.LINEAR: lambda x, w, b, activation: linear(x, w, b, activation),
    Op.ATTENTION: attention,
    Op.ATTN_PROBS: attn_probs,
    Op.ATTN_APPLY: attn_apply,
    Op.ADD_LN: add_ln,
    Op.LAYERNORM: layernorm,
    Op.FIRST_TOKEN: first_token,
    Op.CONCAT: lambda *arrays, axis: concat(arrays, axis),
    Op.DROPOUT: dropout,
    Op.LORA: lambda y, x, a, b, scale, offset, activation: lora(y, x, a, b, scale, offset, activation),
    Op.CROSS_ENTROPY: cross_entropy,
    Op.MSE: mse,
    Op.BCE_LOGITS: bce_logits,
    Op.PICK: pick,
    Op.WEIGHTED_SUM: weighted_sum,
    Op.KL_DIV: kl_div,
    Op.COSINE: cosine,
}
