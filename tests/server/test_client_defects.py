"""Protocol defects a client author hit, each driven the way the client sends it (Realtime, HTTP)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from openai import AsyncOpenAI

from assistant import events
from assistant.errors import InputError
from assistant.server import realtime_protocol as rp
from assistant.server.protocol import WireError
from assistant.server.realtime import RealtimeConversation
from tests.server.fakes import FakeBackend, FakeSession
from tests.server.helpers import TOKEN, client, collect, recv, running, until


@contextlib.asynccontextmanager
async def _asked(port: int, text: str) -> AsyncIterator[Any]:
    """An SDK Realtime connection that has added the user message `text` and asked for a response."""
    sdk = AsyncOpenAI(api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)
    async with sdk.realtime.connect(model="assistant") as conn:
        await collect(conn, "session.created")
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        await conn.conversation.item.create(item=item)
        await conn.response.create()
        yield conn


def test_cancel_then_truncate_of_the_reply_in_progress_is_applied() -> None:
    """A client that barges in sends response.cancel and at once conversation.item.truncate for the item it is
    playing (the Agents SDK and the realtime console do): the truncate is answered with conversation.item.truncated
    and applied once the response ends (it was refused as an unknown item, and the unheard words stayed)."""

    async def body() -> None:
        async with running() as (server, _, backend):
            backend.hold_replies = asyncio.Event()
            async with _asked(server.port, "Tell me.") as conn:
                delta = (await collect(conn, "response.output_audio.delta"))[-1]
                await conn.response.cancel()
                await conn.conversation.item.truncate(item_id=delta.item_id, content_index=0, audio_end_ms=20)
                got = await collect(conn, "response.done")
                kinds = [e.type for e in got]
                assert "error" not in kinds, [e for e in got if e.type == "error"]
                assert "conversation.item.truncated" in kinds
                assert got[-1].response.status == "cancelled"
                # a second truncate of the finished item is checked against the 20 ms now kept
                await conn.conversation.item.truncate(item_id=delta.item_id, content_index=0, audio_end_ms=30)
                refused = (await collect(conn, "error"))[-1]
                assert "past the 20 ms" in refused.error.message
        calls = backend.sessions[0].calls
        assert calls.index(("cancel", None)) < calls.index(("truncate", (1, 20)))

    asyncio.run(body())


async def _raw_http(port: int, head: bytes, body: bytes = b"", wait_for_continue: bool = False) -> bytes:
    """One request over a plain socket; with `wait_for_continue` the body goes only after the server's 100."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        interim = b""
        if wait_for_continue:
            async with asyncio.timeout(5):  # curl waits 1 s for it, then sends anyway; we wait for it alone
                interim = await reader.readuntil(b"\r\n\r\n")
        writer.write(body)
        await writer.drain()
        async with asyncio.timeout(10):
            return interim + await reader.read()
    finally:
        writer.close()


def test_cors_preflight_allows_the_headers_the_openai_js_sdk_sends() -> None:
    """A page of an allowed origin using the openai JS SDK asks, in its preflight, for its x-stainless-* headers
    besides Authorization and Content-Type: they are allowed (only the two were, so the browser blocked the call)."""
    asked = "authorization, content-type, x-stainless-lang, x-stainless-os, x-stainless-retry-count, openai-beta"

    async def body() -> bytes:
        async with running(allowed_origins=["https://app.example"]) as (server, _, _):
            head = (
                "OPTIONS /v1/audio/speech HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
                f"Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: {asked}\r\n\r\n"
            )
            return await _raw_http(server.port, head.encode())

    answer = asyncio.run(body()).decode("latin-1")
    assert answer.startswith("HTTP/1.1 204"), answer
    line = next(h for h in answer.split("\r\n") if h.lower().startswith("access-control-allow-headers:"))
    allowed = {h.strip().lower() for h in line.partition(":")[2].split(",")}
    assert {h.strip() for h in asked.split(",")} <= allowed


