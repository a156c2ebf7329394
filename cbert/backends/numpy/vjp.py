"""The numpy reference's backward: one short function per op, beside the forward ``TABLE``.

``VJP[op](ct, inputs, out, **attrs)`` takes the cotangent of a node's output, the node's inputs
(a tuple, in the node's order), its output as the forward computed it, and its attrs; it returns
one cotangent per input: None for an integer input (ids, masks, labels, the dropout seed).
Each is the gradient of the exact op (exact-erf GELU, exact softmax), computed in its inputs'
float dtype, so float64 inputs give float64 gradients (the finite-difference tests).
"""

from __future__ import annotations

import numpy as np

from ...ir import Op
from . import lowering
from .lowering import F32, _split_heads, attn_probs, counted, dropout_keep, erf, log_softmax, lora_delta

_SQRT_HALF = 0.7071067811865476  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)
_TANH_C, _TANH_A = 0.7978845608028654, 0.044715  # gelu_tanh's sqrt(2 / pi) and cubic coefficient


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def _layernorm(ct, x, w, eps):
    """(dx, dw, db) of LayerNorm(x) w + b, the statistics recomputed as the forward computes them."""
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(np.einsum("...i,...i->...", xc, xc)[..., None] / x.shape[-1] + F32(eps))
    xhat = xc * rstd
    g = ct * w
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (_rows(ct) * _rows(xhat)).sum(0), _rows(ct).sum(0)


def embed(ct, inputs, out, eps):
    ln_w, _, *tables_and_ids = inputs
    tables, ids = tables_and_ids[::2], tables_and_ids[1::2]
    x = sum(np.take(t, i, axis=0) for t, i in zip(tables, ids))
    dx, dw, db = _layernorm(ct, x, ln_w, eps)
    grads = [dw, db]
    for table, i in zip(tables, ids):
        dt = np.zeros(table.shape, dx.dtype)
        np.add.at(dt, i.reshape(-1), _rows(dx))  # a row read twice gets both cotangents
        grads += [dt, None]
    return tuple(grads)


def mask_bias(ct, inputs, out):
    return (None,)


def _activation_grad(pre, y, name):
    """d act(z) / dz at z = ``pre()`` (the op's pre-activation, recomputed only where needed); the
    forward's output ``y`` serves where it is enough."""
    if name == "none":
        return None
    if name == "relu":
        return y > 0
    if name == "tanh":
        return 1 - y * y
    z = pre()
    if name == "gelu":  # Phi(z) + z phi(z), Phi the normal CDF and phi its density
        return 0.5 * (1 + erf(z * _SQRT_HALF)) + z * np.exp(-0.5 * z * z) * _INV_SQRT_2PI
    if name == "gelu_tanh":
        t = np.tanh(_TANH_C * (z + _TANH_A * z * z * z))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _TANH_C * (1 + 3 * _TANH_A * z * z)
    if name == "silu":
        s = 0.5 * (1 + np.tanh(0.5 * z))  # the sigmoid, without exp's overflow
        return s * (1 + z * (1 - s))
    raise ValueError(f"unknown activation {name!r}")


def linear(ct, inputs, out, activation, needed=(True, True, True)):
    """``needed``: which operands a backward reads the cotangent of (see NEEDS_NEEDED)."""
    x, w, b = inputs
    d = _activation_grad(lambda: (_rows(x) @ w.T + b).reshape(out.shape), out, activation)
    dz = _rows(ct if d is None else ct * d).astype(ct.dtype, copy=False)
    return ((dz @ w).reshape(x.shape) if needed[0] else None, dz.T @ _rows(x) if needed[1] else None,
            dz.sum(0) if needed[2] else None)


