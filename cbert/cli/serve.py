"""``cbert serve``: the OpenAI- and TEI-compatible HTTP server (needs ``cbert[serve]``)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from pathlib import Path

from ..backends.compute_threads import set_compute_threads
from ..batching import FORWARD_COST_TOKENS, MAX_BATCH_TOKENS
from ..errors import UsageError
from .common import DEFAULT_MODEL_HELP, add_model_args, add_window_args, default_model_path, load_model


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket (port 0: any free port), so the address printed is the one served."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({e})") from None
    return sock


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from ..serve import ServeSettings, create_app
    except ImportError as e:
        raise UsageError(f"cbert serve needs FastAPI and uvicorn ({e}); install them with: "
                         'pip install "cbert[serve]"') from None
    if not is_loopback(args.host) and not args.api_key:
        raise UsageError(f"--host {args.host} is not a loopback address: serving beyond this machine requires "
                         "--api-key KEY (or the CBERT_API_KEY environment variable), which clients send as "
                         "'Authorization: Bearer KEY'")
    if args.max_queue < args.max_client_batch_size:
        raise UsageError(f"--max-queue {args.max_queue} is smaller than --max-client-batch-size "
                         f"{args.max_client_batch_size}: a full-size request could never be admitted")
    if args.model is None:
        args.model = default_model_path()
    if args.threads is not None:  # before the model loads: MLX's OpenBLAS reads it when it loads
        set_compute_threads(args.threads)
    model = load_model(args)
    pooling, normalize = model.embedding_defaults.resolve(args.pooling, args.normalize)
    # The tokenizer is read now: a broken one is a startup error, not a failed first request.
    room = model.config.max_seq_len - len(model.tokenizer.encode([""])[0].ids)
    if args.stride is not None and not 0 <= args.stride < room:
        raise UsageError(f"--stride {args.stride}: expected 0 <= stride < {room} (the text tokens per window)")
    settings = ServeSettings(
        model_name=args.served_model_name or Path(args.model).resolve().name, pooling=pooling, normalize=normalize,
        window_aggregation=args.window_aggregation, aggregation=args.aggregation, stride=args.stride,
        max_batch_tokens=args.max_batch_tokens, forward_tokens=args.forward_cost_tokens,
        max_client_batch_size=args.max_client_batch_size,
        max_queue=args.max_queue, max_input_tokens=args.max_input_tokens, max_request_bytes=args.max_request_bytes,
        api_key=args.api_key or None, batch_across_requests=not args.no_batching)
    app = create_app(model, settings)
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(f"cbert serve: {model!r} on {url} (pooling={pooling}, normalize={normalize}, max-batch-tokens="
          f"{args.max_batch_tokens}{', batching off' if args.no_batching else ''}, "
          f"{'library default' if args.threads is None else args.threads} compute threads, "
          f"auth {'on' if args.api_key else 'off'})", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=False, timeout_graceful_shutdown=None))
    # uvicorn drains on SIGTERM, then re-raises it; by then the drain is done, so exit with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run(sockets=[sock])
    print("cbert serve: stopped", file=sys.stderr, flush=True)
    return 0


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI- and TEI-compatible HTTP server (needs cbert[serve])", description=(
        "Serve a model over HTTP: OpenAI's POST /v1/embeddings and text-embeddings-inference's /embed, /predict, "
        "/rerank, /tokenize, /info, /health and /metrics. Requests from all clients share one queue, packed into "
        "forwards by a token budget. Long inputs are split into windows as cbert embed splits them. "
        f"Without --model the model is {DEFAULT_MODEL_HELP}"))
    add_model_args(s, required=False)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: loopback only; any other address requires --api-key)")
    s.add_argument("--port", type=int, default=8080, help="port (0: any free port; the one chosen is printed)")
    s.add_argument("--max-batch-tokens", type=_positive, default=MAX_BATCH_TOKENS,
                   help=f"token budget of one forward: rows x padded length (default {MAX_BATCH_TOKENS})")
    s.add_argument("--forward-cost-tokens", type=_non_negative, default=FORWARD_COST_TOKENS, metavar="N", help=(
        "a forward's fixed cost counted in padded tokens: a batch takes a longer input only when padding its rows "
        f"to the longer bucket costs at most this; otherwise the longer inputs get a forward of their own (default "
        f"{FORWARD_COST_TOKENS}, measured on a CPU; raise it where a forward's launch costs more than its arithmetic, "
        "as on a GPU: benchmarks/bench_serve.py --engine-only measures it)"))
    s.add_argument("--max-client-batch-size", type=_positive, default=64, help="most inputs in one request")
    s.add_argument("--max-queue", type=_positive, default=512,
                   help="most inputs waiting or being computed; beyond it requests get 429 with Retry-After")
    s.add_argument("--max-input-tokens", type=_positive, default=16384,
                   help="longest input in tokens (a longer one is a 413 unless the request truncates)")
    s.add_argument("--max-request-bytes", type=_positive, default=2_000_000, help="largest request body")
    s.add_argument("--api-key", default=os.environ.get("CBERT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $CBERT_API_KEY; none: no auth)")
    s.add_argument("--served-model-name", default=None,
                   help="the model name /info and /v1/embeddings report (default: the model folder's name)")
    s.add_argument("--pooling", choices=["cls", "mean", "max"], default=None,
                   help="default: what a sentence-transformers folder declares, else mean")
    s.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalize embeddings unless a request says (default: as a sentence-transformers folder "
                        "declares, else no)")
    add_window_args(s, "input", truncate=False)  # truncation is each request's choice, as in TEI
    s.add_argument("--aggregation", choices=["mean", "max", "vote"], default="mean",
                   help="how a long input's window probabilities combine in /predict, as in cbert classify")
    s.add_argument("--threads", type=_positive, default=None, metavar="N", help=(
        "BLAS/compute threads of the forward (numpy's and MLX's OpenBLAS, lavapipe; default: the library's, "
        "usually one per core). On a small shared machine 1 took the least CPU per request (README, Serving)"))
    s.add_argument("--no-batching", action="store_true",
                   help="one request per forward (to measure what batching across requests gains)")
    s.set_defaults(func=cmd_serve)
