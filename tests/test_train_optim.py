"""The optimizer pieces against PyTorch and transformers: AdamW + schedule + clipping over steps,
the schedules step by step, fp16 loss scaling against torch.amp.GradScaler, no-decay parameters."""

from __future__ import annotations

import numpy as np
import pytest

from cbert.families import build_graph
from cbert.heads import Heads
from cbert.train.optim import AdamW, LossScaler, clip_grad_norm, global_norm, lr_factor, no_decay_params, warmup_steps

SHAPES = {"w": (7, 5), "layer.bias": (7,), "norm.weight": (5,), "big": (3, 4, 2)}


def _xp(name: str):
    if name == "numpy":
        return np, np.asarray, lambda a: a
    import mlx.core as mx

    return mx, lambda a: np.array(a), mx.array


@pytest.mark.parametrize("xp_name", ["numpy", "mlx"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_adamw_schedule_clipping_equal_torch(xp_name, schedule):
    import torch
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    xp, to_host, from_host = _xp(xp_name)
    rng = np.random.default_rng(0)
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    # gradients of every size, so that clipping both bites (norm > 1) and does not
    grads = [{k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in SHAPES.items()}
             for scale in (3.0, 0.01, 1.0, 5.0, 0.2)]
    lr, wd, max_norm, total = 1e-2, 0.1, 1.0, len(grads)
    warmup = warmup_steps(total, 0.4)
    no_decay = {"layer.bias", "norm.weight"}

    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
    opt = torch.optim.AdamW([{"params": [p for k, p in tparams.items() if k not in no_decay], "weight_decay": wd},
                             {"params": [p for k, p in tparams.items() if k in no_decay], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    make = get_linear_schedule_with_warmup if schedule == "linear" else get_cosine_schedule_with_warmup
    sched = make(opt, warmup, total)

    params = {k: from_host(v.copy()) for k, v in init.items()}
    adam = AdamW(xp, weight_decay=wd, no_decay=no_decay)
    norms = []
    for step, g in enumerate(grads):
        for k, p in tparams.items():
            p.grad = torch.from_numpy(g[k].copy())
        torch_norm = float(torch.nn.utils.clip_grad_norm_(list(tparams.values()), max_norm))
        opt.step()
        sched.step()
        ours = {k: from_host(v) for k, v in g.items()}
        norms.append((clip_grad_norm(xp, ours, max_norm), torch_norm))
        adam.step(params, ours, lr * lr_factor(schedule, step, warmup, total))
    for ours_norm, torch_norm in norms:
        assert ours_norm == pytest.approx(torch_norm, rel=1e-6)
    for k, p in tparams.items():
        np.testing.assert_allclose(to_host(params[k]), p.detach().numpy(), rtol=0, atol=1e-6, err_msg=k)
    state = adam.state_dict(to_host)
    for k, p in tparams.items():
        np.testing.assert_allclose(state["exp_avg"][k], opt.state[p]["exp_avg"].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(state["exp_avg_sq"][k], opt.state[p]["exp_avg_sq"].numpy(), rtol=0, atol=1e-6)
    assert state["steps"] == total


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("total,ratio", [(10, 0.0), (10, 0.25), (7, 0.5), (3, 1.0)])
def test_schedules_equal_transformers(schedule, total, ratio):
    import torch
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    make = get_linear_schedule_with_warmup if schedule == "linear" else get_cosine_schedule_with_warmup
    warmup = warmup_steps(total, ratio)
    sched = make(opt, warmup, total)
    for step in range(total + 2):  # past the end too: the factor stays at 0
        assert lr_factor(schedule, step, warmup, total) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="schedule='step'"):
        lr_factor("step", 0, 0, 10)


def test_loss_scaler_equals_grad_scaler():
    """Skip-and-halve on inf/NaN, doubling after growth_interval good steps, as torch.amp.GradScaler."""
    import torch

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    torch_scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=2)
    ours = LossScaler(True, init_scale=8.0, growth_interval=2)
    pattern = [False, False, True, False, np.nan, False, False, False, True, True, False]
    for bad in pattern:
        torch_scaler.scale(torch.ones(()))  # the scale is created lazily by a first scale()
        before = p.detach().clone()
        value = np.inf if bad is True else (np.nan if bad is not False else 1.0)
        p.grad = torch.full((2,), float(value)) * torch_scaler.get_scale()
        torch_scaler.step(opt)
        torch_scaler.update()
        grads = {"p": np.full(2, value, np.float32)}
        applied = ours.update(not np.isfinite(global_norm(np, grads)))
        assert applied == (not torch.equal(before, p.detach()))
        assert ours.scale == torch_scaler.get_scale()
    disabled = LossScaler(False)
    assert disabled.scale == 1.0 and disabled.update(False) and not disabled.update(True)


def test_global_norm_reads_inf_and_nan():
    assert global_norm(np, {}) == 0.0
    assert global_norm(np, {"a": np.array([3.0, 4.0], np.float32)}) == pytest.approx(5.0)
    assert not np.isfinite(global_norm(np, {"a": np.array([1.0, np.inf], np.float32)}))
    assert not np.isfinite(global_norm(np, {"a": np.array([1.0, np.nan], np.float32)}))


def test_no_decay_by_the_op_that_reads_a_parameter(checkpoints):
    from cbert.config import ModelConfig

    folder, _ = checkpoints("head32_mlm")
    cfg = ModelConfig.from_file(f"{folder}/config.json")
    graph = build_graph(cfg, Heads(mlm=True, seq_cls=0))
    skip = no_decay_params(graph)
    assert "embeddings.LayerNorm.weight" in skip and "embeddings.LayerNorm.bias" in skip
    assert "encoder.layer.0.attention.output.LayerNorm.weight" in skip  # ADD_LN
    assert "cls.predictions.transform.LayerNorm.weight" in skip  # LAYERNORM
    assert "encoder.layer.0.attention.self.query.bias" in skip and "cls.predictions.bias" in skip
    decayed = set(graph.params) - skip
    assert "embeddings.word_embeddings.weight" in decayed and "encoder.layer.0.attention.self.query.weight" in decayed
    assert all(not n.endswith(".bias") and "LayerNorm" not in n for n in decayed)
