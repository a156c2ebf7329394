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

from ...ir import Op
from ..numpy_backend import ERF_ALPHA, ERF_BETA, ERF_CLAMP

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


def _erf_rational(z: mx.array) -> mx.array:
    """numpy_backend.erf's rational, for |z| < ERF_CLAMP (callers handle the tails)."""
    z2 = z * z
    p = ERF_ALPHA[0] * z2 + ERF_ALPHA[1]
    for c in ERF_ALPHA[2:]:
        p = p * z2 + c
    q = ERF_BETA[0] * z2 + ERF_BETA[1]
    for c in ERF_BETA[2:]:
        q = q * z2 + c
    return z * p / q


def gelu(x: mx.array, cpu: bool) -> mx.array:
    """Exact (erf) GELU to <= 1e-6 abs error; returns float32.

    On the CPU, mx.erf costs ~27 ns per element (an erf GELU over one BERT-base FFN at
    batch 8 x 128 is 83 ms, more than its GEMM's share), while numpy_backend's rational
    erf is mul/add/div only and fuses into one compiled kernel (~14-20 ms). Evaluated in
    float32 its Horner rounding reaches 4e-7 in erf, 1.2e-6 in GELU near |x| = 5; in
    float64 (free on the CPU: MLX's fused CPU kernels are scalar code) the error is the
    fit's own 6.5e-8 in erf, 3.9e-7 in GELU. Beyond the clamp the rational is off by 9e-8
    from +-1, which times large x would exceed 1e-6, so the tails take relu(x), exact in
    float32 there (|GELU(x) - relu(x)| < 2e-7 for |x| > 5.42). Metal has no float64 and
    GPU transcendentals are cheap, so the GPU uses mx.erf in float32.
    """
    if not cpu:
        x = _f32(x)
        h = 0.5 * x
        return h + h * mx.erf(x * _SQRT1_2)
    xd = x.astype(mx.float64)
    z = xd * _SQRT1_2
    inside = mx.abs(z) < ERF_CLAMP
    zc = mx.clip(z, -ERF_CLAMP, ERF_CLAMP)
    h = 0.5 * xd
    return mx.where(inside, h + h * _erf_rational(zc), mx.maximum(xd, 0.0)).astype(F32)


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

# exp(x) for x <= 0 as Cephes' expf does it: x = n ln2 + r, |r| <= ln2/2, a degree-7
# polynomial for e^r and 2^n built in the float's exponent bits. On the CPU mx.exp costs
# 11.6 ns per element (18 ms for one BERT-base layer's scores at batch 8 x 128, a fifth of
# the layer); this fuses into one compiled kernel at 2.9 ns, with max relative error
# 8e-8 (mx.exp's own: 3.6e-6).
_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
# Below this, 2^n would leave the normal range; e^-87 = 1.6e-38 stands in for 0 (a masked
# key's weight), which no sum of weights (each row has one weight of exactly 1) can see.
_EXP_FLOOR = -87.0


def exp_nonpositive(x: mx.array) -> mx.array:
    x = mx.maximum(x, _EXP_FLOOR)
    n = mx.floor(x * _LOG2E + 0.5)
    r = x - n * _LN2_HI - n * _LN2_LO
    poly = _EXP_P[0] * r + _EXP_P[1]
    for c in _EXP_P[2:]:
        poly = poly * r + c
    poly = poly * r * r + r + 1.0
    two_n = mx.left_shift(n.astype(mx.int32) + 127, 23).view(F32)
    return poly * two_n


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


def linear(p: Precision, x: mx.array, w: mx.array, b: mx.array, activation_name: str = "none") -> mx.array:
    *lead, k = x.shape
    x2 = x.reshape(-1, k)
    if x2.dtype != p.gemm:
        x2 = x2.astype(p.gemm)
    # One GEMM with the bias folded in (BLAS beta = 1); w stays [N, K] and goes in
    # transposed, which BLAS takes without a copy.
    y = mx.addmm(b, x2, w.T)
    y = activation(y, activation_name, p.cpu)
    return _store(p, y.reshape(*lead, w.shape[0]))


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
    Op.LINEAR: lambda p, x, w, b, activation: linear(p, x, w, b, activation),
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
