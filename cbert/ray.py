"""cbert on Ray Data: callable classes for ``Dataset.map_batches`` (``pip install "cbert[ray]"``).

    ds = ray.data.read_parquet("notes/")
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": DIR, "backend": "numpy", "pooling": "mean"},
                        concurrency=4, batch_size=256, batch_format="pyarrow")
    ds.write_parquet("vectors/")

Each class loads the model once per actor, takes the ``text`` column (``text_column=``) of a
batch, and returns the batch as an Arrow table with its result columns added: ``Embedder``
adds ``vector`` (a fixed-size list of float32), ``n_tokens`` (the note's length in tokens,
special tokens included, before windowing) and ``n_windows``; ``ClassifyRow`` adds ``label``
and ``score``; ``NerRow`` adds ``entities``. Long notes are windowed exactly as
``Model.embed``, ``Model.classify`` and ``Model.ner`` window them, because these classes call
the same task functions. The classes themselves need pyarrow, not Ray: the single-process path of
``cbert embed-corpus`` calls the same ``Embedder``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .batching import MAX_BATCH_TOKENS
from .errors import InputError
from .extras import MissingDependency, need
from .tasks.embed import embed
from .tasks.windows import split

__all__ = ["ClassifyRow", "Embedder", "NerRow", "require_ray"]

RAY_INSTALL = 'pip install "cbert[ray]"'


def require_ray():
    """The ``ray`` module with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the part cbert uses; plain `ray` lacks its dependencies)
    except ImportError as e:
        raise MissingDependency(f"running on Ray needs ray[data], which is not installed ({e}); install it with: "
                                f"{RAY_INSTALL}") from None
    return ray


def _arrow():
    return need("pyarrow", "cbert.ray")


def as_table(batch):
    """A map_batches batch (Arrow table, pandas DataFrame or dict of numpy arrays) as an Arrow table."""
    pa = _arrow()
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, dict):
        return pa.table({name: _column(np.asarray(v)) for name, v in batch.items()})
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        return pa.Table.from_pandas(batch, preserve_index=False)
    raise TypeError(f"a batch must be a pyarrow Table, a pandas DataFrame or a dict of numpy arrays; "
                    f"got {type(batch).__name__}")


def _column(a: np.ndarray):
    pa = _arrow()
    # Ray hands an earlier stage's fixed-size list column (vectors) to numpy as [n, d], or as n arrays of d.
    rows = a if a.ndim == 2 else None
    if a.ndim == 1 and a.dtype == object and len(a) and all(
            isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype != object for x in a) and len(
            {len(x) for x in a}) == 1:
        rows = np.stack(list(a))
    if rows is not None and rows.dtype != object:
        return _fixed_size_list(rows)
    return pa.array(list(a) if a.ndim > 1 else a)


def _fixed_size_list(rows: np.ndarray):
    pa = _arrow()
    rows = np.ascontiguousarray(rows)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])


def vectors_array(vectors: np.ndarray):
    """[n, d] float32 as an Arrow fixed_size_list<float32>[d], the type vector stores expect."""
    return _fixed_size_list(np.asarray(vectors, dtype=np.float32))


class _TextTask(ABC):
    """Load a model once; per batch, read the text column and add result columns."""

    def __init__(self, model: str, backend: str = "auto", dtype: str = "float32", text_column: str = "text",
                 batch_size: int = 32, stride: int | None = None):
        import cbert

        self.model = cbert.load(model, backend=backend, dtype=dtype)
        self.text_column = text_column
        self.batch_size = batch_size
        self.stride = stride

    def __call__(self, batch):
        table = as_table(batch)
        if self.text_column not in table.column_names:
            raise InputError(f"the batch has no column {self.text_column!r} (columns: "
                             f"{', '.join(table.column_names)}); pass text_column=")
        column = table.column(self.text_column)
        if column.null_count:
            row = column.is_null().to_pylist().index(True)
            raise InputError(f"row {row} of the batch: the text ({self.text_column!r}) is null")
        texts = column.to_pylist()
        if texts and not all(isinstance(t, str) for t in texts):
            raise InputError(f"column {self.text_column!r} holds {column.type}, expected strings")
        for name, values in (self.columns(texts) if texts else self.empty()).items():
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, values)
            else:
                table = table.append_column(name, values)
        return table

    @abstractmethod
    def columns(self, texts: list[str]) -> dict:
        """The result columns (name -> Arrow array) for these texts."""

    @abstractmethod
    def empty(self) -> dict:
        """The same columns, empty, for a batch with no rows."""


