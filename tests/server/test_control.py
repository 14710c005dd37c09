"""The native control channel over real loopback sockets: every command, every event, limits and failures."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import typing
from typing import Any

import pytest

from assistant import events
from assistant.server import protocol as p
from tests.server.helpers import TOKEN, client, recv, request, running, until

EVERY_EVENT: list[events.Event] = [
    events.StateChanged(events.TurnState.IDLE, events.TurnState.USER_SPEAKING, 1.0),
    events.SpeechStarted(100, 200, 1.5),
    events.SilenceStarted(16000, 2.0),
    events.SpeechResumed(17000, 2.1),
    events.SpeechEnded(100, 32000, 3.0, truncated=True),
    events.PartialTranscript("hello wor", 2.5),
    events.FinalTranscript("hello world", "en", 3.1),
    events.ResponseTextDelta(1, "Hi", 3.3),
    events.ResponseDone(1, "Hi there.", False, 4.0),
    events.LatencyTrace(1, 700.0, 120.0, 250.5, 260.0, 400.0, 450.0, {"tts_prefill_ms": 30.0}),
    events.DeviceStatus("output", False, "speaker unplugged", 5.0),
    events.SpeculationStarted(2, 5.1),
    events.SpeculationCancelled(2, 5.2),
    events.BargeIn(1, 1240.0, "Hi", 5.3),
    events.FalseStart(5.4),
    events.PushToTalk(True, 5.5),
    events.MuteChanged(True, 5.6),
    events.AttentionChanged("engaged", 5.8),
    events.ErrorEvent("stt failed: out of memory", 6.0),
]


def test_every_pipeline_event_type_is_tested_and_has_a_wire_name() -> None:
    """EVERY_EVENT covers every member of events.Event, and each has a wire name (or is the pipeline error)."""
    members = set(typing.get_args(events.Event))
    assert {type(e) for e in EVERY_EVENT} == members
    assert members == set(p.EVENT_TYPES)


def test_an_unencodable_event_is_skipped_and_the_fan_out_goes_on() -> None:
    """An event the wire cannot carry is logged and skipped; the events after it still reach subscribers."""

    @dataclasses.dataclass(frozen=True)
    class Unknown:
        time: float

    async def body() -> None:
        async with running() as (server, ctl, _), client(server) as ws:
            assert (await request(ws, {"type": "subscribe", "id": 1}))["type"] == "reply"
            ctl.emit(Unknown(1.0))  # type: ignore[arg-type]
            ctl.emit(events.MuteChanged(False, 2.0))
            got = await recv(ws)
            assert got == {"type": "mute.changed", "muted": False, "time": 2.0}
            assert server.handler_errors == 1 and server.fanout is not None and not server.fanout.done()

    asyncio.run(body())


def test_every_command_gets_its_reply_and_reaches_the_controller() -> None:
    """Each native command, sent with an id, gets a `reply` echoing the id and calls the matching controller method."""

    async def body() -> None:
        async with running() as (server, ctl, _), client(server) as ws:
            cases: list[tuple[dict[str, Any], str]] = [
                ({"type": "status"}, "status"),
                ({"type": "say", "text": "Hello"}, "say"),
                ({"type": "ask", "text": "What time is it?"}, "ask"),
                ({"type": "interrupt"}, "interrupt"),
                ({"type": "mute"}, "mute"),
                ({"type": "unmute"}, "unmute"),
                ({"type": "ptt.start"}, "ptt_start"),
                ({"type": "ptt.stop"}, "ptt_stop"),
                ({"type": "config.get"}, "config_get"),
                ({"type": "config.set", "changes": {"tts.voice": "alice"}}, "config_set"),
                ({"type": "history.get"}, "history_get"),
                ({"type": "history.reset"}, "history_reset"),
            ]
            for i, (msg, method) in enumerate(cases):
                reply = await request(ws, {**msg, "id": i})
                assert reply["type"] == "reply" and reply["id"] == i and reply["command"] == msg["type"], reply
                assert ctl.calls[-1][0] == method
            assert [c[0] for c in ctl.calls] == [m for _, m in cases]
            assert ctl.calls[1] == ("say", "Hello")
            assert ctl.calls[9] == ("config_set", {"tts.voice": "alice"})
            assert ctl.cfg.tts.voice == "alice"
            status = await request(ws, {"type": "status", "id": "s", "v": 1})
            assert status["result"] == {"state": "idle", "muted": False, "turn": 1}
            hist = await request(ws, {"type": "history.get", "id": "h"})
            assert hist["result"] == {"history": []}  # reset above

    asyncio.run(body())


def test_ask_streams_deltas_then_replies_with_the_answer() -> None:
    """`ask` sends `ask.delta` pieces tagged with its id, then a reply whose text is their concatenation."""

    async def body() -> None:
        async with running() as (server, _, _), client(server) as ws:
            await ws.send(json.dumps({"type": "ask", "id": "q1", "text": "hi"}))
            reply, before = await until(ws, "reply")
            deltas = [m["text"] for m in before if m["type"] == "ask.delta" and m["id"] == "q1"]
            assert deltas == ["You ", "said: ", "hi"]
            want = {"text": "You said: hi", "interrupted": False}
            assert reply == {"type": "reply", "command": "ask", "result": want, "id": "q1"}

    asyncio.run(body())


def test_every_event_reaches_a_subscriber_and_decodes_back() -> None:
    """A subscribed client receives every pipeline event type, and decode_event gives back the same event."""

    async def body() -> None:
        async with running() as (server, ctl, _), client(server) as ws, client(server) as quiet:
            assert (await request(ws, {"type": "subscribe", "id": 1}))["type"] == "reply"
            for ev in EVERY_EVENT:
                ctl.emit(ev)
            got = [await recv(ws) for _ in EVERY_EVENT]
            assert [p.decode_event(m) for m in got] == EVERY_EVENT
            assert got[0] == {"type": "state", "old": "idle", "new": "user_speaking", "time": 1.0}
            assert got[-1]["type"] == "error" and got[-1]["code"] == "pipeline"
            # the unsubscribed client saw none of them
            assert (await request(quiet, {"type": "status", "id": 2}))["type"] == "reply"
            assert (await request(ws, {"type": "unsubscribe", "id": 3}))["type"] == "reply"
            ctl.emit(EVERY_EVENT[0])
            assert (await request(ws, {"type": "status", "id": 4}))["id"] == 4

    asyncio.run(body())


def test_controller_errors_become_error_replies() -> None:
    """A ConfigError or InputError from the controller is an `error` with the command's id; the socket stays open."""

    async def body() -> None:
        async with running() as (server, _, _), client(server) as ws:
            bad = await request(ws, {"type": "config.set", "id": 7, "changes": {"vad.hang_ms": 1}})
            assert bad["type"] == "error" and bad["code"] == "config"
            assert "did you mean `vad.hangover_ms`" in bad["message"]
            empty = await request(ws, {"type": "say", "id": 8, "text": " "})
            assert empty["type"] == "error" and empty["code"] == "input" and "empty" in empty["message"]
            assert (await request(ws, {"type": "status", "id": 9}))["type"] == "reply"

    asyncio.run(body())


