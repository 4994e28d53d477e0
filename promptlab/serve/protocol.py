"""The OpenAI embeddings protocol: request validation, error bodies and response bodies.

Nothing here imports FastAPI: a request body (already parsed JSON) goes in, texts and options come out,
or an `ApiError` that the app turns into ``{"error": {"message", "type", "param", "code"}}``.

What the inputs mean:
- ``input``: a string, a list of strings, a list of token ids, or a list of lists of token ids. Token ids
  are ids of *this model's* tokenizer; they are decoded to text (special tokens dropped) and that text is
  embedded through the template like any string, so ``[ids]`` and ``tokenizer.decode(ids)`` give the same
  vector. (OpenAI's token ids are tiktoken's, which mean nothing to another model.)
- ``encoding_format``: ``float`` (a JSON list) or ``base64`` (the little-endian float32 bytes).
- ``dimensions``: keep the first N components, then scale back to unit length.
Vectors are L2-normalised, as OpenAI's are, so a dot product is the cosine.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np


class ApiError(Exception):
    """An error answered in OpenAI's shape, with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_inputs: int = 256  # inputs per request
    max_chars: int = 32_768  # characters per text input (refused before tokenizing)
    max_tokens: int = 512  # token ids per token-id input; also each prompt's token budget


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    encoding_format: str
    dimensions: int | None


def _bad(message: str, param: str = "input", code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_request(
    body: Any, *, model_id: str, hidden_size: int, limits: Limits, tokenizer
) -> EmbeddingRequest:
    """Validate an embeddings request body; raise `ApiError` (4xx) naming what to fix."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object with an 'input' field.", param=None)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("'model' must be a string.", param="model")
    if model is not None and model != model_id:
        raise ApiError(
            404,
            f"the model {model!r} does not exist here; this server embeds with {model_id!r} (GET /v1/models).",
            param="model",
            code="model_not_found",
        )
    if "input" not in body:
        raise _bad("missing required parameter 'input': a string or a list of strings.")
    texts = _texts(body["input"], limits, tokenizer)
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise _bad(
            f"encoding_format {encoding_format!r} is not supported; use 'float' or 'base64'.",
            param="encoding_format",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or not 1 <= dimensions <= hidden_size):
        raise _bad(
            f"dimensions must be an integer from 1 to {hidden_size} (this model's size), not {dimensions!r}.",
            param="dimensions",
        )
    return EmbeddingRequest(texts, encoding_format, dimensions)


def _texts(value: Any, limits: Limits, tokenizer) -> list[str]:
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list):
        if not value:
            raise _bad("'input' is an empty list; send at least one string.")
        if all(_is_int(x) for x in value):
            items = [value]  # one input given as token ids
        else:
            items = value
    else:
        raise _bad(f"'input' must be a string or a list of strings, not {type(value).__name__}.")
    if len(items) > limits.max_inputs:
        raise _bad(
            f"too many inputs: {len(items)}; at most {limits.max_inputs} per request, so split the request.",
            code="too_many_inputs",
        )
    texts = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if isinstance(item, str):
            text = item
            if len(text) > limits.max_chars:
                raise _bad(
                    f"{where} is {len(text)} characters, over the limit of {limits.max_chars}; shorten it.",
                    code="input_too_long",
                )
        elif isinstance(item, list) and item and all(_is_int(x) for x in item):
            text = _decode(item, where, limits, tokenizer)
        elif isinstance(item, list):
            raise _bad(f"{where} must be a non-empty list of token ids (integers).")
        else:
            raise _bad(f"{where} is a {type(item).__name__}; send strings, or lists of token ids.")
        if not text.strip():
            raise _bad(f"{where} is empty or whitespace-only; send text to embed.")
        texts.append(text)
    return texts


def _decode(ids: list[int], where: str, limits: Limits, tokenizer) -> str:
    if len(ids) > limits.max_tokens:
        raise _bad(
            f"{where} has {len(ids)} token ids, over the limit of {limits.max_tokens}; shorten it.",
            code="input_too_long",
        )
    vocab = len(tokenizer)
    bad = next((x for x in ids if not 0 <= x < vocab), None)
    if bad is not None:
        raise _bad(f"{where} holds token id {bad}, outside this model's vocabulary (0..{vocab - 1}).")
    return tokenizer.decode(ids, skip_special_tokens=True)


def shape_vectors(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Unit-length float32 rows, cut to ``dimensions`` first when asked."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


def embeddings_response(
    vectors: np.ndarray, request: EmbeddingRequest, *, model_id: str, tokens: int
) -> dict[str, Any]:
    shaped = shape_vectors(vectors, request.dimensions)
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(v, request.encoding_format)}
        for i, v in enumerate(shaped)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
