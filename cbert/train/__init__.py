"""Fine-tuning on the op list: ``fit`` (what ``cbert train`` runs), the optimizer pieces, saving.

This file imports this package's trainer modules only: :mod:`.optim` (AdamW, schedules,
clipping, loss scaling), :mod:`.fit` (the trainer), :mod:`.save` (Hugging Face folders),
:mod:`.resume` (the run folder and checkpoint-last), :mod:`.data` (each task's files as
batches, ``read_labeled``), :mod:`.masking` (``mask_tokens``) and :mod:`.metrics`;
:mod:`.distill` (``distill``, what ``cbert train distill`` runs) and :mod:`.teacher_targets`.
"""

from .data import read_labeled, read_task
from .distill import distill
from .fit import fit
from .masking import mask_tokens
from .optim import AdamW, LossScaler, clip_grad_norm, lr_factor, no_decay_params

__all__ = ["AdamW", "LossScaler", "clip_grad_norm", "distill", "fit", "lr_factor", "mask_tokens", "no_decay_params",
           "read_labeled", "read_task"]
