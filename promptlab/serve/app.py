"""The HTTP app: OpenAI-compatible ``POST /v1/embeddings``, ``GET /v1/models``, ``/health``, ``/metrics``.

FastAPI, uvicorn and prometheus-client are the ``[serve]`` extra, imported when an app is built.
``/health`` and ``/metrics`` are open (for load balancers and scrapers); with an API key set, the ``/v1``
routes answer 401 unless the request carries ``Authorization: Bearer KEY``.
"""

import hmac
import json
import time
from contextlib import asynccontextmanager
from typing import Any

from promptlab.errors import PromptlabError
from promptlab.serve.batcher import Batcher
from promptlab.serve.protocol import ApiError, Limits, embeddings_response, parse_request

ROUTES = ("/v1/embeddings", "/v1/models", "/health", "/metrics")
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def require_serve():
    """Import FastAPI, or say which extra installs it."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise PromptlabError(
            f"serving needs {err.name}, which is not installed; pip install 'promptlab[serve]'."
        ) from None


class Metrics:
    """Prometheus metrics of one app, in its own registry (several apps may live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "promptlab_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "promptlab_request_seconds", "request latency by route", ["route"], registry=self.registry
        )
        self.sentences = Counter("promptlab_sentences", "inputs embedded", registry=self.registry)
        self.tokens = Counter(
            "promptlab_tokens", "prompt tokens embedded (template included)", registry=self.registry
        )
        self.batch_inputs = Histogram(
            "promptlab_batch_inputs", "inputs per encode call", buckets=_SIZE_BUCKETS, registry=self.registry
        )
        self.request_inputs = Histogram(
            "promptlab_request_inputs", "inputs per request", buckets=_SIZE_BUCKETS, registry=self.registry
        )
        self.truncated = Counter(
            "promptlab_truncated_inputs",
            "inputs cut inside the template's slot to fit",
            registry=self.registry,
        )
        self.encode_seconds = Histogram(
            "promptlab_encode_seconds", "seconds per encode call", registry=self.registry
        )

    def observe_batch(self, inputs: int, seconds: float, *, truncated: int = 0) -> None:
        self.batch_inputs.observe(inputs)
        self.truncated.inc(truncated)
        self.encode_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def create_app(
    embedder,
    *,
    model_id: str | None = None,
    api_key: str | None = None,
    limits: Limits | None = None,
    window: float = 0.005,
    max_batch: int = 512,
    truncate: bool = True,
):
    """A FastAPI app serving ``embedder`` (see the module docstring and `promptlab.serve.protocol`).

    ``limits.max_tokens`` should equal the embedder's ``max_length`` (the token budget of each prompt;
    longer inputs are cut inside the template's slot unless ``truncate=False``, then refused with 400).
    """
    require_serve()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    limits = limits or Limits(max_tokens=embedder.prompts.max_length or Limits.max_tokens)
    described = embedder.describe()
    model_id = model_id or str(described.get("model"))
    metrics = Metrics()
    batcher = Batcher(embedder, window=window, max_batch=max_batch, truncate=truncate, metrics=metrics)
    created = int(time.time())
    # Every input at its longest, JSON-escaped (up to 6 bytes a character), plus room for the other fields.
    max_body = limits.max_inputs * (limits.max_chars * 6 + 64) + 65536

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="promptlab embeddings", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.state.metrics = metrics

    def error(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(ApiError)
    async def api_error(request, err: ApiError):
        return error(err)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return error(ApiError(err.status_code, str(err.detail), param=None, code=code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, err):
        return error(ApiError(400, f"invalid request: {err.errors()[:1]}", param=None))

    @app.exception_handler(Exception)
    async def server_error(request, err: Exception):
        return error(ApiError(500, f"internal error: {type(err).__name__}", param=None, type="server_error"))

    @app.middleware("http")
    async def record(request: Request, call_next):
        start = time.perf_counter()
        route = request.url.path if request.url.path in ROUTES else "other"
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.requests.labels(route, str(status)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - start)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(
                401,
                "Incorrect or missing API key; send the header 'Authorization: Bearer KEY'.",
                param=None,
                code="invalid_api_key",
            )

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        authorize(request)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            raise ApiError(
                413,
                f"the request body is {int(declared)} bytes, over the limit of {max_body}; send fewer or shorter inputs.",
                param="input",
                code="request_too_large",
            )
        try:
            raw = await request.body()
        except ClientDisconnect:  # gone mid-body: nobody to answer (499, as nginx logs it)
            raise ApiError(499, "the client closed the request", code="client_closed_request") from None
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ApiError(400, f"the request body is not valid JSON ({err}); send a JSON object.") from None
        parsed = parse_request(
            body,
            model_id=model_id,
            hidden_size=embedder.backend.hidden_size,
            limits=limits,
            tokenizer=embedder.backend.tokenizer,
        )
        metrics.request_inputs.observe(len(parsed.texts))
        try:
            result = await batcher.embed(parsed.texts)
        except PromptlabError as err:
            raise ApiError(400, str(err)) from None
        metrics.sentences.inc(len(parsed.texts))
        metrics.tokens.inc(result.tokens)
        body = embeddings_response(result.vectors, parsed, model_id=model_id, tokens=result.tokens)
        return JSONResponse(body)  # plain json.dumps: no per-float validation of long vectors

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [_model_card(model_id, created)]}

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request):
        authorize(request)
        if name != model_id:
            raise ApiError(404, f"the model {name!r} does not exist here; this server has {model_id!r}.",
                           param="model", code="model_not_found")  # fmt: skip
        return _model_card(model_id, created)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "embedder": _summary(described)}

    @app.get("/metrics")
    async def prometheus():
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    return app


def _model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "promptlab"}


def _summary(described: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "model",
        "model_file_sha256",
        "template",
        "template_text",
        "pooling",
        "layer",
        "dtype",
        "max_length",
    )
    return {k: described.get(k) for k in keys}
