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

from ...ir import IGNORE_INDEX, Op

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

# Where mx.compile's fusion stops. MLX fuses element-wise chains up to 11 ops deep; a longer
# chain is split where the depth runs out, and a scalar constant that lands on the split
# enters the next kernel as a stride-0 broadcast, which sends that whole kernel down MLX's
# strided (scalar, index-computing) path: a 7-step Horner polynomial on 3.1M floats took
# 4.6 ms instead of 0.9. mx.contiguous on a contiguous array is a no-op that no fusion
# crosses, so a chain cut with it by hand splits where we say, with its constants inside.
_cut = mx.contiguous


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
    """e^-a for a in [~0, 87]: Cephes' expf (a = n ln2 + r, degree-7 polynomial, 2^n in the exponent bits).

    Two fused kernels: the range reduction (n, r and 2^n's bits), then the polynomial in
    Estrin's order (depth 9 with the product, where Horner's needs 14) times 2^n.
    """
    w = -a
    n = (w * _LOG2E + _MAGIC) - _MAGIC
    r = _cut((w - n * _LN2_HI) - n * _LN2_LO)
    two_n = mx.left_shift(n.astype(mx.int32) + 127, 23).view(F32)
    c = _EXP_P
    r2 = r * r
    poly = ((c[4] * r + c[5]) + r2 * (c[2] * r + c[3])) + (r2 * r2) * (c[0] * r + c[1])
    return ((poly * r2 + r) + 1.0) * two_n


# GELU as relu(x) - |x|/2 erfc(|x|/sqrt2), with erfc(z) ~ P(|x|)^-8 and P a degree-8
# polynomial with P(0) = 1 (the form of Abramowitz & Stegun 7.1.28, refitted): no exp, no
# division but one reciprocal, no clamp; past |x| ~ 1e5 P overflows to inf and the tail
# term is exactly 0. Coefficients by Lawson's iteration on the weighted least-squares fit
# of erfc(a/sqrt2)^(-1/8) over a in [0, 12.7], minimising the GELU error |a|/2 * (P^-8 - erfc):
# 4.8e-8 in exact arithmetic, 3.5e-7 max abs error evaluated in float32 (tests/test_mlx.py).
_GELU_P = (0.09973249685755385, 0.04478878886188255, 0.008591668643587454, 0.0009806088402105,
           0.00011139275921896677, 9.756422229976444e-05, -1.6743261839167446e-05, 2.93214555803277e-06)


def gelu(x: mx.array, cpu: bool) -> mx.array:
    """Exact (erf) GELU to <= 1e-6 abs error (3.5e-7 measured); returns float32.

    Its gradient is the exact GELU's (:func:`_gelu_vjp`), not the polynomial's.

    CPU: about 26 multiply-adds in two fused kernels. MLX's CPU erf and exp cost ~10 ns per
    element; measured on one BERT-base FFN activation at 8 x 128 (3.1M floats): 3.7 ms here,
    15.4 ms for the previous erfc-times-Cephes-exp form (14 kernels), 83 ms with mx.erf. The
    polynomial runs in Estrin's order (depth 9, not Horner's 16), so the first kernel holds
    P and its reciprocal, the second the three squarings and the output.
    Metal has cheap transcendentals, so the GPU uses mx.erf.
    """
    x = _f32(x)
    if not cpu:
        h = 0.5 * x
        return h + h * mx.erf(x * _SQRT1_2)
    return _gelu_poly(x)


@mx.custom_function
def _gelu_poly(x: mx.array) -> mx.array:
    c = _GELU_P
    a = mx.abs(x)
    a2 = a * a
    a4 = a2 * a2
    # Every group is positive for a >= 0 (c5 + c6 a + c7 a^2 has its minimum 7.4e-5 at a = 2.9),
    # so a huge |x| overflows P to +inf (tail term 0) and never meets inf - inf.
    p = ((1.0 + c[0] * a) + a2 * (c[1] + c[2] * a)) + a4 * ((c[3] + c[4] * a) + a2 * (c[5] + a * (c[6] + c[7] * a)))
    r = _cut(mx.reciprocal(p))
    r = r * r
    r = r * r
    r = r * r  # P^-8 ~ erfc(|x| / sqrt2)
    # relu(x) as (x + |x|) / 2 is exact and fuses (mx.maximum does not vectorize in a fused kernel).
    return (0.5 * x + 0.5 * a) - (0.5 * a) * r


