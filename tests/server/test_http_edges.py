"""The HTTP endpoints under what a demanding client sends: deep JSON, odd headers, methods and request targets
get their status with a one-line error (never a 500), and the required response headers."""

from __future__ import annotations

import json

import pytest

from assistant.server.http import MAX_JSON_DEPTH
from tests.server.test_bad_input import _app, _post, _Speech


@pytest.mark.parametrize("field", ["voice", "response_format", "speed", "model", "stream_format"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 980, 100_000])
def test_deeply_nested_speech_json_is_a_400(field: str, depth: int) -> None:
    """A speech body nested deeper than MAX_JSON_DEPTH, in any field, is a 400 saying so (it was a 500 with a
    RecursionError traceback in the log) and nothing is spoken."""
    audio = _Speech()
    body = f'{{"input": "hi", "{field}": {"[" * depth}{"]" * depth}}}'.encode()
    resp = _post(_app(audio), "/v1/audio/speech", body, "application/json")
    error = json.loads(resp.body)["error"]
    assert resp.status == 400 and error["message"].startswith("the body is nested more than"), error
    assert audio.spoken == []
    flat = _post(_app(audio), "/v1/audio/speech", b'{"input": "hi", "voice": {"id": "default"}}', "application/json")
    assert flat.status == 200 and audio.spoken == ["hi"]