def test_expect_100_continue_is_answered_before_the_body() -> None:
    """A POST with `Expect: 100-continue` (curl sends it for uploads over 1 MiB) gets `100 Continue` before it
    sends its body, then the answer (the server stayed silent, so curl stalled a second on every upload)."""
    payload = b'{"input": 5}'

    async def body() -> bytes:
        async with running() as (server, _, _):
            head = (
                f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nExpect: 100-continue\r\n\r\n"
            )
            return await _raw_http(server.port, head.encode(), payload, wait_for_continue=True)

    answer = asyncio.run(body()).decode("latin-1")
    interim, _, final = answer.partition("\r\n\r\n")
    assert interim == "HTTP/1.1 100 Continue", answer
    assert final.startswith("HTTP/1.1 "), answer  # the request itself was read and answered after the 100


def test_a_chunked_upload_is_read_like_one_with_a_length() -> None:
    """A body sent with `Transfer-Encoding: chunked` (requests or httpx streaming a generator, fetch with a stream)
    is decoded, extensions and trailers included, and answered (it was refused with 411); a bad chunk size is a 400
    naming it."""
    from assistant.server import http
    from tests.server.fakes import FakeSpeech
    from tests.server.test_bad_input import TOKEN as APP_TOKEN
    from tests.server.test_bad_input import _app

    payload = b'{"input": "Hello there", "response_format": "pcm"}'
    pieces = [payload[:10], payload[10:31], payload[31:]]
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nX-Trailer: 1\r\n\r\n"
    head = (
        f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APP_TOKEN}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    speech = FakeSpeech()

    async def body() -> tuple[bytes, bytes]:
        app = _app(speech)
        server = await asyncio.start_server(lambda r, w: http.serve(r, w, app), "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            ok = await _raw_http(port, head + chunked)
            bad = await _raw_http(port, head + b"zz\r\n{}\r\n0\r\n\r\n")
        return ok, bad

    ok, bad = asyncio.run(body())
    assert ok.startswith(b"HTTP/1.1 200"), ok[:300]
    assert speech.spoken == ["Hello there"]
    assert bad.startswith(b"HTTP/1.1 400") and b"chunk size" in bad, bad


def test_response_cancel_names_the_response_it_cancels() -> None:
    """response.cancel with the response_id of a response that already ended (the client's view lags) is refused
    with response_cancel_not_active and leaves the response in progress alone (it was cancelled instead); the
    right id cancels it."""

    async def body() -> None:
        async with running() as (server, _, backend):
            backend.hold_replies = asyncio.Event()
            async with _asked(server.port, "Go on.") as conn:
                created = (await collect(conn, "response.created"))[-1]
                await conn.send({"type": "response.cancel", "response_id": "resp_old", "event_id": "cancel_1"})
                refused = (await collect(conn, "error"))[-1]
                assert refused.error.code == "response_cancel_not_active" and refused.error.event_id == "cancel_1"
                assert "resp_old" in refused.error.message
                assert ("cancel", None) not in backend.sessions[0].calls
                await conn.response.cancel(response_id=created.response.id)
                done = (await collect(conn, "response.done"))[-1]
                assert done.response.status == "cancelled" and done.response.id == created.response.id

    asyncio.run(body())


def test_deleting_user_audio_still_being_transcribed_is_refused() -> None:
    """conversation.item.delete of a committed audio item whose transcript has not come is refused naming why
    (it answered conversation.item.deleted, yet the transcript still reached the conversation and was answered);
    after the transcript, deleting it reaches the session with its words."""
    session = FakeSession(FakeBackend())
    conv = RealtimeConversation(session, "default", "Be brief.")
    conv.handle(rp.SessionUpdate(turn_detection_given=True, turn_detection=None))
    conv.feed_audio(rp.AudioAppend(np.full(4800, 1000, np.int16)), np.full(3200, 1000, np.int16))
    committed = conv.handle(rp.AudioCommit())
    item_id = next(e.item_id for e in committed if isinstance(e, rp.BufferCommitted))
    refused = conv.handle(rp.ItemDelete(item_id, event_id="del_1"))
    assert [type(e) for e in refused] == [rp.Error]
    error = refused[0]
    assert isinstance(error, rp.Error) and error.error.event_id == "del_1" and "transcri" in error.error.message
    conv.on_event(events.FinalTranscript("turn the lights on", "en", 1.0))
    assert [type(e) for e in conv.handle(rp.ItemDelete(item_id))] == [rp.ItemDeleted]
    assert ("delete", ("user", "turn the lights on")) in session.calls


def test_deleting_a_function_call_or_its_output_is_refused_naming_why() -> None:
    """conversation.item.delete of a function_call item or a function_call_output item is refused naming why and
    what to delete instead (it answered conversation.item.deleted while the model kept both in its context, since
    only message items have words to forget); the item stays retrievable."""
    session = FakeSession(FakeBackend())
    conv = RealtimeConversation(session, "default", "Be brief.")
    conv.on_event(events.ResponseStarted(1, 0.0))
    called = conv.on_event(events.FunctionCall(1, "call_1", "get_weather", '{"city": "Paris"}', 0.1))
    call_item = next(e.item["id"] for e in called if isinstance(e, rp.OutputItemAdded))
    conv.on_event(events.ResponseDone(1, "", False, 0.2))
    output = conv.handle(rp.FunctionOutput("call_1", '{"sky": "clear"}'))
    output_item = next(e.item["id"] for e in output if isinstance(e, rp.ItemAdded))
    for item_id, kind in ((call_item, "function_call"), (output_item, "function_call_output")):
        refused = conv.handle(rp.ItemDelete(item_id, event_id="d1"))
        assert [type(e) for e in refused] == [rp.Error], refused
        error = refused[0]
        assert isinstance(error, rp.Error) and error.error.event_id == "d1" and error.error.param == "item_id"
        assert f"is a {kind}" in error.error.message and "delete those messages instead" in error.error.message
        assert [type(e) for e in conv.handle(rp.ItemRetrieve(item_id))] == [rp.ItemRetrieved]
    assert not [c for c in session.calls if c[0] == "delete"]


def test_an_output_format_change_mid_response_applies_from_the_next_response() -> None:
    """session.update of audio.output.format while a reply streams leaves that reply in the format it began in
    (its later deltas were G.711 bytes of 24 kHz audio, or 8 kHz samples sent as 24 kHz pcm16); the next reply
    uses the new format; a truncate is scaled by the speed its reply played at, not the session's new speed."""
    conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.")
    tone = (0.3 * np.sin(np.arange(2400) / 8)).astype(np.float32)  # 0.1 s at 24 kHz
    conv.on_event(events.ResponseStarted(1, 0.0))
    out = conv.on_event(events.ResponseAudio(1, tone, 0.1))
    conv.handle(rp.SessionUpdate(output_format="pcmu"))
    out += conv.on_event(events.ResponseAudio(1, tone, 0.2)) + conv.on_event(events.ResponseDone(1, "x", False, 0.3))
    first = [len(base64.b64decode(e.delta)) for e in out if isinstance(e, rp.AudioDelta)]
    assert first == [4800, 4800]  # two pieces of 2,400 pcm16 samples
    conv.on_event(events.ResponseStarted(2, 1.0))
    out = conv.on_event(events.ResponseAudio(2, tone, 1.1)) + conv.on_event(events.ResponseDone(2, "y", False, 1.2))
    assert sum(len(base64.b64decode(e.delta)) for e in out if isinstance(e, rp.AudioDelta)) == 800  # 8 kHz mu-law
    conv.handle(rp.SessionUpdate(speed=1.5))  # a truncate of the first reply is scaled by the speed it played at
    conv.handle(rp.ItemTruncate(next(e.item["id"] for e in out if isinstance(e, rp.OutputItemDone)), 0, 50))
    session = conv.session
    assert isinstance(session, FakeSession) and session.calls[-1] == ("truncate", (2, 50))


def test_ask_streams_its_own_answer_when_it_interrupts_a_reply() -> None:
    """An `ask` sent while another reply is in progress (a `say`, a spoken answer) gets the ask.delta pieces of its
    own answer only: the interrupted reply's last text and its ResponseDone, which the daemon publishes after the
    ask has begun, are not its (the asker got that text, and its stream ended at that ResponseDone, empty)."""

    async def body() -> tuple[list[str], dict[str, Any]]:
        async with running() as (server, ctl, _), client(server) as ws:
            ctl.turn = 4  # turn 4 is speaking; the ask interrupts it and becomes turn 5
            answer = ctl.ask

            async def interrupting(text: str) -> str:
                ctl.emit(events.ResponseTextDelta(4, "the old reply ", 0.0))  # settled after the ask began
                ctl.emit(events.ResponseDone(4, "the old reply", True, 0.0))
                return await answer(text)

            ctl.ask = interrupting  # type: ignore[method-assign]
            await ws.send(json.dumps({"type": "ask", "id": "q1", "text": "hi"}))
            reply, before = await until(ws, "reply")
            return [m["text"] for m in before if m["type"] == "ask.delta"], reply

    deltas, reply = asyncio.run(body())
    assert deltas == ["You ", "said: ", "hi"]
    assert reply["result"] == {"text": "You said: hi", "interrupted": False}


def test_speech_failing_mid_stream_ends_the_body_unfinished() -> None:
    """When speech fails after its first audio went out (a model error in a later sentence), the chunked body ends
    without its final chunk, so the client's HTTP library reports an incomplete body (a second `HTTP/1.1 500`
    response was written into the middle of the audio stream)."""
    from assistant.errors import ModelError
    from assistant.server import http
    from tests.server.fakes import FakeSpeech
    from tests.server.test_bad_input import TOKEN as APP_TOKEN
    from tests.server.test_bad_input import _app

    class Failing(FakeSpeech):
        async def speak(self, text: str, voice: str | None) -> Any:
            yield np.zeros(2400, np.float32)
            raise ModelError("the TTS failed on the second sentence")

    payload = b'{"input": "One. Two.", "response_format": "pcm"}'
    head = (
        f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APP_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()

    async def body() -> bytes:
        app = _app(Failing())
        server = await asyncio.start_server(lambda r, w: http.serve(r, w, app), "127.0.0.1", 0)
        async with server:
            return await _raw_http(server.sockets[0].getsockname()[1], head + payload)

    answer = asyncio.run(body())
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1, answer[-300:]
    assert b"%x\r\n" % 4800 in answer and not answer.endswith(b"0\r\n\r\n")


def test_the_agents_sdk_tracing_update_is_accepted_and_reported_off() -> None:
    """The OpenAI Agents SDK sends `session.update` with `tracing: "auto"` on every session.created (and a config
    object when named): it is accepted and session.updated reports tracing null, what this server does (no traces
    are stored or sent); every Agents SDK session began with an error. A tracing value of another shape is refused."""

    def update(tracing: object) -> dict[str, Any]:
        session = {"type": "realtime", "model": "gpt-realtime", "tracing": tracing}
        conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.")
        try:
            out = conv.handle(rp.decode_client_event(json.dumps({"type": "session.update", "session": session})))
        except WireError as e:
            out = [conv.error(e)]
        return json.loads(conv.encode(out[0]))  # type: ignore[no-any-return]

    for accepted in ("auto", {"workflow_name": "concierge", "group_id": "g1", "metadata": {"k": "v"}}, None):
        got = update(accepted)
        assert got["type"] == "session.updated" and got["session"]["tracing"] is None, got
    refused = update({"workflow": 5})
    assert refused["type"] == "error" and "session.tracing" in refused["error"]["message"]


def test_a_browser_beta_client_named_by_its_subprotocol_gets_beta_events() -> None:
    """A browser cannot set the OpenAI-Beta header, so beta clients (the realtime console's RealtimeClient) offer
    the subprotocol `openai-beta.realtime-v1` beside their key: they get the beta session and event names (they
    got GA names, e.g. response.output_audio.delta, which they do not play)."""
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    async def body() -> list[dict[str, Any]]:
        async with running() as (server, _, _):
            offered = [
                Subprotocol(s) for s in ("realtime", f"openai-insecure-api-key.{TOKEN}", "openai-beta.realtime-v1")
            ]
            async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime", subprotocols=offered) as ws:
                assert ws.subprotocol == "realtime"
                created = await recv(ws)
                assert "audio" not in created["session"], "a GA session: the client's beta protocol was not seen"
                return [created, await recv(ws)]

    created, conversation = asyncio.run(body())
    assert created["type"] == "session.created" and "voice" in created["session"] and "audio" not in created["session"]
    assert conversation["type"] == "conversation.created"


def test_a_token_cap_at_or_above_the_daemons_is_accepted() -> None:
    """The realtime console's beta client configures every session with max_response_output_tokens 4096 (many
    clients send a cap): a cap at or above the daemon's own (llm.max_tokens) is met and accepted, and the session
    reports the bound replies really have (its whole session.update was refused, so nothing of it applied, and the
    session claimed "inf"); a lower cap, which a session cannot set, is refused naming llm.max_tokens."""
    console = {
        "modalities": ["text", "audio"], "instructions": "Be brief.", "voice": "alice",
        "input_audio_format": "pcm16", "output_audio_format": "pcm16", "input_audio_transcription": None,
        "turn_detection": None, "tools": [], "tool_choice": "auto", "temperature": 0.8,
        "max_response_output_tokens": 4096,
    }  # fmt: skip

    async def body() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        headers = {"Authorization": f"Bearer {TOKEN}", "OpenAI-Beta": "realtime=v1"}
        async with running() as (server, _, backend):
            async with client(server, "/v1/realtime", additional_headers=headers) as ws:
                created, _ = await until(ws, "session.created")
                await ws.send(json.dumps({"type": "session.update", "session": console}))
                updated, _ = await until(ws, "session.updated")
                low = {"type": "session.update", "event_id": "u2", "session": {"max_response_output_tokens": 100}}
                await ws.send(json.dumps(low))
                refused, _ = await until(ws, "error")
            assert ("voice", "alice") in backend.sessions[0].calls
        return created, updated, refused

    created, updated, refused = asyncio.run(body())
    bound = FakeBackend().max_output_tokens()
    assert created["session"]["max_response_output_tokens"] == bound
    assert updated["session"]["max_response_output_tokens"] == bound and updated["session"]["voice"] == "alice"
    assert updated["session"]["turn_detection"] is None
    message = refused["error"]["message"]
    assert refused["error"]["event_id"] == "u2" and f"llm.max_tokens = {bound}" in message


def test_a_response_token_cap_follows_the_same_rule_as_the_sessions() -> None:
    """response.create's max_output_tokens is met like session.update's: a cap at or above llm.max_tokens starts
    the response (only "inf" was accepted, so a client sending the session's own cap was refused), and a lower one
    is refused naming llm.max_tokens and the fix."""
    bound = FakeBackend().max_output_tokens()

    async def body() -> tuple[list[Any], list[Any]]:
        async with running() as (server, _, _backend):
            sdk = AsyncOpenAI(api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{server.port}/v1", max_retries=0)
            async with sdk.realtime.connect(model="assistant") as conn:
                await collect(conn, "session.created")
                item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi."}]}
                await conn.conversation.item.create(item=item)
                await collect(conn, "conversation.item.done")
                await conn.response.create(response={"max_output_tokens": bound - 1})
                low = await collect(conn, "error")
                await conn.response.create(response={"max_output_tokens": bound})
                met = await collect(conn, "response.done")
        return low, met

    low, met = asyncio.run(body())
    message = low[-1].error.message
    assert f"`response.max_output_tokens` = {bound - 1} is below llm.max_tokens = {bound}" in message
    assert f"send {bound} or more" in message
    assert "error" not in [e.type for e in met] and met[-1].response.status == "completed"


def test_a_beta_response_token_cap_is_read_as_the_session_one_is() -> None:
    """A beta client's response.create with max_response_output_tokens (the beta SDK's name for the response's cap)
    follows the same rule as max_output_tokens: "inf" or the daemon's bound starts the response, a lower cap is
    refused naming llm.max_tokens (it was refused as a field response.create does not have)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "OpenAI-Beta": "realtime=v1"}
    user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi."}]}
    bound = FakeBackend().max_output_tokens()

    async def body() -> list[dict[str, Any]]:
        got = []
        async with running() as (server, _, _backend):
            async with client(server, "/v1/realtime", additional_headers=headers) as ws:
                await until(ws, "conversation.created")
                for cap in ("inf", bound, bound - 1):
                    await ws.send(json.dumps({"type": "conversation.item.create", "item": user}))
                    await until(ws, "conversation.item.created")
                    response = {"max_response_output_tokens": cap}
                    await ws.send(json.dumps({"type": "response.create", "event_id": f"r{cap}", "response": response}))
                    got.append((await until(ws, "response.done" if cap != bound - 1 else "error"))[0])
        return got

    infinite, met, low = asyncio.run(body())
    assert infinite["response"]["status"] == met["response"]["status"] == "completed"
    assert low["error"]["event_id"] == f"r{bound - 1}" and f"llm.max_tokens = {bound}" in low["error"]["message"]


def test_a_realtime_temperature_is_honoured_for_the_session_and_for_one_response() -> None:
    """A beta client's session temperature (0.6, OpenAI's lowest) samples the session's answers and is reported
    (it was refused unless 0.8, and the session reported 0.8 while sampling at llm.temperature); a response's own
    temperature applies to that response, then the session's comes back; 3 is refused naming the range."""
    headers = {"Authorization": f"Bearer {TOKEN}", "OpenAI-Beta": "realtime=v1"}
    user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi."}]}

    async def body() -> tuple[list[dict[str, Any]], list[Any]]:
        got = []
        async with running() as (server, _, backend):
            async with client(server, "/v1/realtime", additional_headers=headers) as ws:
                got.append((await until(ws, "session.created"))[0])
                await until(ws, "conversation.created")
                for temperature in (0.6, 3):
                    await ws.send(json.dumps({"type": "session.update", "session": {"temperature": temperature}}))
                    got.append(await recv(ws))
                await ws.send(json.dumps({"type": "conversation.item.create", "item": user}))
                await until(ws, "conversation.item.created")
                await ws.send(json.dumps({"type": "response.create", "response": {"temperature": 1.1}}))
                await until(ws, "response.done")
        return got, backend.sessions[0].calls

    (created, updated, refused), calls = asyncio.run(body())
    assert created["session"]["temperature"] == FakeBackend().default_temperature()
    assert updated["type"] == "session.updated" and updated["session"]["temperature"] == 0.6
    assert refused["type"] == "error" and "must be a number from 0 to 2" in refused["error"]["message"]
    temperatures = [value for name, value in calls if name == "temperature"]
    assert temperatures == [0.6, 1.1, 0.6]
    assert calls.index(("temperature", 1.1)) < calls.index(("create_response", None))


def test_a_response_temperature_whose_response_cannot_start_is_set_back_at_once() -> None:
    """response.create with its own temperature whose start the session refuses gets the error, and the session's
    temperature is set back at once (no response.done would come to set it back, so every later answer of the
    session sampled at the refused response's temperature)."""

    class Refusing(FakeSession):
        def create_response(self, instructions: str | None = None) -> None:
            raise InputError("the conversation is closing; open a new session")

    session = Refusing(FakeBackend())
    conv = RealtimeConversation(session, "default", "Be brief.", temperature=0.7)
    conv.handle(rp.ItemCreate("Hi."))
    out = conv.handle(rp.ResponseCreate(temperature=1.2, event_id="r1"))
    assert [type(e) for e in out] == [rp.Error] and "closing" in out[0].error.message  # type: ignore[union-attr]
    assert [value for name, value in session.calls if name == "temperature"] == [1.2, 0.7]
