"""Tasks over whole notes, shaped like Hugging Face pipelines: embed, classify, ner, qa, fill_mask.

Every windowed task splits a text longer than the model's positions into overlapping windows
(:mod:`cbert.tasks.windows`) and aggregates, so nothing is silently truncated; a text that fits
gives exactly the un-windowed result. The window running they share is :mod:`cbert.tasks.run`.
"""

from __future__ import annotations

from .classify import class_probabilities as classify_probabilities
from .classify import classify
from .embed import POOLINGS, embed, pool
from .fill_mask import fill_mask
from .ner import group_entities, ner
from .qa import qa
from .run import run_windows

__all__ = ["POOLINGS", "classify", "classify_probabilities", "embed", "fill_mask", "group_entities", "ner", "pool",
           "qa", "run_windows"]