_INV_SQRT_2PI = 0.3989422804014327


@_gelu_poly.vjp
def _gelu_vjp(x: mx.array, cotangent: mx.array, output: mx.array) -> tuple[mx.array]:
    # The exact GELU's derivative, Phi(x) + x phi(x): autodiff of the polynomial would give the
    # polynomial's (off by up to ~1e-5), and only a backward pays for mx.erf and mx.exp here.
    phi = mx.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return (cotangent * (0.5 + 0.5 * mx.erf(x * _SQRT1_2) + x * phi),)


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


# -- reductions and softmax --------------------------------------------------------------

# MLX's CPU reductions along the last axis are slow: mx.sum over a [1024, 768] float32 array
# takes 610 us, the same sum as a GEMV against a column of ones 58 us (32 rows: 37 vs 19 us).
# Sums of a row therefore go through the BLAS; mx.max has no such twin and stays.


def _row_sum(x: mx.array) -> mx.array:
    """Sum over the last axis, keepdims, as a matmul with a column of ones (exact weights)."""
    n = x.shape[-1]
    return (x.reshape(-1, n) @ mx.ones((n, 1), F32)).reshape(*x.shape[:-1], 1)


@mx.custom_function
def exp_nonpositive(x: mx.array) -> mx.array:
    """e^x for x <= 0; below -87 it returns e^-87 = 1.6e-38, which stands in for 0.

    Its gradient is exp's, the cotangent times the output: autodiff cannot see through the
    bit views (the clamp and 2^n), which would make it wrong or zero.
    """
    return _exp_neg(_min_nonneg(mx.abs(x), -_EXP_FLOOR))


@exp_nonpositive.vjp
def _exp_nonpositive_vjp(x: mx.array, cotangent: mx.array, output: mx.array) -> tuple[mx.array]:
    return (cotangent * output,)


def _softmax_parts(scores: mx.array) -> tuple[mx.array, mx.array]:
    """(e, row sums) of the reference's max-subtracted softmax, unnormalised, on the CPU."""
    # The shift cancels in e / sum(e), so its gradient is exactly zero: none flows through max.
    e = exp_nonpositive(scores - mx.stop_gradient(mx.max(scores, axis=-1, keepdims=True)))
    return e, _row_sum(e)


def softmax_f32(scores: mx.array, cpu: bool) -> mx.array:
    """Softmax over the last axis of float32 scores (the reference's max-subtracted form)."""
    if not cpu:
        return mx.softmax(scores, axis=-1, precise=True)
    e, total = _softmax_parts(scores)
    # One reciprocal per row and a multiply: a division per score costs more on the CPU.
    return e * mx.reciprocal(total)


# -- ops ---------------------------------------------------------------------------------


def layernorm(p: Precision, x: mx.array, w: mx.array, b: mx.array, eps: float) -> mx.array:
    x = _f32(x)
    if not p.cpu:
        # Statistics in float32 (mx.fast.layer_norm reduces in its input's dtype).
        return _store(p, mx.fast.layer_norm(x, w, b, eps))
    # On the CPU mx.fast.layer_norm is MLX's generic fallback (two mx.sum and four other
    # kernels, 3.9 ms for a [1024, 768] residual add + LayerNorm); the same two-pass
    # statistics with the sums as GEMVs: five kernels, 3.0 ms.
    inv_n = 1.0 / x.shape[-1]
    xc = x - _row_sum(x) * inv_n
    var = _row_sum(xc * xc) * inv_n
    return _store(p, (xc * mx.rsqrt(var + eps)) * w + b)


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


