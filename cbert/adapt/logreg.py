"""L2-regularized logistic regression on the host, as scikit-learn's LogisticRegression fits it.

scikit-learn's own (lbfgs) when it is installed (``pip install "cbert[probe]"``), else the same
objective minimized here by L-BFGS in numpy: ``C * sum_i loss_i + ||W||^2 / 2``, the intercept not
penalized; the binomial loss for two classes (one weight vector), the multinomial loss for more.
Features are standardized first (mean 0, variance 1 on the training rows) and the scaling folded
back into the weights, so ``coef``/``intercept`` act on the raw features.

https://github.com/scikit-learn/scikit-learn/blob/main/sklearn/linear_model/_logistic.py
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ITER = 1000


@dataclass(frozen=True)
class LogReg:
    """A fitted model over raw features: logits = x coef^T + intercept ([n, classes]; two classes as
    [0, z], whose softmax is sigmoid(z), so every model is read as a softmax over its logits)."""

    coef: np.ndarray  # [classes, features]
    intercept: np.ndarray  # [classes]

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.coef.T + self.intercept

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(1)


def sklearn_available() -> bool:
    try:
        import sklearn.linear_model  # noqa: F401
    except ImportError:
        return False
    return True


def fit(x: np.ndarray, y: np.ndarray, classes: int, C: float, use_sklearn: bool | None = None) -> LogReg:
    """Fit on rows ``x`` [n, d] with labels ``y`` in 0..classes-1 (each class present)."""
    x = np.asarray(x, np.float64)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    z = (x - mean) / std
    if use_sklearn is None:
        use_sklearn = sklearn_available()
    w, b = (_fit_sklearn if use_sklearn else _fit_numpy)(z, y, classes, C)
    if classes == 2:  # the binomial model's one vector as the logits [0, z]
        w, b = np.stack([np.zeros_like(w[0]), w[0]]), np.array([0.0, b[0]])
    coef = w / std
    return LogReg(coef, b - coef @ mean)


def _fit_sklearn(z, y, classes, C):
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=C, max_iter=MAX_ITER, tol=1e-6).fit(z, y)
    return m.coef_, m.intercept_


def _loss_and_grad(params, z, y, classes, C):
    """sklearn's objective over [W | b] flat: C * sum of losses + ||W||^2 / 2."""
    n, d = z.shape
    k = 1 if classes == 2 else classes
    wb = params.reshape(k, d + 1)
    w, b = wb[:, :d], wb[:, d]
    logits = z @ w.T + b
    if classes == 2:
        t = y.astype(np.float64)[:, None]
        loss = np.logaddexp(0.0, logits) - t * logits
        dlogits = 1 / (1 + np.exp(-logits)) - t
    else:
        m = logits.max(1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
        loss = lse - logits[np.arange(n), y]
        p = np.exp(logits - lse[:, None])
        p[np.arange(n), y] -= 1
        dlogits = p
    f = C * loss.sum() + 0.5 * (w * w).sum()
    g = np.concatenate([C * dlogits.T @ z + w, C * dlogits.sum(0)[:, None]], axis=1)
    return f, g.ravel()


def _fit_numpy(z, y, classes, C, history: int = 10, gtol: float = 1e-6):
    """L-BFGS with a backtracking (Armijo) line search; stops when the gradient's largest entry is
    below ``gtol`` (scaled by the data, as lbfgs' pgtol is) or after MAX_ITER steps."""
    n, d = z.shape
    k = 1 if classes == 2 else classes
    x = np.zeros(k * (d + 1))
    f, g = _loss_and_grad(x, z, y, classes, C)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    tol = gtol * max(1.0, C * n)
    for _ in range(MAX_ITER):
        if np.abs(g).max() <= tol:
            break
        q = g.copy()
        alphas = []
        for s, yv in reversed(list(zip(s_hist, y_hist))):
            a = s @ q / (yv @ s)
            alphas.append(a)
            q -= a * yv
        if s_hist:
            q *= (s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1])
        for (s, yv), a in zip(zip(s_hist, y_hist), reversed(alphas)):
            q += s * (a - yv @ q / (yv @ s))
        direction = -q
        slope = g @ direction
        if slope >= 0:  # not a descent direction: restart from the gradient
            direction, slope, s_hist, y_hist = -g, -(g @ g), [], []
        step = 1.0 if s_hist else 1.0 / max(np.abs(g).max(), 1.0)
        while True:
            x_new = x + step * direction
            f_new, g_new = _loss_and_grad(x_new, z, y, classes, C)
            if f_new <= f + 1e-4 * step * slope or step < 1e-20:
                break
            step *= 0.5
        s, yv = x_new - x, g_new - g
        if s @ yv > 1e-12:
            s_hist.append(s)
            y_hist.append(yv)
            if len(s_hist) > history:
                s_hist.pop(0)
                y_hist.pop(0)
        x, f, g = x_new, f_new, g_new
    wb = x.reshape(k, d + 1)
    return wb[:, :d], wb[:, d]
