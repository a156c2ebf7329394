"""Fine-tuning on the op list: ``fit`` (what ``cbert train`` runs), the optimizer pieces, saving.

This file imports this package's trainer modules only: :mod:`.optim` (AdamW, schedules,
clipping, loss scaling), :mod:`.fit` (the trainer), :mod:`.save` (Hugging Face folders) and
:mod:`.resume` (the run folder and checkpoint-last).
"""

from .fit import fit
from .optim import AdamW, LossScaler, clip_grad_norm, lr_factor, no_decay_params

# -- LEAD: re-export the data side here once data.py / masking.py / metrics.py are merged, e.g.
# from .masking import mask_tokens

__all__ = ["AdamW", "LossScaler", "clip_grad_norm", "fit", "lr_factor", "no_decay_params"]