def kn_layout(k: int, n: int) -> bool:
    """Whether the CPU executor holds a [N, K] LINEAR weight as a [K, N] copy: where K > N.

    Measured here (OpenBLAS, 2 threads, x [32, 3072] @ W -> [32, 768]): W.T of a [N, K]
    array 1.87-1.94 ms, a contiguous [K, N] array 1.04-1.07 ms; with K < N the [N, K]
    layout is as fast or faster (32x768 -> 3072: 1.07 vs 1.31 ms), and at 1024 rows both
    layouts run at 196 GFLOP/s. So only the K > N weights (the FFN down-projection) move.
    """
    return k > n


def linear(p: Precision, x: mx.array, w: mx.array, b: mx.array, activation_name: str = "none",
           weight_layout: str = "nk") -> mx.array:
    *lead, k = x.shape
    x2 = x.reshape(-1, k)
    if x2.dtype != p.gemm:
        x2 = x2.astype(p.gemm)
    # One GEMM with the bias folded in (BLAS beta = 1). w is [N, K] as Hugging Face stores it
    # and goes in transposed, which BLAS takes without a copy; or [K, N] ("kn") where the
    # executor holds a copy so (see kn_layout).
    wt = w if weight_layout == "kn" else w.T
    y = mx.addmm(b, x2, wt)
    y = activation(y, activation_name, p.cpu)
    return _store(p, y.reshape(*lead, wt.shape[1]))