class Embedder(_TextTask):
    """Adds ``vector`` (fixed-size list of float32), ``n_tokens`` and ``n_windows`` to each batch.

    ``pooling``, ``normalize``, ``window_aggregation``, ``truncation`` and ``stride`` mean what they
    mean to ``Model.embed``. A batch's windows are packed into forwards as the server packs them:
    at most ``max_batch_tokens`` padded tokens and ``batch_size`` windows each, sorted by length.
    """

    def __init__(self, model: str, backend: str = "auto", dtype: str = "float32", pooling: str = "mean",
                 normalize: bool = False, text_column: str = "text", batch_size: int = 32, stride: int | None = None,
                 window_aggregation: str = "mean", truncation: bool = False,
                 max_batch_tokens: int = MAX_BATCH_TOKENS):
        super().__init__(model, backend, dtype, text_column, batch_size, stride)
        self.pooling, self.normalize = pooling, normalize
        self.window_aggregation, self.truncation = window_aggregation, truncation
        self.max_batch_tokens = max_batch_tokens

    def columns(self, texts: list[str]) -> dict:
        pa = _arrow()
        m = self.model
        # Counted on the encodings Model.embed windows: the same tokenizer, truncation and stride.
        encodings = m.tokenizer.encode(texts, truncation=self.truncation, check_length=False)
        n_windows = [len(split(e, m.config.max_seq_len, self.stride)) for e in encodings]
        vectors = embed(m, texts, pooling=self.pooling, normalize=self.normalize, batch_size=self.batch_size,
                        truncation=self.truncation, window_aggregation=self.window_aggregation, stride=self.stride,
                        max_batch_tokens=self.max_batch_tokens)
        return {"vector": vectors_array(vectors), "n_tokens": pa.array([len(e.ids) for e in encodings], pa.int32()),
                "n_windows": pa.array(n_windows, pa.int32())}

    def empty(self) -> dict:
        pa = _arrow()
        d = self.model.config.hidden_size
        return {"vector": pa.array([], pa.list_(pa.float32(), d)), "n_tokens": pa.array([], pa.int32()),
                "n_windows": pa.array([], pa.int32())}


class ClassifyRow(_TextTask):
    """Adds ``label`` and ``score`` (the top label of ``Model.classify``; ``aggregation`` combines a long
    note's windows: mean, max or vote) to each batch."""

    def __init__(self, model: str, backend: str = "auto", dtype: str = "float32", text_column: str = "text",
                 aggregation: str = "mean", batch_size: int = 32, stride: int | None = None):
        super().__init__(model, backend, dtype, text_column, batch_size, stride)
        self.aggregation = aggregation

    def columns(self, texts: list[str]) -> dict:
        pa = _arrow()
        top = self.model.classify(texts, top_k=1, aggregation=self.aggregation, stride=self.stride,
                                  batch_size=self.batch_size)
        return {"label": pa.array([r["label"] for r in top], pa.string()),
                "score": pa.array([r["score"] for r in top], pa.float32())}

    def empty(self) -> dict:
        pa = _arrow()
        return {"label": pa.array([], pa.string()), "score": pa.array([], pa.float32())}


class NerRow(_TextTask):
    """Adds ``entities``: per row, the list of ``Model.ner``'s spans {entity_group, score, word, start, end}."""

    def columns(self, texts: list[str]) -> dict:
        spans = self.model.ner(texts, stride=self.stride, batch_size=self.batch_size)
        return {"entities": _arrow().array(spans, _entity_list())}

    def empty(self) -> dict:
        return {"entities": _arrow().array([], _entity_list())}


def _entity_list():
    pa = _arrow()
    return pa.list_(pa.struct([("entity_group", pa.string()), ("score", pa.float32()), ("word", pa.string()),
                               ("start", pa.int64()), ("end", pa.int64())]))