def test_a_long_say_does_not_block_other_commands() -> None:
    """While a `say` is in progress, `status` and `interrupt` on the same connection are answered at once."""

    async def body() -> None:
        async with running() as (server, ctl, _), client(server) as ws:
            ctl.say_gate = asyncio.Event()
            await ws.send(json.dumps({"type": "say", "id": "long", "text": "a long speech"}))
            assert (await request(ws, {"type": "interrupt", "id": "i"}))["type"] == "reply"
            assert (await request(ws, {"type": "status", "id": "s"}))["type"] == "reply"
            ctl.say_gate.set()
            assert (await until(ws, "reply"))[0]["id"] == "long"

    asyncio.run(body())


MALFORMED = [
    ("{not json", "bad_json", "not valid JSON"),
    ("[1, 2]", "bad_json", "must be a JSON object, got a list"),
    ('{"type": "dance"}', "unknown_type", "unknown command type 'dance'; valid types: ask, config.get"),
    ('{"id": 1}', "bad_field", "`type` must be a string naming a command, got null"),
    ('{"type": "say", "text": 5}', "bad_field", "`say.text` must be a string, got an integer"),
    ('{"type": "say"}', "bad_field", "`say` needs the field `text` (a string)"),
    ('{"type": "status", "volume": 3}', "bad_field", "`status` has no field `volume`"),
    ('{"type": "config.set", "changes": []}', "bad_field", "`config.set.changes` must be an object, got a list"),
    ('{"type": "status", "id": [1]}', "bad_field", "`id` must be a string or an integer, got a list"),
    ('{"type": "status", "v": 2}', "unsupported_version", "protocol version 2 is not supported"),
]


