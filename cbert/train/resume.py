"""A run's folder and its resumable state, OUT/checkpoint-last/.

OUT holds the run's marker (``cbert-run.json``: what was trained, with which settings), its
log (``log.jsonl``), the model so far as a Hugging Face folder at the top level, and
``checkpoint-last/``: the float32 master weights, the AdamW moments, and ``trainer_state.json``
(step, schedule position, loss scale, best metric, the epoch's batch order). Every draw a run
makes (batch order, dropout masks, masked-LM masking) is a function of (seed, epoch, step), so
the seed and the step are the whole RNG state. checkpoint-last is replaced as one folder
(cbert.files.staged_folder): a run killed while saving keeps the previous one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..checkpoint.safetensors import SafetensorsFile
from ..errors import InputError
from ..files import check_target, read_json, staged_folder, write_atomic
from .save import write_into_new

RUN_FILE = "cbert-run.json"
LOG_FILE = "log.jsonl"
LAST = "checkpoint-last"
STATE_FILE = "trainer_state.json"
WEIGHTS = "model.safetensors"
MOMENTS = "optimizer.safetensors"

# The settings a resumed run must share with the run it continues, or its weights would differ.
SAME_ON_RESUME = ("task", "epochs", "lr", "batch_size", "grad_accum", "warmup_ratio", "weight_decay", "max_grad_norm",
                  "schedule", "precision", "seed", "max_steps", "whole_word_mask", "aggregation", "lora")


def prepare_out(out: Path, settings: Mapping, resume: bool, overwrite: bool) -> dict | None:
    """Make ``out`` ready for a run: a new or empty folder, an old one replaced (``overwrite``), or
    a run to continue (``resume``: its trainer state is returned). Refuses a folder that is not a
    cbert run unless ``overwrite``, and a finished or running one without ``resume``/``overwrite``."""
    check_target(out, replace=True, what="--out")
    marker = out / RUN_FILE
    if resume:
        if not marker.is_file():
            raise InputError(f"{out}: --resume: not a cbert training run (no {RUN_FILE}); nothing to resume")
        if not (out / LAST / STATE_FILE).is_file():
            raise InputError(f"{out}: --resume: the run saved no {LAST}/ yet; start it again without --resume")
        before = read_json(marker).get("settings", {})
        for key in SAME_ON_RESUME:
            if before.get(key) != settings.get(key):
                raise InputError(f"{out}: --resume: {key} = {settings.get(key)!r} differs from the run's "
                                 f"{before.get(key)!r} ({RUN_FILE}); resume with the run's settings")
        return read_json(out / LAST / STATE_FILE)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            if marker.is_file():
                raise InputError(f"{out}: holds an earlier cbert training run; pass --resume to continue it or "
                                 "--overwrite to start over")
            raise InputError(f"{out}: exists and is not a cbert training run; pass --overwrite to replace it")
        aside = out.with_name(f".{out.name}.replaced-{secrets.token_hex(4)}")
        os.rename(out, aside)
        shutil.rmtree(aside)
    out.mkdir(parents=True, exist_ok=True)
    data = (json.dumps({"cbert": "train", "settings": dict(settings)}, indent=2) + "\n").encode()
    write_atomic(marker, lambda f: f.write(data), overwrite=True)
    return None


def save_last(out: Path, params: Mapping[str, np.ndarray], moments: Mapping, state: Mapping) -> None:
    """Replace OUT/checkpoint-last with these weights (host float32, by graph name), AdamW moments
    (AdamW.state_dict) and trainer state."""
    from safetensors.numpy import save

    opt = {f"exp_avg/{k}": v for k, v in moments["exp_avg"].items()}
    opt.update({f"exp_avg_sq/{k}": v for k, v in moments["exp_avg_sq"].items()})
    files = {WEIGHTS: save({k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}),
             MOMENTS: save({k: np.ascontiguousarray(v, np.float32) for k, v in opt.items()}),
             STATE_FILE: (json.dumps({**state, "adam_steps": moments["steps"]}) + "\n").encode()}
    with staged_folder(out / LAST, replace=True, what=f"{out / LAST}") as tmp:
        write_into_new(tmp, files)


def load_last(out: Path) -> tuple[dict[str, np.ndarray], dict, dict]:
    """(weights by graph name, AdamW.state_dict, trainer state) of OUT/checkpoint-last."""
    folder = out / LAST
    state = read_json(folder / STATE_FILE)
    weights = SafetensorsFile(folder / WEIGHTS, copy=True)
    params = {k: weights.get(k) for k in weights.names()}
    stored = SafetensorsFile(folder / MOMENTS, copy=True)
    moments: dict = {"steps": state["adam_steps"], "exp_avg": {}, "exp_avg_sq": {}}
    for key in stored.names():
        kind, name = key.split("/", 1)
        moments[kind][name] = stored.get(key)
    return params, moments, state


def append_log(out: Path, record: Mapping) -> None:
    with open(out / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def truncate_log(out: Path, step: int) -> None:
    """Keep the log's records up to ``step`` (a resumed run logs the later ones again)."""
    path = out / LOG_FILE
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    data = "".join(line + "\n" for line in kept).encode()
    write_atomic(path, lambda f: f.write(data), overwrite=True)
