"""Embed a corpus into Parquet parts, in this process or on Ray Data; resumable, with a progress bar.

Both paths cut the input into parts by one chunk loop (:func:`pending_parts`: the rows no earlier
run wrote, file by file, ``part_rows`` at a time), embed each with the same
:class:`cbert.ray.Embedder` and write it here with the same :func:`write_part`; Ray only spreads
the parts over Embedder actors (``workers``), so its output equals the single-process output, part
for part. Either way one progress bar, in this process, counts the parts written.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..batching import MAX_BATCH_TOKENS
from ..errors import UsageError
from ..extras import MissingDependency, need
from ..ray import Embedder, require_ray
from .lance import lance_paths, write_lance
from .output import N_TOKENS, N_WINDOWS, VECTOR, done_ids, prepare, write_part
from .read import FILE, Corpus, Source, arrow, read_source, scan


def embed_corpus(input: str | os.PathLike, output: str | os.PathLike, model: str | os.PathLike, *,
                 text_column: str = "text", id_column: str = "id", pooling: str = "mean", normalize: bool = False,
                 backend: str = "auto", dtype: str = "float32", batch_size: int = 32, stride: int | None = None,
                 window_aggregation: str = "mean", truncation: bool = False, ray: str = "auto",
                 workers: int | None = None, part_rows: int = 1000, overwrite: bool = False,
                 progress: bool = True, max_batch_tokens: int = MAX_BATCH_TOKENS, format: str = "parquet") -> dict:
    """Embed every row of ``input`` (Parquet, JSONL or CSV: a file or a folder) into Parquet parts in ``output``.

    ``ray``: "auto" (Ray when installed: the cluster at RAY_ADDRESS, else a local runtime started here; without
    Ray, this process), "local" (a local Ray runtime), "none" (this process) or a Ray cluster address. A rerun
    of the same job resumes: it embeds only the ids no part holds yet. ``format="lance"``: ``output`` is a
    LanceDB table folder NAME.lance, built from the same parts when all are written (:mod:`.lance`). Returns
    the summary: rows, tokens, windows, seconds, tokens_per_s, ...
    """
    if format not in ("parquet", "lance"):
        raise UsageError(f"format={format!r}; expected parquet or lance")
    table_out = None
    if format == "lance":
        table_out, output = lance_paths(output, overwrite)
    counts = {"batch_size": batch_size, "part_rows": part_rows, "workers": 1 if workers is None else workers,
              "max_batch_tokens": max_batch_tokens}
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"{name}={value!r}; expected a positive integer")
    if id_column in (VECTOR, N_TOKENS, N_WINDOWS) or id_column == text_column:
        raise UsageError(f"id column {id_column!r}: the output's columns are {id_column}, {VECTOR}, {N_TOKENS}, "
                         f"{N_WINDOWS}; rename it")
    mode = _resolve_mode(ray)
    started = time.perf_counter()
    corpus = scan(input, text_column, id_column)
    model = _checked_model(model)
    job = {"input": _describe_input(input, corpus.sources), "text_column": text_column, "id_column": id_column,
           "model": model, "pooling": pooling, "normalize": normalize, "stride": stride,
           "window_aggregation": window_aggregation, "truncation": truncation, "backend": backend, "dtype": dtype}
    resumed = prepare(output, job, overwrite)
    done = done_ids(output, id_column, corpus.ids)
    embedder_kwargs = dict(model=model, backend=backend, dtype=dtype, pooling=pooling, normalize=normalize,
                           text_column=text_column, batch_size=batch_size, stride=stride,
                           window_aggregation=window_aggregation, truncation=truncation,
                           max_batch_tokens=max_batch_tokens)
    bar = Progress(corpus.n_rows, len(done), enabled=progress)
    pending = corpus.n_rows - len(done)
    ran_on = "this process" if mode is None else "Ray"
    if pending:
        if mode is None:
            _run_here(corpus, done, Path(output), embedder_kwargs, part_rows, bar)
        else:
            ran_on = _run_on_ray(mode, corpus, done, Path(output), embedder_kwargs, part_rows, workers, bar)
    bar.close()
    if table_out is not None:
        write_lance(Path(output), table_out, overwrite)
        output = table_out
    seconds = time.perf_counter() - started
    return {"rows": bar.rows, "tokens": bar.tokens, "windows": bar.windows, "skipped": len(done),
            "total_rows": corpus.n_rows, "seconds": seconds, "tokens_per_s": bar.tokens / max(bar.seconds, 1e-9),
            "rows_per_s": bar.rows / max(bar.seconds, 1e-9), "resumed": resumed, "ran_on": ran_on,
            "output": str(output)}


def _resolve_mode(ray: str) -> str | None:
    """None for this process, else "auto", "local" or an address; a missing Ray is an error only when asked for."""
    if not ray:
        raise UsageError("--ray: empty; expected auto, local, none or a Ray cluster address")
    if ray == "none":
        return None
    if ray == "auto":
        try:
            require_ray()
        except MissingDependency:
            print("embed-corpus: Ray is not installed, so this process embeds the corpus "
                  '(pip install "cbert[ray]" to spread it over Ray workers)', file=sys.stderr)
            return None
        return "auto"
    require_ray()
    return ray


def _checked_model(model) -> str:
    """The checkpoint folder as an absolute path, checked here so a bad one fails before any work starts."""
    from ..checkpoint import load_checkpoint

    path = str(Path(model).resolve())
    load_checkpoint(path)
    return path


def _describe_input(input, sources: list[Source]) -> dict:
    root = Path(input)
    files = [{"path": str(Path(s.path).relative_to(root)) if root.is_dir() else root.name,
              "bytes": os.path.getsize(s.path)} for s in sources]
    return {"path": str(root.resolve()), "files": files}


def pending_parts(corpus: Corpus, done, part_rows: int):
    """The chunk loop both paths share: file by file, the rows whose ids are not in ``done`` (with _file and
    _row), cut into parts of ``part_rows`` rows (a file's last part may be shorter; no part spans files)."""
    pa, pc = arrow(), need("pyarrow.compute", "cbert embed-corpus")
    for i, source in enumerate(corpus.sources):
        held, n = [], 0
        for table in read_source(source, corpus.text_column, corpus.id_column):
            if len(done):
                table = table.filter(pc.invert(pc.is_in(table.column(corpus.id_column), value_set=done)))
            held.append(table.append_column(FILE, pa.array([i] * table.num_rows, pa.int32())))
            n += table.num_rows
            while n >= part_rows:
                whole = pa.concat_tables(held)
                yield whole.slice(0, part_rows)
                held, n = [whole.slice(part_rows)], n - part_rows
        if n:
            yield pa.concat_tables(held)


def _run_here(corpus: Corpus, done, output: Path, embedder_kwargs: dict, part_rows: int, bar) -> None:
    embedder = Embedder(**embedder_kwargs)
    for part in pending_parts(corpus, done, part_rows):
        bar.add(write_part(output, embedder(part), corpus.id_column))


class _EmbedderActor:
    """An Embedder in a Ray actor (module level, so workers import it by name): the model loads once per actor."""

    def __init__(self, embedder_kwargs: dict):
        self.embedder = Embedder(**embedder_kwargs)

    def embed(self, part):
        return self.embedder(part)


def _run_on_ray(mode: str, corpus: Corpus, done, output: Path, embedder_kwargs: dict, part_rows: int,
                workers: int | None, bar) -> str:
    """The same parts as in this process, each embedded by one of ``workers`` Ray actors and written here.

    Only this process reads IN and writes OUT: the nodes of a cluster need cbert and the model folder,
    not the data. At most one part per actor is in flight, so memory stays bounded.
    """
    ray = require_ray()
    started_here = _connect(ray, mode)
    actors = []
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        workers = workers or max(1, int(cpus))
        # An actor that dies (a lost node) restarts and its part is retried; the part is written once either way.
        remote = ray.remote(_EmbedderActor).options(num_cpus=min(1.0, cpus / workers), max_restarts=1,
                                                   max_task_retries=1)
        actors = [remote.remote(embedder_kwargs) for _ in range(workers)]
        idle, busy = list(actors), {}

        def finish_one() -> None:
            (ref,), _ = ray.wait(list(busy), num_returns=1)
            idle.append(busy.pop(ref))
            bar.add(write_part(output, ray.get(ref), corpus.id_column))

        for part in pending_parts(corpus, done, part_rows):
            if not idle:
                finish_one()
            actor = idle.pop()
            busy[actor.embed.remote(part)] = actor
        while busy:
            finish_one()
        return f"Ray ({workers} workers)"
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _connect(ray, mode: str) -> bool:
    """Join or start a Ray runtime; True when this call started (or joined) it and so must shut it down."""
    if ray.is_initialized():
        return False  # the caller's runtime (a Python session, a test): use it, leave it running
    local = mode == "local" or (mode == "auto" and not os.environ.get("RAY_ADDRESS"))
    kwargs = dict(logging_level="WARNING", log_to_driver=False)
    if local:
        kwargs.update(include_dashboard=False)
    try:
        ray.init(address="local" if local else (None if mode == "auto" else mode), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"--ray {mode}: cannot start or reach a Ray runtime ({str(e).splitlines()[0]})") from None
    return True


class Progress:
    """A one-line progress bar on stderr: rows done of all, tokens/s, time left."""

    def __init__(self, total: int, skipped: int, enabled: bool = True, width: int = 30):
        self.total, self.skipped, self.enabled, self.width = total, skipped, enabled, width
        self.rows = self.tokens = self.windows = 0
        self.start = time.perf_counter()
        self.seconds = 0.0
        self._shown = 0.0
        if enabled and skipped:
            print(f"embed-corpus: resuming: {skipped:,} of {total:,} rows are already embedded", file=sys.stderr)

    def add(self, counts: dict) -> None:
        self.rows += counts["rows"]
        self.tokens += counts["tokens"]
        self.windows += counts["windows"]
        self.seconds = time.perf_counter() - self.start
        if self.enabled and (time.perf_counter() - self._shown > 0.2 or self.skipped + self.rows == self.total):
            self._shown = time.perf_counter()
            done = self.skipped + self.rows
            filled = int(self.width * done / max(self.total, 1))
            rate = self.rows / max(self.seconds, 1e-9)
            left = (self.total - done) / rate if rate else 0
            print(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done:,}/{self.total:,} rows, "
                  f"{self.tokens / max(self.seconds, 1e-9):,.0f} tokens/s, {left:,.0f} s left ", end="",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.rows:
            print(file=sys.stderr)