@pytest.mark.parametrize(("text", "code", "message"), MALFORMED)
def test_malformed_messages_get_errors_and_the_connection_survives(text: str, code: str, message: str) -> None:
    """Bad JSON, unknown types, wrong or missing fields and a bad version each get a named error, then status works."""

    async def body() -> None:
        async with running() as (server, _, _), client(server) as ws:
            await ws.send(text)
            err = await recv(ws)
            assert err["type"] == "error" and err["code"] == code, err
            assert message in err["message"], err["message"]
            assert (await request(ws, {"type": "status", "id": "after"}))["type"] == "reply"

    asyncio.run(body())


def test_binary_and_oversized_messages_get_errors_and_the_connection_survives() -> None:
    """A binary frame and a message over max_message_bytes get errors; a message over 4x the limit closes (1009)."""

    async def body() -> None:
        async with running(max_message_bytes=2048) as (server, _, _), client(server) as ws:
            await ws.send(b"\x00\x01")
            assert (await recv(ws))["code"] == "binary_frame"
            await ws.send(json.dumps({"type": "say", "text": "x" * 4000}))
            err = await recv(ws)
            assert err["code"] == "too_large" and "over the 2048-byte limit" in err["message"]
            assert (await request(ws, {"type": "status", "id": 1}))["type"] == "reply"
            await ws.send("x" * 10_000)
            with pytest.raises(Exception, match="1009"):
                await recv(ws)

    asyncio.run(body())


def test_rate_limit_refuses_excess_commands_but_keeps_the_connection() -> None:
    """Past commands_per_s (burst of one second's worth), commands get `rate_limited` errors; later ones pass again."""

    async def body() -> None:
        async with running(commands_per_s=2.0) as (server, ctl, _), client(server) as ws:
            for i in range(6):
                await ws.send(json.dumps({"type": "mute", "id": i}))
            got = [await recv(ws) for _ in range(6)]
            assert [g["type"] for g in got].count("reply") == 2
            limited = [g for g in got if g["type"] == "error"]
            assert len(limited) == 4 and all(g["code"] == "rate_limited" for g in limited)
            assert sum(1 for c in ctl.calls if c[0] == "mute") == 2
            await asyncio.sleep(0.6)
            assert (await request(ws, {"type": "status", "id": "later"}))["type"] == "reply"

    asyncio.run(body())


def test_slow_client_loses_oldest_events_with_a_count_and_never_blocks_others() -> None:
    """A subscriber that stops reading gets `events.dropped` (count > 0) later; a fast one receives all events."""

    async def body() -> None:
        n, size = 600, 20_000  # 12 MB of events: more than the socket buffers hold
        async with running(client_queue=8) as (server, ctl, _), client(server, max_queue=1) as slow:
            async with client(server) as fast:
                await request(slow, {"type": "subscribe", "id": 1})
                await request(fast, {"type": "subscribe", "id": 1})
                for i in range(n):  # lockstep: each event reaches the fast client while the slow one is stuck
                    ctl.emit(events.ErrorEvent(f"{i:06d}" + "x" * size, float(i)))
                    assert (await recv(fast))["message"][:6] == f"{i:06d}"
            # now drain the slow one: it missed events and was told how many
            seen, dropped = [], 0
            while len(seen) + dropped < n:
                m = await recv(slow)
                if m["type"] == "events.dropped":
                    dropped = m["dropped"]
                else:
                    seen.append(int(m["message"][:6]))
            assert dropped > 0 and seen == sorted(seen) and seen[-1] == n - 1
            assert len(seen) + dropped == n

    asyncio.run(body())


def test_many_clients_at_once() -> None:
    """Thirty clients connected together each get their own replies."""

    async def body() -> None:
        async with running() as (server, _, _):

            async def one(i: int) -> int:
                async with client(server) as ws:
                    return int((await request(ws, {"type": "status", "id": i}))["id"])

            assert sorted(await asyncio.gather(*(one(i) for i in range(30)))) == list(range(30))

    asyncio.run(body())


