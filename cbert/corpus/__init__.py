"""Embedding a corpus: Parquet, JSONL or CSV in, Parquet parts out, in one process or on Ray Data.

``embed_corpus`` (and ``cbert embed-corpus``) reads the input (:mod:`.read`), embeds the rows
no earlier run wrote, and writes them as parts renamed into place when complete
(:mod:`.output`), so a killed run resumes with no id missing or repeated (:mod:`.run`).
"""

from .output import read_output
from .read import find_sources, scan
from .run import embed_corpus

__all__ = ["embed_corpus", "find_sources", "read_output", "scan"]
