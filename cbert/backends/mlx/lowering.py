"""The lowering table: each op of :mod:`cbert.ir` as MLX array code.

Every function here runs while ``mx.compile`` traces the whole forward, so it builds
graph, it does not compute. A :class:`Precision` says in which dtypes: ``store`` is the
dtype activations (and weights) are rounded to between ops, ``gemm`` the dtype matmuls
run in. LayerNorm statistics, softmax and the attention scores stay float32 whatever
``store`` is; half-precision GEMMs accumulate in float32 inside MLX's GPU kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ...ir import Op

F32 = mx.float32
_SQRT1_2 = 0.7071067811865476


@dataclass(frozen=True)
class Precision:
    store: mx.Dtype  # activations between ops; weights are rounded to it at load
    gemm: mx.Dtype  # operands of matmuls: store, or float32 where the device has no fast half GEMM
    cpu: bool  # the stream is on the CPU (decides how GELU is formulated)

    @property
    def half(self) -> bool:
        return self.store != F32


def _store(p: Precision, x: mx.array) -> mx.array:
    return x if x.dtype == p.store else x.astype(p.store)


def _f32(x: mx.array) -> mx.array:
    return x if x.dtype == F32 else x.astype(F32)


# -- activations -------------------------------------------------------------------------


# exp(x) for x <= 0 as Cephes' expf does it: x = n ln2 + r, |r| <= ln2/2, a degree-7
# polynomial for e^r and 2^n built in the float's exponent bits. On the CPU mx.exp costs
# 11.6 ns per element (18 ms for one BERT-base layer's scores at batch 8 x 128, a fifth of
# the layer). Clamped with an integer min on the bits and rounded with adds (see below),
# it fuses and vectorizes: 9.5 -> ~3 ns per element with mx.maximum and mx.floor replaced
# (3.1M elements, CPU time on 2 busy cores), max relative error 8e-8 (mx.exp's: 3.6e-6).
_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
# Below this, 2^n would leave the normal range; e^-87 = 1.6e-38 stands in for 0 (a masked
# key's weight), which no sum of weights (each row has one weight of exactly 1) can see.
_EXP_FLOOR = -87.0


# How MLX 0.32's CPU compiler (mx.compile -> C++ built with g++ -O3, SSE2 only) treats
# element-wise chains, measured on 3.1M float32 elements (one BERT-base FFN at 8 x 128):
# a fused mul/add costs ~0.09 ns per element, but a float mx.maximum/minimum/where/clip/floor
# inside a fused kernel makes it scalar (maximum(x*2, 0) + 1: 19 ms vs 0.65 ms), and
# float64 is not fused at all (12 float64 mul-adds: 36 ms vs 3 ms in float32). So the CPU
# formulations below use abs, integer min on the float bits, and adds for rounding only.
_MAGIC = 12582912.0  # 1.5 * 2**23: (y + _MAGIC) - _MAGIC rounds y (|y| < 2**22) to an integer


def _min_nonneg(a: mx.array, cap: float) -> mx.array:
    """min(a, cap) for a >= 0 (or NaN), exactly: non-negative floats order like their int32 bits."""
    bits = int(np.float32(cap).view(np.int32))
    return mx.minimum(a.view(mx.int32), bits).view(F32)


def _exp_neg(a: mx.array) -> mx.array:
    """e^-a for a in [~0, 87]: Cephes' expf (a = n ln2 + r, degree-7 polynomial, 2^n in the exponent bits)."""
    w = -a
    n = (w * _LOG2E + _MAGIC) - _MAGIC
    r = (w - n * _LN2_HI) - n * _LN2_LO
    poly = _EXP_P[0] * r + _EXP_P[1]
    for c in _EXP_P[2:]:
        poly = poly * r + c
    poly = poly * r * r + r + 1.0
    two_n = mx.left_shift(n.astype(mx.int32) + 127, 23).view(F32)
    return poly * two_n


# erfc(z) = t exp(-z^2 - 1.26551223 + t P(t)), t = 1 / (1 + z / 2), relative error < 1.2e-7
# for every z >= 0 (Numerical Recipes' erfcc, a Chebyshev fit).
_ERFC_C = -1.26551223
_ERFC_P = (1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
           -0.82215223, 0.17087277)
# Beyond |x| = 13, |x| Phi(-|x|) < 1e-37: capping |x| there keeps the exponent above -87.
_GELU_CAP = 13.0


