"""cbert: ClinicalBERT-family encoders on numpy, MLX and WebGPU, checked against Hugging Face."""

from .config import BertConfig
from .errors import BackendUnavailable, CheckpointError, InputError
from .model import Model, ModelOutput, load

__version__ = "0.1.0"

__all__ = ["BackendUnavailable", "BertConfig", "CheckpointError", "InputError", "Model", "ModelOutput", "load",
           "__version__"]
