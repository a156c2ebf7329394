"""The HTTP routes: OpenAI's ``/v1/embeddings`` and TEI's ``/embed``, ``/predict``, ``/rerank``,
``/tokenize``, ``/info``, ``/health`` and ``/metrics``, thin shells over one :class:`Engine`.

Request and response shapes follow OpenAI's embeddings API and text-embeddings-inference's
``router/src/http/types.rs``. Bodies are read and checked here (size, JSON, each field), so a
bad request is a 4xx naming its field and never reaches the model.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from .. import __version__
from ..batching import FORWARD_COST_TOKENS, MAX_BATCH_TOKENS
from . import inputs as field
from .engine import Engine, QueueFull
from .inputs import ApiError
from .metrics import Metrics
from .pipeline import Pipeline, Prepared

log = logging.getLogger("cbert.serve")


@dataclass(frozen=True)
class ServeSettings:
    model_name: str  # what /info and OpenAI's ``model`` report: the folder's name, never its path
    pooling: str
    normalize: bool
    window_aggregation: str = "mean"  # how a long text's window vectors combine, as cbert embed
    aggregation: str = "mean"  # how a long text's window probabilities combine in /predict, as cbert classify
    stride: int | None = None
    max_batch_tokens: int = MAX_BATCH_TOKENS
    forward_tokens: int = FORWARD_COST_TOKENS  # more padding than this costs more than another forward
    max_client_batch_size: int = 64
    max_queue: int = 512
    max_input_tokens: int = 16384
    max_request_bytes: int = 2_000_000
    api_key: str | None = None
    batch_across_requests: bool = True


class _ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


async def _client_gone(request: Request) -> None:
    # With the body read, the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _float_or_base64(vector: np.ndarray, encoding_format: str):
    if encoding_format == "base64":  # little-endian float32 bytes, as OpenAI's client decodes them
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class _Routes:
    def __init__(self, model, settings: ServeSettings):
        self.model = model
        self.settings = settings
        self.metrics = Metrics()
        self.engine = Engine(model, settings.pooling, settings.max_batch_tokens, settings.max_queue, self.metrics,
                             settings.batch_across_requests, forward_tokens=settings.forward_tokens)
        self.metrics.queued_inputs = lambda: self.engine.queued_inputs
        self.pipeline = Pipeline(model, settings.pooling, settings.normalize, settings.window_aggregation,
                                 settings.stride, settings.max_input_tokens)
        self.hidden = model.config.hidden_size

    # -- what every route shares ----------------------------------------------------------------

    def endpoint(self, path: str, handler, openai: bool = False, public: bool = False, post: bool = True):
        async def answer(request: Request) -> Response:
            start = time.perf_counter()
            try:
                if not public:
                    self._authorize(request)
                body = await self._json(request) if post else None
                result = await handler(request, body)
                response = result if isinstance(result, Response) else JSONResponse(result)
            except ApiError as e:
                response = JSONResponse(e.body(openai), status_code=e.status(openai), headers=e.headers)
            except _ClientGone:
                response = Response(status_code=499)  # nobody reads it; counted as nginx counts a client gone
            except Exception as e:  # a bug or a failed backend: the request fails, the server keeps serving
                log.exception("%s failed", path)
                err = ApiError("backend", f"internal error: {type(e).__name__}: {e}")
                response = JSONResponse(err.body(openai), status_code=err.status(openai))
            self.metrics.requests.inc(route=path, status=str(response.status_code))
            self.metrics.request_seconds.observe(time.perf_counter() - start)
            return response

        return answer

    def _authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError("unauthorized", "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _json(self, request: Request) -> dict:
        limit = self.settings.max_request_bytes
        too_large = ApiError("too_large", f"the request body is larger than this server's --max-request-bytes {limit}",
                             code="body_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ApiError("validation", f"the request body is not UTF-8 ({e.reason} at byte {e.start})",
                           code="invalid_json") from None
        except json.JSONDecodeError as e:
            raise ApiError("validation", f"the request body is not valid JSON: {e.msg} at line {e.lineno} column "
                           f"{e.colno}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError("validation", f"the request body must be a JSON object; got {type(body).__name__}",
                           code="invalid_json")
        return body

    async def _prepare(self, inputs: list, param: str, truncate: bool) -> Prepared:
        # Tokenizing a batch of long notes takes milliseconds: off the event loop.
        return await asyncio.to_thread(self.pipeline.prepare, inputs, param, truncate)

    async def _compute(self, request: Request, prep: Prepared, output: str) -> list[np.ndarray]:
        """Queue the windows, wait for their forwards; a client that leaves takes its windows with it."""
        try:
            job, future = await self.engine.run(prep.windows, output, prep.n_inputs)
        except QueueFull as e:
            raise ApiError("overloaded", f"the server is busy: {e}; retry later", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not future.done():
                raise _ClientGone
            try:
                return future.result()
            except ValueError as e:
                raise ApiError("validation", str(e)) from None
            except Exception as e:
                raise ApiError("backend", f"the forward failed: {type(e).__name__}: {e}") from None
        finally:
            gone.cancel()
            if not future.done():
                self.engine.cancel(job)

    def _classifier_labels(self, route: str) -> int:
        n = self.model.checkpoint.heads.seq_cls
        if not n:
            raise ApiError("unsupported", f"{route} needs a sequence-classification checkpoint; this model is a "
                           f"{self.model.checkpoint.architecture}", code="unsupported_model")
        return n

    # -- routes ----------------------------------------------------------------------------------

    async def openai_embeddings(self, request: Request, body: dict):
        texts = field.texts_or_ids(body.get("input"), "input", self.settings.max_client_batch_size)
        encoding_format = field.choice(body, "encoding_format", ("float", "base64"), "float")
        dimensions = field.dimensions(body, self.hidden)
        model_name = field.optional_string(body, "model") or self.settings.model_name
        field.optional_string(body, "user")
        prep = await self._prepare(texts, "input", truncate=False)
        vectors = self.pipeline.embeddings(await self._compute(request, prep, "pooled"), prep, dimensions=dimensions)
        data = [{"object": "embedding", "embedding": _float_or_base64(v, encoding_format), "index": i}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": model_name,
                "usage": {"prompt_tokens": prep.tokens, "total_tokens": prep.tokens}}

    async def embed(self, request: Request, body: dict):
        texts = field.texts_or_ids(body.get("inputs"), "inputs", self.settings.max_client_batch_size)
        truncate = field.flag(body, "truncate", False)
        field.right_truncation(body)
        field.no_prompts(body)
        normalize = field.flag(body, "normalize", None)  # None: the server's default (see Pipeline.embeddings)
        dimensions = field.dimensions(body, self.hidden)
        prep = await self._prepare(texts, "inputs", truncate)
        pooled = await self._compute(request, prep, "pooled")
        return self.pipeline.embeddings(pooled, prep, normalize, dimensions).tolist()

    async def predict(self, request: Request, body: dict):
        self._classifier_labels("/predict")
        seqs, single = field.sequences(body.get("inputs"), "inputs", self.settings.max_client_batch_size)
        truncate = field.flag(body, "truncate", False)
        field.right_truncation(body)
        raw_scores = field.flag(body, "raw_scores", False)
        prep = await self._prepare(seqs, "inputs", truncate)
        logits = await self._compute(request, prep, "logits")
        scores = self.pipeline.class_scores(logits, prep, raw_scores, self.settings.aggregation)
        ranked = [self.pipeline.ranked_labels(s) for s in scores]
        return ranked[0] if single else ranked

    async def rerank(self, request: Request, body: dict):
        n_labels = self._classifier_labels("/rerank")
        if n_labels != 1:
            raise ApiError("unsupported", f"/rerank needs a cross-encoder (a sequence classifier with one label); "
                           f"this one has {n_labels} labels: use /predict", code="unsupported_model")
        query = field.string(body, "query")
        docs = field.texts(body.get("texts"), "texts", self.settings.max_client_batch_size)
        truncate = field.flag(body, "truncate", False)
        field.right_truncation(body)
        raw_scores = field.flag(body, "raw_scores", False)
        return_text = field.flag(body, "return_text", False)
        prep = await self._prepare([(query, d) for d in docs], "texts", truncate)
        logits = await self._compute(request, prep, "logits")
        # A long text is as relevant as its best window.
        scores = self.pipeline.class_scores(logits, prep, raw_scores, "max")[:, 0]
        return [{"index": int(i), **({"text": docs[i]} if return_text else {}), "score": float(scores[i])}
                for i in np.argsort(-scores, kind="stable")]

    async def tokenize(self, request: Request, body: dict):
        texts = field.texts(body.get("inputs"), "inputs", self.settings.max_client_batch_size)
        add_special = field.flag(body, "add_special_tokens", True)
        field.no_prompts(body)
        encs = await asyncio.to_thread(self.model.tokenizer.encode, texts, check_length=False)
        out = []
        for text, enc in zip(texts, encs):
            tokens = []
            for i, (start, stop) in enumerate(enc.offsets):
                if enc.special_tokens_mask[i]:
                    if add_special:
                        tokens.append({"id": enc.ids[i], "text": enc.tokens[i], "special": True, "start": None,
                                       "stop": None})
                else:  # offsets are characters of the text, as cbert ner gives them
                    tokens.append({"id": enc.ids[i], "text": text[start:stop], "special": False, "start": start,
                                   "stop": stop})
            out.append(tokens)
        return out

    async def info(self, request: Request, body: None):
        ckpt, s = self.model.checkpoint, self.settings
        n = ckpt.heads.seq_cls
        if n:
            labels = dict(enumerate(self.model.config.labels(n)))
            classifier = {"id2label": {str(k): v for k, v in labels.items()},
                          "label2id": {v: k for k, v in labels.items()}}
            model_type = {"reranker" if n == 1 else "classifier": classifier}
        else:
            model_type = {"embedding": {"pooling": s.pooling}}
        return {"model_id": s.model_name, "model_sha": None, "model_dtype": self.model.backend.dtype,
                "served_model_name": s.model_name, "model_type": model_type,
                "max_concurrent_requests": s.max_queue, "max_input_length": self.model.config.max_seq_len,
                "max_batch_tokens": s.max_batch_tokens, "max_batch_requests": None,
                "max_client_batch_size": s.max_client_batch_size, "auto_truncate": False,
                "tokenization_workers": 1, "version": __version__, "sha": None, "docker_label": None,
                "cbert": {"architecture": ckpt.architecture, "backend": self.model.backend.name,
                          "normalize": s.normalize, "window_aggregation": s.window_aggregation,
                          "aggregation": s.aggregation, "max_input_tokens": s.max_input_tokens,
                          "batch_across_requests": s.batch_across_requests}}

    async def health(self, request: Request, body: None):
        if not self.engine.healthy:
            raise ApiError("unhealthy", "unhealthy: the model's worker stopped, or its last forward failed")
        return Response(status_code=200)

    async def metrics_text(self, request: Request, body: None):
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")


def create_app(model, settings: ServeSettings) -> FastAPI:
    """The ASGI app serving ``model``; its engine runs from startup to shutdown (lifespan)."""
    routes = _Routes(model, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        routes.engine.start()
        try:
            yield
        finally:  # uvicorn has drained the in-flight requests; the worker finishes what is queued
            await asyncio.to_thread(routes.engine.stop)

    app = FastAPI(title="cbert", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.engine, app.state.metrics = routes.engine, routes.metrics
    post = [("/v1/embeddings", routes.openai_embeddings, True), ("/embeddings", routes.openai_embeddings, True),
            ("/embed", routes.embed, False), ("/predict", routes.predict, False), ("/rerank", routes.rerank, False),
            ("/tokenize", routes.tokenize, False)]
    for path, handler, openai in post:
        app.add_api_route(path, routes.endpoint(path, handler, openai=openai), methods=["POST"])
    app.add_api_route("/info", routes.endpoint("/info", routes.info, post=False), methods=["GET"])
    for path, handler in (("/health", routes.health), ("/metrics", routes.metrics_text)):
        app.add_api_route(path, routes.endpoint(path, handler, public=True, post=False), methods=["GET"])
    return app