def test_idle_connection_is_closed_but_subscribers_stay() -> None:
    """A client that sends nothing for idle_timeout_s is closed; a subscriber (a listener) is kept open."""

    async def body() -> None:
        async with running(idle_timeout_s=0.3, ping_interval_s=0.1) as (server, ctl, _):
            async with client(server) as idle, client(server) as listener:
                await request(listener, {"type": "subscribe", "id": 1})
                await asyncio.sleep(0.8)  # several ping/pong rounds too
                with pytest.raises(Exception, match="idle"):
                    await recv(idle)
                ctl.emit(events.PartialTranscript("still here", 1.0))
                assert (await recv(listener))["text"] == "still here"

    asyncio.run(body())


def test_a_say_whose_reply_failed_gets_an_error_not_a_success() -> None:
    """A `say` whose reply fails (the pipeline's error event of its turn: the TTS ran out of memory) gets an
    `error` (code `failed`) naming why instead of an empty success; one the client caused gets code `input`; an
    error of another turn leaves it a success."""

    async def body() -> list[dict[str, Any]]:
        async with running() as (server, ctl, _):
            faults = iter([(False, 1), (True, 1), (False, 0)])  # (client_fault, turn offset of the error)

            async def say(text: str) -> None:
                client_fault, offset = next(faults)
                ctl.turn += 1
                ctl.emit(
                    events.ErrorEvent(
                        "turn: ModelError: out of memory; use a smaller model", 0.0, client_fault, ctl.turn - 1 + offset
                    )
                )
                ctl.emit(events.ResponseDone(ctl.turn, "", True, 0.0))

            ctl.say = say  # type: ignore[method-assign]
            async with client(server) as ws:
                return [await request(ws, {"type": "say", "id": i, "text": "Hello."}) for i in range(3)]

    failed, refused, other = asyncio.run(body())
    assert failed["type"] == "error" and failed["code"] == "failed" and failed["id"] == 0
    assert failed["message"] == "turn: ModelError: out of memory; use a smaller model"
    assert refused["type"] == "error" and refused["code"] == "input"
    assert other == {"type": "reply", "command": "say", "result": {}, "id": 2}


def test_an_app_whose_tools_await_calls_is_not_closed_as_idle() -> None:
    """An app that registered tools and then only waits for `tool.call` frames is kept past idle_timeout_s (its
    tools stay offered); once it withdraws them it idles out like any other client."""

    async def body() -> None:
        async with running(idle_timeout_s=0.3, ping_interval_s=0.1) as (server, ctl, _):
            async with client(server) as app:
                lamp = {"name": "set_lamp", "description": "Switch the lamp.", "parameters": {"type": "object"}}
                reply = await request(app, {"type": "tools.register", "id": 1, "tools": [lamp]})
                assert reply["result"] == {"tools": ["set_lamp"]}
                await asyncio.sleep(0.8)  # past the idle timeout, several ping/pong rounds too
                assert (await request(app, {"type": "status", "id": 2}))["type"] == "reply"
                assert ("app_gone", "app1") not in ctl.calls
                await request(app, {"type": "tools.register", "id": 3, "tools": []})
                await asyncio.sleep(0.8)
                with pytest.raises(Exception, match="idle"):
                    await recv(app)

    asyncio.run(body())


def test_client_that_never_answers_pings_is_dropped() -> None:
    """A peer that completes the handshake but never answers pings is disconnected after ping_interval_s."""

    async def body() -> None:
        async with running(ping_interval_s=0.2) as (server, _, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET /v1/control HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                ).encode()
            )
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            assert len(server.clients) == 1
            data = b""
            async with asyncio.timeout(5):
                while chunk := await reader.read(4096):  # hello, pings, then the close frame: never answered
                    data += chunk
            writer.close()
            opcodes, close_code = [], None
            while data:  # server frames are unmasked and small here: FIN|opcode, length, payload
                op, n = data[0] & 0x0F, data[1]
                opcodes.append(op)
                if op == 0x8:
                    close_code = int.from_bytes(data[2:4], "big")
                data = data[2 + n :]
            assert opcodes[0] == 0x1 and 0x9 in opcodes  # the hello text frame, then a ping
            assert close_code == 1011  # "keepalive ping timeout"
            for _ in range(100):
                if not server.clients:
                    break
                await asyncio.sleep(0.01)
            assert not server.clients

    asyncio.run(body())