def lora(ct, inputs, out, scale, offset, activation, needed=(True, True, True, True)):
    y, x, a, b = inputs
    n = b.shape[0]

    def pre():
        z = np.array(y, copy=True).reshape(-1, y.shape[-1])
        z[:, offset:offset + n] += lora_delta(x, a, b, scale)
        return z.reshape(y.shape)

    d = _activation_grad(pre, out, activation)
    dz = ct if d is None else ct * d
    dd = _rows(dz)[:, offset:offset + n]  # the cotangent of the low-rank term
    x2 = _rows(x)
    s = x.dtype.type(scale)
    dt = (dd @ b) * s  # of t = x a^T [rows, r]
    return (dz if needed[0] else None, (dt @ a).reshape(x.shape) if needed[1] else None,
            dt.T @ x2 if needed[2] else None, (dd.T @ (x2 @ a.T)) * s if needed[3] else None)


def _merge_heads(t: np.ndarray) -> np.ndarray:
    """[B, heads, S, d] -> [B, S, heads * d]."""
    B, heads, S, d = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, S, heads * d)


def _qkv_grad(dq, dk, dv) -> np.ndarray:
    """Per-head cotangents of q, k and v [B, heads, S, d] -> the cotangent of their packed qkv [B, S, 3H]."""
    return np.concatenate([_merge_heads(dq), _merge_heads(dk), _merge_heads(dv)], axis=-1)


def attn_probs_vjp(ct, inputs, probs, heads):
    """Through the softmax and the scaled scores: (dqkv with a zero v part, dbias)."""
    q, k, _, d = _split_heads(inputs[0], heads)
    ds = probs * (ct - (ct * probs).sum(-1, keepdims=True))  # softmax's backward
    scale = F32(1.0 / np.sqrt(d))  # the forward's float32 scale, whatever the dtype
    dq = (ds @ k) * scale
    dk = (ds.transpose(0, 1, 3, 2) @ q) * scale
    return _qkv_grad(dq, dk, np.zeros_like(dq)), ds.sum((1, 2))


def attn_apply_vjp(ct, inputs, out, heads):
    probs, qkv = inputs
    _, _, v, d = _split_heads(qkv, heads)
    B, S, _ = ct.shape
    dctx = ct.reshape(B, S, heads, d).transpose(0, 2, 1, 3)
    dv = probs.transpose(0, 1, 3, 2) @ dctx
    zero = np.zeros_like(dv)
    return dctx @ v.transpose(0, 1, 3, 2), _qkv_grad(zero, zero, dv)


def attention(ct, inputs, out, heads):
    qkv, bias = inputs
    probs = attn_probs(qkv, bias, heads)  # recomputed rather than kept: [B, heads, S, S] per layer
    dprobs, dqkv_v = attn_apply_vjp(ct, (probs, qkv), out, heads)
    dqkv_qk, dbias = attn_probs_vjp(dprobs, inputs, probs, heads)
    return dqkv_qk + dqkv_v, dbias


def add_ln(ct, inputs, out, eps):
    x, residual, w, _ = inputs
    dx, dw, db = _layernorm(ct, x + residual, w, eps)
    return dx, dx, dw, db


def layernorm(ct, inputs, out, eps):
    x, w, _ = inputs
    return _layernorm(ct, x, w, eps)


def first_token(ct, inputs, out):
    (x,) = inputs
    dx = np.zeros(x.shape, ct.dtype)
    dx[:, 0] = ct
    return (dx,)


def concat(ct, inputs, out, axis):
    ends = np.cumsum([np.shape(a)[axis] for a in inputs])[:-1]
    return tuple(np.split(ct, ends, axis=axis))


def dropout(ct, inputs, out, rate, salt):
    x, seed = inputs
    if rate == 0.0:
        return ct, None
    return ct * dropout_keep(x.shape, seed, salt, rate) * F32(1.0 / (1.0 - rate)), None


def cross_entropy(ct, inputs, out, reduction):
    """(softmax - one-hot) on the counted rows, over their number for "mean"; zero on ignored rows."""
    logits, labels = inputs
    keep = counted(labels)
    rows = np.exp(log_softmax(logits[keep]))
    rows[np.arange(len(rows)), labels[keep]] -= 1
    n = max(int(keep.sum()), 1) if reduction == "mean" else 1
    dlogits = np.zeros(logits.shape, logits.dtype)
    dlogits[keep] = rows * (ct / n)
    return dlogits, None


