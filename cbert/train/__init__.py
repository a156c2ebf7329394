"""Fine-tuning on the op list: ``fit`` (what ``cbert train`` runs), the optimizer pieces, saving.

Only this package's own modules are imported here, each where it lives:
:mod:`.optim` (AdamW, schedules, clipping, loss scaling), :mod:`.fit` (the trainer),
:mod:`.save` (Hugging Face folders), :mod:`.resume` (checkpoint-last).
"""

from .optim import AdamW, LossScaler, clip_grad_norm, lr_factor, no_decay_params

# -- the data side (data.py, masking.py, metrics.py) is re-exported on the line below once it lands --
# from .masking import mask_tokens

__all__ = ["AdamW", "LossScaler", "clip_grad_norm", "lr_factor", "no_decay_params"]