def gelu(x: mx.array, cpu: bool) -> mx.array:
    """Exact (erf) GELU to <= 1e-6 abs error; returns float32.

    CPU: gelu(x) = relu(x) - |x| Phi(-|x|) = relu(x) - |x|/2 erfc(|x|/sqrt2), all in float32.
    The subtracted term is small where |x| is large, so a relative error in erfc (1.2e-7 for
    the fit, a few ulp of rounding) stays far below 1e-6 absolute: max 2.4e-7 against
    math.erf over [-16, 16] (the rational erf in float32 as h + h erf reaches 1.2e-6 near
    |x| = 5, where erf ~ 1 carries 4e-7 of rounding into a product with h = 2.5). Measured
    on 3.1M elements with 2 busy cores: 44 ms of CPU time vs 83 ms for the float64 rational.
    Metal has no float64 and GPU transcendentals are cheap, so the GPU uses mx.erf.
    """
    x = _f32(x)
    if not cpu:
        h = 0.5 * x
        return h + h * mx.erf(x * _SQRT1_2)
    a = _min_nonneg(mx.abs(x), _GELU_CAP)
    t = mx.reciprocal(1.0 + a * (0.5 * _SQRT1_2))
    p = _ERFC_P[-1] * t + _ERFC_P[-2]
    for c in _ERFC_P[-3::-1]:
        p = p * t + c
    # -exponent in [-3e-8, 85.8]; relu as (x + |x|) / 2 is exact and fuses (mx.maximum does not).
    e = _exp_neg(0.5 * (a * a) - (p * t + _ERFC_C))
    return (0.5 * x + 0.5 * mx.abs(x)) - ((0.5 * a) * t) * e


def activation(y: mx.array, name: str, cpu: bool) -> mx.array:
    if name == "none":
        return y
    if name == "gelu":
        return gelu(y, cpu)
    y = _f32(y)
    if name == "gelu_tanh":
        return 0.5 * y * (1.0 + mx.tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)))
    if name == "relu":
        return mx.maximum(y, 0.0)
    if name == "silu":
        return y * mx.sigmoid(y)
    if name == "tanh":
        return mx.tanh(y)
    raise ValueError(f"unknown activation {name!r}")


# -- softmax -----------------------------------------------------------------------------

def exp_nonpositive(x: mx.array) -> mx.array:
    """e^x for x <= 0; below -87 it returns e^-87 = 1.6e-38, which stands in for 0."""
    return _exp_neg(_min_nonneg(mx.abs(x), -_EXP_FLOOR))


def softmax_f32(scores: mx.array, cpu: bool) -> mx.array:
    """Softmax over the last axis of float32 scores (the reference's max-subtracted form)."""
    if not cpu:
        return mx.softmax(scores, axis=-1, precise=True)
    e = exp_nonpositive(scores - mx.max(scores, axis=-1, keepdims=True))
    # One reciprocal per row and a multiply: a division per score costs more on the CPU.
    return e * mx.reciprocal(mx.sum(e, axis=-1, keepdims=True))


# -- ops ---------------------------------------------------------------------------------


def layernorm(p: Precision, x: mx.array, w: mx.array, b: mx.array, eps: float) -> mx.array:
    # Statistics in float32: mx.fast.layer_norm reduces in the input's dtype on the CPU.
    return _store(p, mx.fast.layer_norm(_f32(x), w, b, eps))


def embed(p: Precision, ln_w: mx.array, ln_b: mx.array, *tables_and_ids: mx.array, eps: float) -> mx.array:
    x = None
    for table, ids in zip(tables_and_ids[::2], tables_and_ids[1::2]):
        g = _f32(mx.take(table, ids, axis=0))
        x = g if x is None else x + g
    return layernorm(p, x, ln_w, ln_b, eps)


def mask_bias(p: Precision, attention_mask: mx.array) -> mx.array:
    # float32 whatever the dtype: attention adds it to float32 scores (or turns it into
    # a boolean mask), so float32's minimum never meets a half-precision add.
    return mx.where(attention_mask != 0, mx.array(0.0, F32), mx.array(mx.finfo(F32).min, F32))


def linear(p: Precision, x: mx.array, w: mx.array, b: mx.array, activation_name: str = "none",
           weight_layout: str = "nk") -> mx.array:
    *lead, k = x.shape
    x2 = x.reshape(-1, k)
    if x2.dtype != p.gemm:
        x2 = x2.astype(p.gemm)
    # One GEMM with the bias folded in (BLAS beta = 1). w is [N, K] as Hugging Face stores it
    # and goes in transposed, which BLAS takes without a copy; or [K, N] where the executor
    # stored it so (see backend._kn_weights).
    wt = w if weight_layout == "kn" else w.T
    y = mx.addmm(b, x2, wt)
    y = activation(y, activation_name, p.cpu)
    return _store(p, y.reshape(*lead, wt.shape[1]))


