"""Why did the model say that: token attributions by several methods, counterfactual edits, sanity
checks, and a self-contained HTML page (``cbert explain``).

One module per method (:mod:`.gradients`, :mod:`.occlusion`, :mod:`.rollout`, :mod:`.shap_lime`),
registered by name in :mod:`.methods`; :mod:`.subject` and :mod:`.targets` hold what a prediction is
for each task and how a long note's windows are mapped back onto the whole note.
"""

from .methods import CORE_METHODS, METHODS, Explanation, Options, explain, run_method
from .shap_lime import predict_proba
from .subject import TASKS, Subject, default_task, make_subject

__all__ = ["CORE_METHODS", "METHODS", "TASKS", "Explanation", "Options", "Subject", "default_task", "explain",
           "make_subject", "predict_proba", "run_method"]
