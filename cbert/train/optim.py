"""The optimizer side of training: AdamW, learning-rate schedules, clipping and fp16 loss scaling.

Written once over an array module ``xp`` (numpy, or mlx.core): a gradient executable's ``xp``
(see LEARNING.md's gradient contract), so the numpy and MLX backends share every line here.
Each piece matches the PyTorch / transformers one its docstring names, step for step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ..ir import Graph, Op

SCHEDULES = ("linear", "cosine")


def no_decay_params(graph: Graph) -> frozenset[str]:
    """The parameters AdamW does not decay, as transformers.Trainer picks them (biases and LayerNorm
    weights), decided by the op that reads each one: every ``.bias``, and the scale and shift of
    LAYERNORM, ADD_LN and EMBED (its LayerNorm)."""
    params = set(graph.params)
    norm_operands = {Op.LAYERNORM: slice(1, 3), Op.ADD_LN: slice(2, 4), Op.EMBED: slice(0, 2)}
    found = {name for name in params if name.endswith(".bias")}
    for n in graph.nodes:
        if n.op in norm_operands:
            found.update(name for name in n.inputs[norm_operands[n.op]] if name in params)
    return frozenset(found)


class AdamW:
    """torch.optim.AdamW (decoupled weight decay, bias-corrected moments), over ``xp`` arrays.

    ``step`` replaces the entries of the ``params`` dict it is given (a gradient executable's
    float32 master weights) by their updated arrays; parameters named in ``no_decay`` are not
    decayed. https://github.com/pytorch/pytorch/blob/main/torch/optim/adamw.py (_single_tensor_adam)
    """

    def __init__(self, xp, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 no_decay: Iterable[str] = ()):
        self.xp = xp
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.no_decay = frozenset(no_decay)
        self.steps = 0  # updates applied (torch's per-parameter `step`; the same for every parameter here)
        self.exp_avg: dict = {}
        self.exp_avg_sq: dict = {}

    def step(self, params: dict, grads: Mapping, lr: float) -> None:
        xp, (beta1, beta2) = self.xp, self.betas
        self.steps += 1
        bias_correction1 = 1 - beta1 ** self.steps
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** self.steps)
        step_size = lr / bias_correction1
        for name, g in grads.items():
            p = params[name]
            if self.weight_decay and name not in self.no_decay:
                p = p * (1 - lr * self.weight_decay)
            m = self.exp_avg.get(name)
            v = self.exp_avg_sq.get(name)
            m = (1 - beta1) * g if m is None else m + (g - m) * (1 - beta1)  # torch: exp_avg.lerp_(grad, 1 - beta1)
            v = (1 - beta2) * (g * g) if v is None else v * beta2 + (g * g) * (1 - beta2)
            self.exp_avg[name], self.exp_avg_sq[name] = m, v
            params[name] = p - step_size * (m / (xp.sqrt(v) / bias_correction2_sqrt + self.eps))
        materialize(xp, params, self.exp_avg, self.exp_avg_sq)

    def state_dict(self, to_host: Callable) -> dict:
        """The moments as host float32 arrays, and the step count."""
        return {"steps": self.steps, "exp_avg": {k: to_host(v) for k, v in self.exp_avg.items()},
                "exp_avg_sq": {k: to_host(v) for k, v in self.exp_avg_sq.items()}}

    def load_state_dict(self, state: Mapping, from_host: Callable) -> None:
        self.steps = int(state["steps"])
        self.exp_avg = {k: from_host(np.asarray(v, np.float32)) for k, v in state["exp_avg"].items()}
        self.exp_avg_sq = {k: from_host(np.asarray(v, np.float32)) for k, v in state["exp_avg_sq"].items()}


def materialize(xp, *trees: Mapping) -> None:
    """Run a lazy backend's pending work (mx.eval), so each step's arrays do not chain the next."""
    run = getattr(xp, "eval", None)
    if run is not None and xp is not np:
        run([a for tree in trees for a in tree.values()])


# -- learning-rate schedules ------------------------------------------------------------------

def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """transformers.TrainingArguments.get_warmup_steps: ceil(ratio * total)."""
    return math.ceil(total_steps * warmup_ratio)


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The multiplier of the peak learning rate at optimizer step ``step`` (0 for the first update),
    as transformers' get_linear_schedule_with_warmup / get_cosine_schedule_with_warmup (half a cycle)
    give it through LambdaLR."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"schedule={schedule!r}; choose one of {', '.join(SCHEDULES)}")


# -- clipping and loss scaling -------------------------------------------------------------------

def global_norm(xp, grads: Mapping) -> float:
    """The L2 norm of every gradient together (inf or NaN when one holds such a value); one
    host read, however many gradients."""
    squares = [(g * g).sum() for g in grads.values()]
    if not squares:
        return 0.0
    total = float(sum(squares[1:], squares[0]).item())
    return math.sqrt(total) if math.isfinite(total) else math.nan


def clip_grad_norm(xp, grads: dict, max_norm: float, norm: float | None = None) -> float:
    """torch.nn.utils.clip_grad_norm_: scale every gradient by min(1, max_norm / (norm + 1e-6)) in
    place (entries replaced); returns the norm before clipping."""
    if norm is None:
        norm = global_norm(xp, grads)
    coef = min(1.0, max_norm / (norm + 1e-6))
    if coef < 1.0:  # torch multiplies by the clamped 1.0 too: the same values
        for name, g in grads.items():
            grads[name] = g * coef
    return norm


class LossScaler:
    """torch.amp.GradScaler's dynamic loss scale for float16: the loss is multiplied by ``scale``
    before the backward; a step whose gradients hold inf or NaN is skipped and halves the scale,
    and ``growth_interval`` good steps in a row double it."""

    def __init__(self, enabled: bool, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale = init_scale if enabled else 1.0
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.good_steps = 0

    def update(self, found_inf: bool) -> bool:
        """After one step's gradients: whether the step may be applied; adjusts the scale."""
        if not self.enabled:
            return not found_inf
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return False
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0
        return True

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, "scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: Mapping) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