def linear_split(p: Precision, x: mx.array, w: mx.array, b: mx.array, activation_name: str, chunk: int,
                 aux: mx.Stream) -> mx.array:
    """``linear`` for a few rows on the CPU: ``chunk``-column GEMMs, half on a second CPU stream.

    ``w`` is [N, K]. With few rows (batch 1 x 32 tokens) one BLAS call spends a third of
    its time packing the weight, which streams from memory once per call. A GEMM this
    small ([M, K] x [K, chunk], M * chunk * K <= 1e6) goes to OpenBLAS's small-matrix
    kernels where it has them (AVX-512 builds): no packing, the weight read in place,
    one thread; two CPU streams run the two halves on two cores. A GEMM plan, measured
    once per machine and model (tuning.tune_gemms), says where it beats ``linear``.
    """
    *lead, k = x.shape
    x2 = x.reshape(-1, k)
    if x2.dtype != p.gemm:
        x2 = x2.astype(p.gemm)
    n = w.shape[0]
    blocks = w.reshape(n // chunk, chunk, k)  # a view: chunk rows of w per block
    half = blocks.shape[0] // 2
    parts = [mx.matmul(x2, blocks[:half].transpose(0, 2, 1)),
             mx.matmul(x2, blocks[half:].transpose(0, 2, 1), stream=aux)]
    y = mx.concatenate(parts, axis=0).transpose(1, 0, 2).reshape(-1, n) + b  # [blocks, M, chunk] -> [M, N]
    y = activation(y, activation_name, p.cpu)
    return _store(p, y.reshape(*lead, n))


def _split_heads(qkv: mx.array, heads: int) -> tuple[mx.array, mx.array, mx.array, int]:
    """Q, K, V as [B, heads, S, d] views of the fused QKV output (slices, no copy, no gather)."""
    B, S, H3 = qkv.shape
    d = H3 // 3 // heads
    t = qkv.reshape(B, S, 3, heads, d)
    q, k, v = (t[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    return q, k, v, d


def _merge_heads(ctx: mx.array) -> mx.array:
    B, h, S, d = ctx.shape
    return ctx.transpose(0, 2, 1, 3).reshape(B, S, h * d)


def _scores(q: mx.array, k: mx.array, bias: mx.array, d: int) -> mx.array:
    # Scores, mask and softmax in float32, as in the reference, whatever the dtype: the
    # additive float32 minimum then never meets a half-precision add.
    return (_f32(q) @ _f32(k).transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(d)) + bias[:, None, None, :]


# On the CPU a batch's attention weights ([B, heads, S, S]: 157 MB for 12 heads at 32 x 320)
# pass through memory once per kernel (scores, max, the exp's two kernels, row sums, e @ v).
# Taken a few sequences at a time, they stay in the caches from one kernel to the next:
# measured (12 heads, head dim 32, CPU time, 2 cores shared with other jobs) at 32 x 320,
# 1325 ms unchunked, 540-960 ms at 2^20 weights a chunk, 640-730 at 2^22; at 32 x 128 (2^20), 159
# -> 98 ms. Each chunk adds nodes to the trace: at 2^20 (32 chunks a layer at 32 x 320) the
# first forward of that shape took ~5 s more than the next ones, at 2^22 (11 chunks) none.
_CPU_ATTENTION_WEIGHTS = 1 << 22


def attention(p: Precision, qkv: mx.array, bias: mx.array, heads: int) -> mx.array:
    B, S, _ = qkv.shape
    if p.cpu:
        rows = max(1, _CPU_ATTENTION_WEIGHTS // (heads * S * S))
        if rows < B:
            return mx.concatenate([_cpu_attention(p, qkv[i:i + rows], bias[i:i + rows], heads)
                                   for i in range(0, B, rows)], axis=0)
        return _cpu_attention(p, qkv, bias, heads)
    q, k, v, d = _split_heads(qkv, heads)
    scale = 1.0 / math.sqrt(d)
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


def _cpu_attention(p: Precision, qkv: mx.array, bias: mx.array, heads: int) -> mx.array:
    # On the CPU mx.fast.scaled_dot_product_attention is no kernel, only MLX's generic
    # fallback (scale, matmul, mask, softmax with mx.exp, matmul): 50 ms per BERT-base
    # layer at batch 8 x 128. Here: the scores, exp_nonpositive, the row sums as a GEMV,
    # the unnormalised e @ v, and one multiply by 1/sum that also merges the heads
    # (it writes [B, S, heads, d] order), so no pass over the [B, h, S, S] weights is
    # spent on normalising them.
    q, k, v, d = _split_heads(qkv, heads)
    e, total = _softmax_parts(_scores(q, k, bias, d))
    ctx = (e @ _f32(v)).transpose(0, 2, 1, 3) * mx.reciprocal(total).transpose(0, 2, 1, 3)
    B, S, h, _ = ctx.shape
    return _store(p, ctx.reshape(B, S, h * d))


def attn_probs(p: Precision, qkv: mx.array, bias: mx.array, heads: int) -> mx.array:
    q, k, _, d = _split_heads(qkv, heads)
    return _store(p, softmax_f32(_scores(q, k, bias, d), p.cpu))


def attn_apply(p: Precision, probs: mx.array, qkv: mx.array, heads: int) -> mx.array:
    _, _, v, _ = _split_heads(qkv, heads)
    return _store(p, _merge_heads(probs.astype(p.gemm) @ v.astype(p.gemm)))


def add_ln(p: Precision, x: mx.array, residual: mx.array, w: mx.array, b: mx.array, eps: float) -> mx.array:
    return layernorm(p, _f32(x) + _f32(residual), w, b, eps)


def first_token(p: Precision, x: mx.array) -> mx.array:
    return x[:, 0]


def concat(arrays: list[mx.array], axis: int) -> mx.array:
    return mx.concatenate(list(arrays), axis=axis)


# -- training: dropout and losses (float32, MLX's differentiable ops) -----------------------


def dropout(p: Precision, x: mx.array, seed: mx.array, rate: float, salt: int) -> mx.array:
    """x * keep / (1 - rate): the mask drawn from a key made of (seed, salt), so every node differs
    and a step repeats under the same seed (MLX's generator: not numpy's masks)."""
    if rate == 0.0:
        return x
    key = mx.stack([seed.astype(mx.uint32).reshape(()), mx.array(salt, mx.uint32)])
    keep = mx.random.bernoulli(1.0 - rate, x.shape, key=key)
    return _store(p, mx.where(keep, _f32(x) * (1.0 / (1.0 - rate)), 0.0))


def lora(p: Precision, y: mx.array, x: mx.array, a: mx.array, b: mx.array, scale: float, offset: int,
         activation_name: str) -> mx.array:
    """act(y + scale (x a^T) b^T on columns offset..offset+N): a LoRA adapter's path (cbert.ir)."""
    *lead, k = x.shape
    m, n = y.shape[-1], b.shape[0]
    x2 = x.reshape(-1, k).astype(p.gemm)
    delta = (x2 @ a.astype(p.gemm).T) @ b.astype(p.gemm).T * scale
    z = _f32(y.reshape(-1, m))
    if n == m:
        z = z + _f32(delta)
    else:  # a part of a fused Q/K/V output
        z = mx.concatenate([z[:, :offset], z[:, offset:offset + n] + _f32(delta), z[:, offset + n:]], axis=1)
    return _store(p, activation(z, activation_name, p.cpu).reshape(*lead, m))


def cross_entropy(p: Precision, logits: mx.array, labels: mx.array, reduction: str) -> mx.array:
    logits = _f32(logits)
    keep = labels != IGNORE_INDEX
    safe = mx.where(keep, labels, 0)
    lse = mx.logsumexp(logits, axis=-1)
    picked = mx.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    total = mx.sum(mx.where(keep, lse - picked, 0.0))
    if reduction == "sum":
        return total
    return total / mx.maximum(mx.sum(keep).astype(F32), 1.0)


def mse(p: Precision, prediction: mx.array, target: mx.array) -> mx.array:
    return mx.mean(mx.square(_f32(prediction) - _f32(target)))


def bce_logits(p: Precision, logits: mx.array, target: mx.array) -> mx.array:
    x, t = _f32(logits), _f32(target)
    return mx.mean(mx.maximum(x, 0.0) - x * t + mx.log1p(mx.exp(-mx.abs(x))))


def _counted_mean(per_row: mx.array, mask: mx.array | None) -> mx.array:
    """The mean of a row loss over the rows whose mask is not 0 (every row without a mask; 0 when none)."""
    if mask is None:
        return mx.mean(per_row)
    keep = mask.reshape(per_row.shape) != 0
    return mx.sum(mx.where(keep, per_row, 0.0)) / mx.maximum(mx.sum(keep).astype(F32), 1.0)


def kl_div(p: Precision, logits: mx.array, target: mx.array, mask: mx.array | None = None, *,
           temperature: float) -> mx.array:
    log_q = _f32(logits) / temperature
    log_q = log_q - mx.logsumexp(log_q, axis=-1, keepdims=True)
    log_p = _f32(target) / temperature
    log_p = log_p - mx.logsumexp(log_p, axis=-1, keepdims=True)
    return _counted_mean(mx.sum(mx.exp(log_p) * (log_p - log_q), axis=-1), mask)


def cosine(p: Precision, x: mx.array, target: mx.array, mask: mx.array | None = None) -> mx.array:
    x, t = _f32(x), _f32(target)
    eps = 1e-12  # CosineEmbeddingLoss's, as the numpy reference adds it
    cos = mx.sum(x * t, axis=-1) / mx.sqrt((mx.sum(x * x, axis=-1) + eps) * (mx.sum(t * t, axis=-1) + eps))
    return _counted_mean(1.0 - cos, mask)


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
    Op.DROPOUT: dropout,
    Op.LORA: lambda p, y, x, a, b, scale, offset, activation: lora(p, y, x, a, b, scale, offset, activation),
    Op.CROSS_ENTROPY: cross_entropy,
    Op.MSE: mse,
    Op.BCE_LOGITS: bce_logits,
    Op.PICK: lambda p, x, index: x[..., index],
    Op.WEIGHTED_SUM: lambda p, *scalars, weights: sum(w * s for w, s in zip(weights, scalars)),
    Op.KL_DIV: kl_div,
    Op.COSINE: cosine,
}

# Parameters that stay float32 in every dtype, by (op, input position): LayerNorm
# weights and biases (tiny, and the normalisation runs in float32).
FLOAT32_PARAMS = {Op.EMBED: (0, 1), Op.ADD_LN: (2, 3), Op.LAYERNORM: (1, 2)}