def mse(ct, inputs, out):
    prediction, target = inputs
    d = (prediction - target) * (2 * ct / prediction.size)
    return d, -d


def bce_logits(ct, inputs, out):
    x, t = inputs
    s = 0.5 * (1 + np.tanh(0.5 * x))  # sigmoid(x), without exp's overflow
    scale = ct / x.size
    return (s - t) * scale, -x * scale


def pick(ct, inputs, out, index):
    (x,) = inputs
    dx = np.zeros(x.shape, ct.dtype)
    dx[..., index] = ct
    return (dx,)


def weighted_sum(ct, inputs, out, weights):
    return tuple(np.asarray(ct * w, ct.dtype) for w in weights)


def _scatter_rows(g_rows: np.ndarray, like: np.ndarray, mask) -> np.ndarray:
    """Cotangents of the selected rows back in ``like``'s shape, zero on the rows a mask left out."""
    if mask is None:
        return g_rows.reshape(like.shape)
    full = np.zeros((int(np.prod(like.shape[:-1])), like.shape[-1]), g_rows.dtype)
    full[np.asarray(mask).reshape(-1) != 0] = g_rows
    return full.reshape(like.shape)


def kl_div(ct, inputs, out, temperature):
    """d/dlogits = (q - p) / T; d/dtarget = p (log p - log q - KL) / T; per counted row, over their number."""
    logits, target, *mask = inputs
    mask = mask[0] if mask else None
    rows, log_q, log_p = lowering.kl_rows(lowering.selected_rows(logits, mask), lowering.selected_rows(target, mask),
                                         temperature)
    scale = ct / (max(len(rows), 1) * temperature)
    p = np.exp(log_p)
    d_logits = (np.exp(log_q) - p) * scale
    d_target = p * (log_p - log_q - rows[:, None]) * scale
    grads = (_scatter_rows(d_logits.astype(logits.dtype, copy=False), logits, mask),
             _scatter_rows(d_target.astype(target.dtype, copy=False), target, mask))
    return grads + ((None,) if mask is not None else ())


def cosine(ct, inputs, out):
    """d(1 - cos)/dx = -(y / sqrt(ab) - cos x / a), and its mirror for y; over the counted rows' number."""
    x, y, *mask = inputs
    mask = mask[0] if mask else None
    xs, ys = lowering.selected_rows(x, mask), lowering.selected_rows(y, mask)
    cos, _, a, b = lowering.cosine_rows(xs, ys)
    scale = -ct / max(len(cos), 1)
    root = np.sqrt(a * b)[:, None]
    dx = (ys / root - cos[:, None] * xs / a[:, None]) * scale
    dy = (xs / root - cos[:, None] * ys / b[:, None]) * scale
    grads = (_scatter_rows(dx.astype(x.dtype, copy=False), x, mask),
             _scatter_rows(dy.astype(y.dtype, copy=False), y, mask))
    return grads + ((None,) if mask is not None else ())


# Ops whose backward takes ``needed`` (one bool per operand) and skips the cotangents nobody reads:
# a frozen weight's [N, K] gradient is never made when only adapters train (LoRA's point).
NEEDS_NEEDED = frozenset({Op.LINEAR, Op.LORA})

# op -> its backward. Attrs arrive as keyword arguments, as in the forward TABLE.
VJP = {
    Op.EMBED: embed,
    Op.MASK_BIAS: mask_bias,
    Op.LINEAR: linear,
    Op.ATTENTION: attention,
    Op.ATTN_PROBS: attn_probs_vjp,
    Op.ATTN_APPLY: attn_apply_vjp,
    Op.ADD_LN: add_ln,
    Op.LAYERNORM: layernorm,
    Op.FIRST_TOKEN: first_token,
    Op.CONCAT: concat,
    Op.DROPOUT: dropout,
    Op.LORA: lora,
    Op.CROSS_ENTROPY: cross_entropy,
    Op.MSE: mse,
    Op.BCE_LOGITS: bce_logits,
    Op.PICK: pick,
    Op.WEIGHTED_SUM: weighted_sum,
    Op.KL_DIV: kl_div,
    Op.COSINE: cosine,
}
