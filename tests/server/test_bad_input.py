"""Bad input a new user threw at a running daemon, each answered by one line that names the problem and the fix:
lone UTF-16 surrogates in any JSON string (they crashed the tokenizers), empty `say`/`ask` text (they failed the
turn after a success reply), error messages that quoted the server's own words or a number as a string, and log
lines that named a connection by its object address."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import numpy as np
import pytest

from assistant.config import ServerConfig
from assistant.errors import InputError
from assistant.logs import KeyValueFormatter
from assistant.server import protocol as p
from assistant.server import realtime_protocol as rp
from assistant.server.http import HttpApp, Request, Response
from assistant.server.realtime import RealtimeConversation
from tests.server.fakes import FakeBackend, FakeSession, FakeSpeech
from tests.server.helpers import client, running

TOKEN = "bad-input-token"


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "say", "text": "\\ud800"}',
        '{"type": "ask", "text": "ok \\uDC00 then"}',
        '{"type": "tool.result", "call_id": "c1", "output": "\\udfff"}',
        '{"type": "config.set", "changes": {"tts.voice": ["\\ud83d"]}}',
    ],
)
def test_native_lone_surrogate_is_a_bad_json_error(frame: str) -> None:
    """A native message with a lone surrogate escape anywhere is refused at decode (it reached the TTS tokenizer)."""
    with pytest.raises(p.WireError) as e:
        p.decode_command(frame)
    assert e.value.code == "bad_json"
    assert "lone UTF-16 surrogate" in str(e.value) and "send valid Unicode text" in str(e.value)


def test_realtime_lone_surrogate_is_refused_and_a_pair_is_kept() -> None:
    """A Realtime user text item with a lone surrogate is refused; a proper pair (an emoji) decodes to its character."""
    item = {"type": "conversation.item.create", "item": {"type": "message", "role": "user"}}
    lone = json.dumps(item | {"item": item["item"] | {"content": [{"type": "input_text", "text": "\ud800"}]}})
    with pytest.raises(p.WireError) as e:
        rp.decode_client_event(lone)
    assert e.value.code == "bad_json" and "\\ud800" in str(e.value)
    pair = p.decode_command('{"type": "say", "text": "hi \\ud83d\\ude00"}')
    assert isinstance(pair, p.Say) and pair.text == "hi \U0001f600"


@pytest.mark.parametrize("kind", ["say", "ask"])
@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_native_empty_text_is_refused_at_decode(kind: str, text: str) -> None:
    """`say`/`ask` with empty or blank text get an `input` error naming the field (the daemon replied success and
    then logged a failed turn)."""
    with pytest.raises(p.WireError) as e:
        p.decode_command(json.dumps({"type": kind, "id": 4, "text": text}))
    assert e.value.code == "input" and e.value.id == 4
    assert str(e.value).startswith(f"`{kind}.text` is empty; give the words to {kind}")


@pytest.mark.parametrize("text", ["😀🎉", "**", "<b></b>"])
def test_native_say_without_speakable_words_is_refused(text: str) -> None:
    """`say` of only emoji, symbols or markup gets an `input` error, as `assistant say` does (it replied success
    and said nothing)."""
    with pytest.raises(p.WireError) as e:
        p.decode_command(json.dumps({"type": "say", "id": 5, "text": text}))
    assert e.value.code == "input" and str(e.value).startswith("`say.text` has no speakable words")
    assert isinstance(p.decode_command(json.dumps({"type": "ask", "text": text})), p.Ask)  # the LLM may answer


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            {"type": "input_audio_buffer.append", "audio": 5},
            "`input_audio_buffer.append.audio` must be a string, got 5",
        ),
        ({"type": "session.update", "session": True}, "`session.update.session` must be an object, got true"),
        ({"event_id": "e1"}, "`type` must be a string naming the event, got none"),
        ({"type": 7}, "`type` must be a string naming the event, got 7"),
    ],
)
def test_realtime_errors_show_values_as_json(event: dict[str, Any], message: str) -> None:
    """Realtime decode errors show a number or boolean as the client wrote it (not as a quoted string), and a
    missing `type` as missing (not as the event type 'None')."""
    with pytest.raises(p.WireError) as e:
        rp.decode_client_event(json.dumps(event))
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    ("event", "param"),
    [
        ({"type": "session.update", "session": {"audio": {"output": {"speed": 3}}}}, "session.audio.output.speed"),
        ({"type": "session.update", "session": {"audio": {"input": {"format": "wav"}}}}, "session.audio.input.format"),
        ({"type": "session.update", "session": {"voise": "alloy"}}, "session.voise"),
        ({"type": "session.update", "session": {"tools": [{"name": "a b"}]}}, "session.tools[0].name"),
        ({"type": "input_audio_buffer.append", "audio": "###"}, "audio"),
        ({"type": "conversation.item.create", "item": {"role": "user", "content": "hi"}}, "item.content"),
        (
            {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": -1},
            "audio_end_ms",
        ),
        ({"type": "response.create", "response": {"voice": "alloy"}}, "response.voice"),
        ({"type": "conversation.item.delete", "item_id": "item_404"}, "item_id"),
        ({"type": "response.create", "response": {"max_output_tokens": 3}}, "response.max_output_tokens"),
    ],
)
def test_realtime_error_names_the_field_in_param(event: dict[str, Any], param: str) -> None:
    """A Realtime error caused by one field names it in the error object's `param`, as OpenAI's do (a dotted path
    within the client's event, which the SDK's RealtimeError carries); it was always null."""
    from openai.types.realtime import RealtimeErrorEvent

    conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.", max_output_tokens=400)
    conv.handle(rp.ItemCreate("Hi."))
    try:
        out = conv.handle(rp.decode_client_event(json.dumps({**event, "event_id": "e1"})))
    except p.WireError as e:
        out = [conv.error(e)]
    sent = RealtimeErrorEvent.model_validate(json.loads(conv.encode(out[-1])))
    assert sent.error.param == param and sent.error.event_id == "e1"


def test_realtime_session_error_is_not_quoted() -> None:
    """An error the session raises reaches the client as its own sentence, not a Python repr in quotes."""
    backend = FakeBackend()
    conv = RealtimeConversation(FakeSession(backend), "default", "Be brief.", now=0.0)
    error = conv.error(InputError("no function call 'x' awaits an output; use a call_id from the last response"))
    assert isinstance(error, rp.Error)
    assert error.error.message == "no function call 'x' awaits an output; use a call_id from the last response"


def _post(app: HttpApp, path: str, body: bytes, content_type: str | None) -> Response:
    headers = [("Authorization", f"Bearer {TOKEN}")] + ([("Content-Type", content_type)] if content_type else [])
    return asyncio.run(app.handle(Request("POST", path, "", headers, body, "127.0.0.1")))


def _app(audio: FakeSpeech) -> HttpApp:
    return HttpApp(ServerConfig(token=TOKEN), TOKEN, False, None, audio, 0.0, dict)


def test_http_speech_refuses_lone_surrogates_with_a_400() -> None:
    """POST /v1/audio/speech with a lone surrogate in `input` is a 400 naming it (it was a 500 internal error)."""
    audio = FakeSpeech()
    resp = _post(_app(audio), "/v1/audio/speech", b'{"input": "hi \\ud800"}', "application/json")
    error = json.loads(resp.body)["error"]
    assert resp.status == 400 and "lone UTF-16 surrogate (\\ud800)" in error["message"] and audio.spoken == []
    ok = _post(_app(audio), "/v1/audio/speech", b'{"input": "hi", "response_format": "pcm"}', "application/json")
    assert ok.status == 200 and audio.spoken == ["hi"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/audio/speech", "the request has no Content-Type header; send the request as application/json"),
        ("/v1/audio/transcriptions", "the request has no Content-Type header; send the audio as multipart/form-data"),
    ],
)
def test_http_without_content_type_says_so(path: str, message: str) -> None:
    """A POST without a Content-Type gets a 415 that reads as a sentence (it said `not no Content-Type`)."""
    resp = _post(_app(FakeSpeech()), path, b"{}", None)
    assert resp.status == 415 and json.loads(resp.body)["error"]["message"] == message


def test_connection_log_lines_name_the_peer() -> None:
    """websockets' connection log lines (`connection open`, with the connection as `websocket=`) name the client's
    address, not `<...Connection object at 0x...>`."""

    async def body() -> str:
        async with running() as (server, _, _), client(server):
            assert server.server is not None
            [conn] = server.server.connections
            record = logging.LogRecord("assistant.server.connections", logging.INFO, "", 0, "connection open", (), None)
            record.websocket = conn  # what websockets attaches to its own log records
            return KeyValueFormatter().format(record)

    line = asyncio.run(body())
    assert "websocket=127.0.0.1:" in line and "object at" not in line


def _form(fields: list[tuple[str, str]], wav: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the text `fields` and `wav` as the `file` part."""
    parts = [f'--b\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode() for n, v in fields]
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
    return b"".join(parts) + head + wav + b"\r\n--b--\r\n", "multipart/form-data; boundary=b"


def _transcribe(fields: list[tuple[str, str]]) -> Response:
    """POST one second of silence (a WAV file) with these form fields to /v1/audio/transcriptions."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000, np.float32), 16000, format="WAV")
    body, kind = _form(fields, buf.getvalue())
    return _post(_app(FakeSpeech()), "/v1/audio/transcriptions", body, kind)


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ([("timestamp_granularities[]", "word")], "timestamp_granularities[]", "word timestamps are not available"),
        (
            [("timestamp_granularities[]", "word"), ("timestamp_granularities[]", "segment")],
            "timestamp_granularities[]",
            "word timestamps are not available",
        ),
        ([("include[]", "logprobs")], "include[]", "include[] 'logprobs' is not available here (no token logprobs)"),
    ],
)
def test_transcription_refuses_what_the_stt_cannot_give(
    fields: list[tuple[str, str]], param: str, message: str
) -> None:
    """Word timestamps and logprobs are refused by name with a 400, as docs/protocol.md says (they were silently
    answered without them); segment granularity and a prompt are accepted."""
    resp = _transcribe(fields)
    error = json.loads(resp.body)["error"]
    assert resp.status == 400 and error["param"] == param and error["message"].startswith(message)
    assert _transcribe([("timestamp_granularities[]", "segment"), ("prompt", "names: Anna")]).status == 200


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"instructions": 5}, "instructions", "`instructions` must be a string, got 5"),
        ({"instructions": "Whisper."}, "instructions", "instructions are not available here"),
        ({"model": ["tts-1"]}, "model", '`model` must be a string, got ["tts-1"]'),
        ({"voice": {"id": "nobody"}}, "voice", "unknown voice id 'nobody'; use one of default"),
        ({"voice": {"name": "default"}}, "voice", '`voice` must be a voice name or {"id": NAME}'),
        ({"speeed": 1.5}, "speeed", "unknown field 'speeed'; did you mean speed?"),
    ],
)
def test_speech_refuses_fields_it_would_ignore(body: dict[str, Any], param: str, message: str) -> None:
    """/v1/audio/speech answers a wrongly typed model or instructions, style instructions, an unknown custom
    voice id and an unknown field with a 400 naming the field (each was silently ignored); known ones speak."""
    audio = FakeSpeech()
    resp = _post(_app(audio), "/v1/audio/speech", json.dumps({"input": "hi"} | body).encode(), "application/json")
    error = json.loads(resp.body)["error"]
    assert resp.status == 400 and error["param"] == param and error["message"].startswith(message)
    fine = {"input": "hi", "model": "tts-1", "instructions": "", "voice": {"id": "default"}, "response_format": "pcm"}
    assert _post(_app(audio), "/v1/audio/speech", json.dumps(fine).encode(), "application/json").status == 200
    assert audio.spoken == ["hi"]


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ([("temperature", "abc")], "temperature", "temperature must be a number from 0 to 1, got 'abc'"),
        ([("temperature", "1.5")], "temperature", "temperature must be a number from 0 to 1, got '1.5'"),
        ([("response_format", "text"), ("response_format", "srt")], "response_format", "the form has more than one"),
        ([("file", "x")], "file", "the form has more than one `file` part; send it once"),
    ],
)
def test_transcription_refuses_bad_temperature_and_repeated_parts(
    fields: list[tuple[str, str]], param: str, message: str
) -> None:
    """/v1/audio/transcriptions refuses a temperature that is not a number from 0 to 1 and a field sent twice (a
    second `file` was silently dropped) with a 400 naming the field; temperature 0.2 is accepted."""
    resp = _transcribe(fields)
    error = json.loads(resp.body)["error"]
    assert resp.status == 400 and error["param"] == param and error["message"].startswith(message)
    assert _transcribe([("temperature", "0.2")]).status == 200


def test_http_messages_name_the_real_problem() -> None:
    """A speed that is not a number says so (it said `out of range`), a preflight without Origin says what is
    missing (it printed an empty origin), and an unknown path lists every endpoint."""
    speech = _post(_app(FakeSpeech()), "/v1/audio/speech", b'{"input": "hi", "speed": "fast"}', "application/json")
    assert json.loads(speech.body)["error"]["message"] == 'speed must be a number from 0.5 to 2, got "fast"'
    app = _app(FakeSpeech())
    auth = [("Authorization", f"Bearer {TOKEN}")]
    preflight = asyncio.run(app.handle(Request("OPTIONS", "/v1/audio/speech", "", auth, b"", "127.0.0.1")))
    assert preflight.status == 403
    assert json.loads(preflight.body)["error"]["message"].startswith("a CORS preflight (OPTIONS) needs an Origin")
    lost = asyncio.run(app.handle(Request("GET", "/v1/audio/transcription", "", auth, b"", "127.0.0.1")))
    message = json.loads(lost.body)["error"]["message"]
    assert lost.status == 404 and "/v1/audio/transcriptions" in message and "/v1/realtime" in message


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        ({"type": "tools.register", "id": 1, "tools": [{"name": "x", "parameters": 5}]}, "must be a JSON schema"),
        ({"type": "tools.register", "id": 1, "tools": [{"name": "x"}], "timeout_s": -1}, "must be from 0.1 to 300"),
        ({"type": "tools.register", "id": 1, "tools": [{"name": ""}]}, "must be 1-64 letters"),
    ],
)
def test_bad_tool_registrations_are_bad_field_errors(msg: dict[str, Any], fragment: str) -> None:
    """A malformed `tools.register` gets code `bad_field` like every other bad field (it said `failed`, the code of
    a command that broke), and the connection stays usable."""

    async def body() -> tuple[dict[str, Any], dict[str, Any]]:
        async with running() as (server, _, _), client(server) as ws:
            await ws.send(json.dumps(msg))
            error = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "status", "id": 2}))
            return error, json.loads(await ws.recv())

    error, status = asyncio.run(body())
    assert error["type"] == "error" and error["code"] == "bad_field" and fragment in error["message"]
    assert error["id"] == 1 and status["type"] == "reply"


def test_a_refused_session_update_changes_nothing() -> None:
    """A session.update whose voice is refused leaves the session's turn detection and instructions as they were
    (the detection was already applied when the voice was refused, so the session ran manual turns while
    session.updated went on reporting server_vad)."""
    session = FakeSession(FakeBackend())
    conv = RealtimeConversation(session, "default", "Be brief.", now=0.0)
    conv.start()
    session.calls.clear()
    update = {"turn_detection": None, "instructions": "Be terse.", "audio": {"output": {"voice": "nobody"}}}
    out = conv.handle(rp.decode_client_event(json.dumps({"type": "session.update", "session": update})))
    assert [type(e) for e in out] == [rp.Error]
    assert session.calls == []
    assert conv.detection is not None and conv.settings.instructions == "Be brief."
