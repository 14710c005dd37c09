"""The HTTP endpoints under what a demanding client sends: deep JSON, odd headers, methods and request targets
get their status with a one-line error (never a 500), and the required response headers."""

from __future__ import annotations

import asyncio
import json

import pytest

from assistant.server.http import MAX_FORM_PARTS, MAX_JSON_BYTES, MAX_JSON_DEPTH, Request, parse_head
from tests.server.fakes import FakeSpeech
from tests.server.helpers import TOKEN, running
from tests.server.test_bad_input import _app, _post, _transcribe
from tests.server.test_http_limits import raw


@pytest.mark.parametrize("field", ["voice", "response_format", "speed", "model", "stream_format"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 980, 30_000])
def test_deeply_nested_speech_json_is_a_400(field: str, depth: int) -> None:
    """A speech body nested deeper than MAX_JSON_DEPTH, in any field, is a 400 saying so (it was a 500 with a
    RecursionError traceback in the log) and nothing is spoken."""
    audio = FakeSpeech()
    body = f'{{"input": "hi", "{field}": {"[" * depth}{"]" * depth}}}'.encode()
    resp = _post(_app(audio), "/v1/audio/speech", body, "application/json")
    error = json.loads(resp.body)["error"]
    assert resp.status == 400 and error["message"].startswith("the body is nested more than"), error
    assert audio.spoken == []
    flat = _post(_app(audio), "/v1/audio/speech", b'{"input": "hi", "voice": {"id": "default"}}', "application/json")
    assert flat.status == 200 and audio.spoken == ["hi"]


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ([b"\xb2"], "Content-Length '²' is not a number"),  # latin-1 superscript two: isdigit() but not int()
        ([b"+2"], "Content-Length '+2' is not a number"),
        ([b"2", b"7"], "the request has Content-Length headers that differ"),
    ],
)
def test_a_bad_content_length_is_a_400_and_the_daemon_serves_on(lengths: list[bytes], message: str) -> None:
    """A Content-Length that is no plain number (it was a 500 for a non-ASCII digit) or two that differ (the first
    was used) gets a 400 naming it, and the next request is served."""

    async def body() -> tuple[bytes, bytes]:
        async with running() as (server, _, _):
            head = b"POST /v1/audio/speech HTTP/1.1\r\nContent-Type: application/json\r\n"
            head += b"".join(b"Content-Length: " + n + b"\r\n" for n in lengths)
            bad = await raw(server.port, head + f"Authorization: Bearer {TOKEN}\r\n\r\n{{}}".encode())
            good = await raw(server.port, f"GET /health HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
            return bad, good

    bad, good = asyncio.run(body())
    assert bad.startswith(b"HTTP/1.1 400"), bad
    assert json.loads(bad.split(b"\r\n\r\n", 1)[1])["error"]["message"].startswith(message), bad
    assert good.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("POST", "/health", "GET, HEAD"), ("DELETE", "/v1/models", "GET, HEAD"), ("GET", "/v1/audio/speech", "POST")],
)
def test_a_wrong_method_is_a_405_that_names_the_allowed_ones(method: str, path: str, allow: str) -> None:
    """A 405 carries the Allow header RFC 9110 requires, listing the methods the path takes."""
    auth = [("Authorization", f"Bearer {TOKEN}")]
    resp = asyncio.run(_app(FakeSpeech()).handle(Request(method, path, "", auth, b"", "127.0.0.1")))
    assert resp.status == 405 and resp.headers["Allow"] == allow
    assert json.loads(resp.body)["error"]["message"].startswith(f"{path} takes")


def test_a_request_without_the_token_is_a_401_that_names_the_scheme() -> None:
    """A 401 carries `WWW-Authenticate: Bearer` (RFC 9110 requires the challenge), over the wire too."""

    async def body() -> bytes:
        async with running() as (server, _, _):
            return await raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")

    answer = asyncio.run(body())
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401") and b"\r\nWWW-Authenticate: Bearer\r\n" in head + b"\r\n"
    assert json.loads(rest)["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("http://127.0.0.1:8765/health", "/health", ""),
        ("HTTPS://example.org/v1/models/a%2Fb?token=t", "/v1/models/a/b", "token=t"),
        ("http://127.0.0.1:8765", "/", ""),
        ("/health?x=1", "/health", "x=1"),
    ],
)
def test_an_absolute_form_request_target_is_read_as_its_path(target: str, path: str, query: str) -> None:
    """`GET http://host/health HTTP/1.1` (absolute-form, which servers must accept) is routed by its path and
    query (it was a 404 naming the whole URL)."""
    req = parse_head(f"GET {target} HTTP/1.1\r\nHost: x".encode())
    assert (req.path, req.query) == (path, query)


def test_errors_quote_at_most_a_few_dozen_characters_of_what_the_client_sent() -> None:
    """A long response_format or stream_format, or a long upload file name, is cut in the error message (each
    was echoed whole: a 3,000-character value made a 3 KB error line)."""
    long = "x" * 3000
    answers = [
        _post(
            _app(FakeSpeech()), "/v1/audio/speech", json.dumps({"input": "hi", key: long}).encode(), "application/json"
        )
        for key in ("response_format", "stream_format")
    ]
    answers.append(_transcribe([("response_format", long)]))
    head = f'--b\r\nContent-Disposition: form-data; name="file"; filename="{long}.wav"\r\n\r\nnot audio\r\n--b--\r\n'
    answers.append(
        _post(_app(FakeSpeech()), "/v1/audio/transcriptions", head.encode(), "multipart/form-data; boundary=b")
    )
    for resp in answers:
        message = json.loads(resp.body)["error"]["message"]
        assert resp.status == 400 and "xxxxx" in message and len(message) < 250, message


def test_a_speech_body_larger_than_a_speech_request_is_refused_before_it_is_parsed() -> None:
    """A speech body over MAX_JSON_BYTES is a 413 at once (a 24 MB JSON array was decoded and walked on the event
    loop for seconds, stalling the voice loop, to end in a 400); one of 4,096 escaped characters still fits."""
    audio = FakeSpeech()
    big = b'{"input": "hi", "x": [' + b"0," * 600_000 + b"0]}"
    resp = _post(_app(audio), "/v1/audio/speech", big, "application/json")
    message = json.loads(resp.body)["error"]["message"]
    assert resp.status == 413 and message == (
        f"the body is {len(big)} bytes, over the {MAX_JSON_BYTES} a speech request needs; send less"
    )
    escaped = json.dumps({"input": "é" * 4096, "voice": "default", "response_format": "pcm"}).encode()
    assert len(escaped) > 24_000 and _post(_app(audio), "/v1/audio/speech", escaped, "application/json").status == 200
    assert audio.spoken == ["é" * 4096]


def test_a_form_of_many_parts_is_refused_before_it_is_parsed() -> None:
    """A transcription form with more than MAX_FORM_PARTS parts is a 400 naming the limit (the email parser took
    ~20 s of the event loop for 100,000 tiny parts); a form with a file and a few fields is transcribed."""
    fields = [(f"f{i}", "v") for i in range(MAX_FORM_PARTS + 1)]
    resp = _transcribe(fields)
    assert resp.status == 400
    assert json.loads(resp.body)["error"]["message"].startswith(f"the form has more than {MAX_FORM_PARTS} parts")
    assert _transcribe([("model", "whisper-1"), ("language", "en"), ("response_format", "json")]).status == 200