def _split_heads(qkv: mx.array, heads: int) -> tuple[mx.array, mx.array, mx.array, int]:
    B, S, H3 = qkv.shape
    d = H3 // 3 // heads
    t = qkv.reshape(B, S, 3, heads, d).transpose(2, 0, 3, 1, 4)
    return t[0], t[1], t[2], d


def _merge_heads(ctx: mx.array) -> mx.array:
    B, h, S, d = ctx.shape
    return ctx.transpose(0, 2, 1, 3).reshape(B, S, h * d)


def attention(p: Precision, qkv: mx.array, bias: mx.array, heads: int) -> mx.array:
    q, k, v, d = _split_heads(qkv, heads)
    scale = 1.0 / math.sqrt(d)
    if p.cpu:
        # On the CPU mx.fast.scaled_dot_product_attention is no kernel, only MLX's generic
        # fallback (scale, matmul, mask, softmax with mx.exp, matmul): 50 ms per BERT-base
        # layer at batch 8 x 128; the same steps with exp_nonpositive take ~12 ms.
        probs = _probs(q, k, bias, d, p.cpu)
        return _store(p, _merge_heads(probs @ _f32(v)))
    if p.gemm == F32:
        # The reference's additive float32 mask: masked scores become float32's minimum
        # (finite); a row with no attended key comes out uniform, like numpy's.
        q, k, v = _f32(q), _f32(k), _f32(v)
        ctx = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=bias[:, None, None, :])
    else:
        # Half precision end to end (GPU): an additive mask must be in the half dtype,
        # where min + score overflows to -inf and padded rows turn to NaN. A boolean mask
        # makes MLX *write* the minimum into masked scores instead of adding it, and the
        # softmax runs in float32. A fused GPU kernel may still turn a fully masked row
        # into -inf/NaN, so those rows are replaced by what the reference gives them:
        # uniform attention, i.e. the mean of v.
        keep = bias[:, None, None, :] == 0
        ctx = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=keep)
        none = mx.logical_not(mx.any(keep, axis=-1, keepdims=True))  # [B, 1, 1, 1]
        uniform = mx.mean(_f32(v), axis=2, keepdims=True).astype(ctx.dtype)
        ctx = mx.where(none, uniform, ctx)
    return _store(p, _merge_heads(ctx))


def _probs(q: mx.array, k: mx.array, bias: mx.array, d: int, cpu: bool) -> mx.array:
    # Scores, mask and softmax in float32, as in the reference, whatever the dtype: the
    # additive float32 minimum then never meets a half-precision add.
    scores = (_f32(q) @ _f32(k).transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(d)) + bias[:, None, None, :]
    return softmax_f32(scores, cpu)


def attn_probs(p: Precision, qkv: mx.array, bias: mx.array, heads: int) -> mx.array:
    q, k, _, d = _split_heads(qkv, heads)
    return _store(p, _probs(q, k, bias, d, p.cpu))


def attn_apply(p: Precision, probs: mx.array, qkv: mx.array, heads: int) -> mx.array:
    _, _, v, _ = _split_heads(qkv, heads)
    return _store(p, _merge_heads(probs.astype(p.gemm) @ v.astype(p.gemm)))


def add_ln(p: Precision, x: mx.array, residual: mx.array, w: mx.array, b: mx.array, eps: float) -> mx.array:
    return layernorm(p, _f32(x) + _f32(residual), w, b, eps)


def first_token(p: Precision, x: mx.array) -> mx.array:
    return x[:, 0]


def concat(arrays: list[mx.array], axis: int) -> mx.array:
    return mx.concatenate(list(arrays), axis=axis)


# op -> lowering; called as fn(precision, *inputs, **attrs).
TABLE = {
    Op.EMBED: embed,
    Op.MASK_BIAS: mask_bias,
    Op.LINEAR: lambda p, x, w, b, activation, weight_layout="nk": linear(p, x, w, b, activation, weight_layout),
    Op.ATTENTION: attention,
    Op.ATTN_PROBS: attn_probs,
    Op.ATTN_APPLY: attn_apply,
    Op.ADD_LN: add_ln,
    Op.LAYERNORM: layernorm,
    Op.FIRST_TOKEN: first_token,
    Op.CONCAT: lambda p, *arrays, axis: concat(arrays, axis),
}

# Parameters that stay float32 in every dtype, by (op, input position): LayerNorm
# weights and biases (tiny, and the normalisation runs in float32).
FLOAT32_PARAMS = {Op.EMBED: (0, 1), Op.ADD_LN: (2, 3), Op.LAYERNORM: (1, 2)}
