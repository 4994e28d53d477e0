"""Serve an `Embedder` over HTTP with the OpenAI embeddings API (``promptlab serve``; extra ``[serve]``).

    from promptlab import Embedder
    from promptlab.serve import serving

    with serving(Embedder.load("my-embedder"), api_key="secret") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="secret")
        client.embeddings.create(model="my-embedder", input=["A man is playing a guitar."])

`serve` runs uvicorn in the foreground (the CLI); `serving` runs it on a background thread for notebooks,
tests and benchmarks. The protocol is in `promptlab.serve.protocol`, batching in `promptlab.serve.batcher`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from promptlab.errors import PromptlabError
from promptlab.serve.protocol import ApiError, Limits

__all__ = ["ApiError", "Limits", "create_app", "serve", "serving"]


def create_app(embedder, **options):
    """The FastAPI app (see `promptlab.serve.app.create_app`)."""
    from promptlab.serve.app import create_app as build

    return build(embedder, **options)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise PromptlabError(
            f"cannot listen on {host}:{port} ({err.strerror}); choose another --port."
        ) from None
    sock.listen(2048)
    return sock


def serve(embedder, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **options) -> None:
    """Serve ``embedder`` until interrupted (Ctrl-C). ``options`` as in `create_app`."""
    import uvicorn

    app = create_app(embedder, **options)
    sock = _listen(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])


@contextmanager
def serving(
    embedder, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", **options
) -> Iterator[str]:
    """Serve ``embedder`` on a background thread; yields the base URL (``port=0``: a free port)."""
    import uvicorn

    app = create_app(embedder, **options)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="promptlab-serve"
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the embedding server did not start; see its log above")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
