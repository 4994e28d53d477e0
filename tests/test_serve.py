"""The OpenAI-compatible server, driven as a user drives it: the official `openai` client against a real
uvicorn server on 127.0.0.1 (a free port), started here. Served vectors are compared with the same
embedder's in-process `encode`, normalised independently here.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

for extra in ("fastapi", "uvicorn", "prometheus_client"):
    pytest.importorskip(extra, reason="the server tests need the [serve] extra")
openai = pytest.importorskip("openai", reason="the server tests use the official openai client")
httpx = pytest.importorskip("httpx")

from promptlab.embedder import Embedder  # noqa: E402
from promptlab.serve import Limits, serving  # noqa: E402

KEY = "sk-test-key"
MODEL = "tiny-eol"
SENTENCES = [
    "A man is playing a guitar.",
    'He said "hello" to everyone in the room?',
    "Two dogs run through a field of grass while children watch!",
    "The cat sits on the mat, and the dog sleeps.",
]


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def assert_same_direction(served, expected) -> None:
    cosines = np.sum(unit(served) * unit(expected), axis=-1)
    assert np.all(cosines >= 0.9999), cosines


@pytest.fixture(scope="module")
def embedder(tiny_llama_dir):
    return Embedder(str(tiny_llama_dir), "prompteol", layer=2, dtype="float32", max_length=40)


@pytest.fixture(scope="module")
def server(embedder):
    limits = Limits(max_inputs=8, max_chars=2000, max_tokens=40)
    with serving(embedder, model_id=MODEL, api_key=KEY, limits=limits, window=0.05) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_float_vectors_and_usage(client, embedder):
    response = client.embeddings.create(model=MODEL, input=SENTENCES, encoding_format="float")
    served = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert [d.index for d in response.data] == list(range(len(SENTENCES)))
    assert response.model == MODEL
    assert_same_direction(served, embedder.encode(SENTENCES))
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    tokens = sum(len(embedder.prompts.encode(s).ids) for s in SENTENCES)
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens


def test_base64_explicit_and_client_default(client, server, embedder):
    expected = embedder.encode(SENTENCES[:2])
    raw = httpx.post(
        server + "/v1/embeddings",
        json={"model": MODEL, "input": SENTENCES[:2], "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]])
    assert_same_direction(decoded, expected)
    # The openai client asks for base64 by default and decodes it itself.
    default = client.embeddings.create(model=MODEL, input=SENTENCES[:2])
    assert_same_direction(np.array([d.embedding for d in default.data]), expected)


def test_dimensions_cut_then_renormalised(client, embedder):
    response = client.embeddings.create(
        model=MODEL, input=SENTENCES[0], dimensions=8, encoding_format="float"
    )
    served = np.array(response.data[0].embedding)
    assert served.shape == (8,)
    assert abs(np.linalg.norm(served) - 1) < 1e-5
    assert_same_direction(served, embedder.encode(SENTENCES[0])[:8])


def test_token_ids_mean_this_models_tokens(client, embedder):
    tokenizer = embedder.backend.tokenizer
    ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in SENTENCES[:2]]
    response = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert_same_direction(np.array([d.embedding for d in response.data]), embedder.encode(SENTENCES[:2]))
    single = client.embeddings.create(model=MODEL, input=ids[0], encoding_format="float")
    assert_same_direction(np.array(single.data[0].embedding), embedder.encode(SENTENCES[0]))


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["embedder"]["layer"] == 2


def test_wrong_key_is_401_in_openai_shape(server):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.embeddings.create(model=MODEL, input="hello")
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    missing = httpx.post(server + "/v1/embeddings", json={"input": "hello"})
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}


BAD_INPUTS = {
    "empty string": dict(input=""),
    "whitespace": dict(input=["fine", "   "]),
    "empty list": dict(input=[]),
    "wrong type": dict(input=[1.5, 2.5]),
    "nested strings": dict(input=[["a", "b"]]),
    "too many inputs": dict(input=["a sentence."] * 9),
    "too long text": dict(input="word " * 1000),
    "too many token ids": dict(input=[[5] * 41]),
    "token id outside the vocabulary": dict(input=[[5, 10**6]]),
    "dimensions zero": dict(input="hello", dimensions=0),
    "dimensions too large": dict(input="hello", dimensions=33),
    "unknown encoding": dict(input="hello", encoding_format="hex"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_400_and_server_keeps_serving(client, case):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, **{"encoding_format": "float", **BAD_INPUTS[case]})
    body = caught.value.body
    assert caught.value.status_code == 400 and body["type"] == "invalid_request_error" and body["message"]
    assert client.embeddings.create(model=MODEL, input="still serving").data


@pytest.mark.parametrize(
    "payload,status",
    [
        (b"{not json", 400),
        (b'"just a string"', 400),
        (b'{"model": "tiny-eol"}', 400),
        (json.dumps({"model": "gpt-x", "input": "a"}).encode(), 404),
        (json.dumps({"model": 7, "input": "a"}).encode(), 400),
        (b"\xff\xfe", 400),
    ],
)
def test_malformed_bodies_answer_in_openai_shape(server, payload, status):
    response = httpx.post(
        server + "/v1/embeddings",
        content=payload,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_route_and_method_are_json_errors(server):
    assert httpx.get(server + "/v1/nothing").json()["error"]["code"] == "not_found"
    assert httpx.get(server + "/v1/embeddings").status_code == 405


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.M))


def test_concurrent_requests_share_encode_calls(server, embedder):
    before = httpx.get(server + "/metrics").text
    clients = 12
    barrier = threading.Barrier(clients)
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        c = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)
        barrier.wait()
        sentences = [SENTENCES[i % 4], f"Request {i} asks about item {i}."]
        r = c.embeddings.create(model=MODEL, input=sentences, encoding_format="float")
        results[i] = np.array([d.embedding for d in r.data])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(clients))
    for i, served in results.items():
        assert_same_direction(
            served, embedder.encode([SENTENCES[i % 4], f"Request {i} asks about item {i}."])
        )
    after = httpx.get(server + "/metrics").text
    encode_calls = _metric(after, "promptlab_batch_inputs_count") - _metric(
        before, "promptlab_batch_inputs_count"
    )
    assert 1 <= encode_calls < clients, "requests arriving together are embedded in shared encode calls"
    assert (
        _metric(after, "promptlab_sentences_total") - _metric(before, "promptlab_sentences_total")
        == 2 * clients
    )


def test_metrics_are_prometheus_text(client, server):
    client.embeddings.create(model=MODEL, input=[*SENTENCES[:3], "a long sentence " * 30])  # one is cut
    text = httpx.get(server + "/metrics").text
    for name in (
        'promptlab_requests_total{route="/v1/embeddings",status="200"}',
        "promptlab_sentences_total",
        "promptlab_tokens_total",
        'promptlab_request_seconds_bucket{le="0.005",route="/v1/embeddings"}',
        "promptlab_batch_inputs_bucket",
        "promptlab_truncated_inputs_total",
    ):
        assert name in text, name
    assert _metric(text, "promptlab_tokens_total") > 0
    assert _metric(text, "promptlab_truncated_inputs_total") >= 1


def test_client_disconnecting_does_not_stall_others(client, server):
    host, port = server.removeprefix("http://").split(":")
    request = json.dumps({"model": MODEL, "input": SENTENCES * 2}).encode()
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(request)}\r\n\r\n"
    ).encode()
    for body in (request[:10], request):  # gone mid-body; gone before reading the answer
        with socket.create_connection((host, int(port))) as s:
            s.sendall(head + body)
    started = time.perf_counter()
    assert client.embeddings.create(model=MODEL, input=SENTENCES).data
    assert time.perf_counter() - started < 30
    assert httpx.get(server + "/health").status_code == 200
    metrics = httpx.get(server + "/metrics").text
    assert 'status="499"' in metrics, "the client gone mid-body is counted as 499"
    assert 'status="500"' not in metrics, "no request of this server ended in an internal error"


def test_oversized_body_is_refused_from_its_header(server):
    host, port = server.removeprefix("http://").split(":")
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head.encode() + b'{"input": "')
        answer = b""
        while b"}}" not in answer and (chunk := s.recv(65536)):
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and '"code":"request_too_large"' in answer


def test_cli_serves_a_saved_embedder(embedder, tmp_path):
    """`promptlab serve DIR` in its own process, as a user starts it."""
    embedder.save(tmp_path / "saved")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "promptlab.cli", "serve", str(tmp_path / "saved"), "--port", str(port)]
    process = subprocess.Popen([*command, "--log-level", "warning"], stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        served = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        response = served.embeddings.create(model="saved", input=SENTENCES, encoding_format="float")
        assert_same_direction(np.array([d.embedding for d in response.data]), embedder.encode(SENTENCES))
    finally:
        process.terminate()
        process.wait(30)


def test_without_truncation_a_long_input_is_400(embedder):
    with serving(embedder, model_id=MODEL, truncate=False) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="does not fit in 40 tokens"):
            c.embeddings.create(model=MODEL, input=["short.", "a long sentence " * 20])
        assert c.embeddings.create(model=MODEL, input="short.").data  # no key set: open


def test_missing_extra_names_it(monkeypatch):
    from promptlab.errors import PromptlabError
    from promptlab.serve.app import require_serve

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    with pytest.raises(PromptlabError, match=r"pip install 'promptlab\[serve\]'"):
        require_serve()


def test_load_benchmark_smoke(embedder, tmp_path):
    """`benchmarks/serve_load.py`, bounded to a few requests: every level answers, none fails."""
    from pathlib import Path

    from conftest import SENTEVAL

    if not (SENTEVAL / "downstream" / "STS" / "STSBenchmark").is_dir():
        pytest.skip("needs the STS-B test set ($PROMPTLAB_DATA)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import serve_load

    embedder.save(tmp_path / "saved")
    argv = ["--embedder", str(tmp_path / "saved"), "--clients", "1,3", "--requests", "6", "--seconds", "20"]
    argv += ["--sentences", "40", "--max-inputs", "8", "--data-dir", str(SENTEVAL)]
    assert serve_load.main([*argv, "--output", str(tmp_path / "load.json")]) == 0
    record = json.loads((tmp_path / "load.json").read_text())
    assert [level["clients"] for level in record["levels"]] == [1, 3]
    for level in record["levels"]:
        assert level["failed"] == 0 and level["requests"] == 6 and level["sentences_per_second"] > 0
        assert 0 < level["latency_p50_s"] <= level["latency_p99_s"]
