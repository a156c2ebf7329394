"""``cbert serve``: an OpenAI- and TEI-compatible HTTP server (FastAPI + uvicorn, ``cbert[serve]``).

One queue for every client, packed into forwards by a token budget (:mod:`cbert.batching`),
one forward at a time in a worker thread (:mod:`.engine`); the routes (:mod:`.app`) are thin
shells that check a request, queue its windows and shape the answer.
"""

from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
