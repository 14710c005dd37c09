"""The plain-HTTP side of the port with the scripted doubles: bounded concurrency, bad requests, slow heads,
and the Realtime idle timeout's scripted clock."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import numpy as np
import pytest

from assistant import events
from assistant.config import ServerConfig
from assistant.server import http
from assistant.server import realtime_protocol as rp
from assistant.server.realtime import RealtimeConversation, idle_note
from assistant.server.ws import MAX_HTTP_REQUESTS, ControlServer
from tests.server.fakes import FakeBackend, FakeController, FakeSession, FakeSpeech
from tests.server.helpers import TOKEN, running


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    return answer


def test_http_requests_at_once_are_bounded() -> None:
    """With MAX_HTTP_REQUESTS requests waiting for their bodies, one more gets 503 at once; the others still finish."""

    async def body() -> tuple[bytes, list[bytes]]:
        async with running() as (server, _, _):
            head = f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            head += "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(MAX_HTTP_REQUESTS)]
            for _, w in held:
                w.write(head.encode())  # the head, not the body: each request waits
                await w.drain()
            for _ in range(1000):  # the heads reach the server's handlers on its next loop turns
                if len(server.http_tasks) == MAX_HTTP_REQUESTS:
                    break
                await asyncio.sleep(0.01)
            refused = await raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answers = []
            for r, w in held:
                w.write(b"{}")
                await w.drain()
                answers.append(await r.read())
                w.close()
            return refused, answers

    refused, answers = asyncio.run(body())
    assert refused.startswith(b"HTTP/1.1 503") and b"too many HTTP requests" in refused
    assert all(a.startswith(b"HTTP/1.1 503") and b"speech endpoints are not enabled" in a for a in answers)


def test_malformed_and_unknown_requests_get_one_line_errors() -> None:
    """A bad request line is a 400, a wrong method a 405, a WebSocket path without upgrade a 426, and the daemon
    keeps serving."""

    async def body() -> list[bytes]:
        async with running() as (server, _, _):
            auth = f"Authorization: Bearer {TOKEN}\r\n"
            return [
                await raw(server.port, b"NONSENSE\r\n\r\n"),
                await raw(server.port, f"DELETE /v1/models HTTP/1.1\r\n{auth}\r\n".encode()),
                await raw(server.port, f"GET /v1/realtime HTTP/1.1\r\n{auth}\r\n".encode()),
                await raw(server.port, f"GET /health HTTP/1.1\r\n{auth}\r\n".encode()),
            ]

    bad, method, upgrade, health = asyncio.run(body())
    assert bad.startswith(b"HTTP/1.1 400") and b"malformed request line" in bad
    assert method.startswith(b"HTTP/1.1 405") and upgrade.startswith(b"HTTP/1.1 426")
    assert health.startswith(b"HTTP/1.1 200") and json.loads(health.split(b"\r\n\r\n", 1)[1])["status"] == "ok"


def test_idle_timeout_fires_once_after_the_reply_has_played() -> None:
    """With idle_timeout_ms 5000, the deadline is the reply's end plus its audio plus 5 s; none while a reply is
    in progress; timeout_triggered fires once, commits the quiet buffer and asks for a response, then no deadline
    until the next reply."""

    async def body() -> None:
        conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.", now=0.0)
        conv.handle(rp.SessionUpdate(turn_detection_given=True, turn_detection=rp.TurnDetection(idle_timeout_ms=5000)))
        conv.on_event(events.ResponseStarted(1, 10.0))
        assert conv.deadline() is None  # a reply is in progress
        conv.on_event(events.ResponseAudio(1, np.zeros(24_000, np.float32), 10.5))
        conv.on_event(events.ResponseDone(1, "Hi.", False, 11.0))
        assert conv.deadline() == 11.0 + 1.0 + 5.0  # one second of audio sent: played by 12.0
        assert conv.tick(16.9) == []
        fired = conv.tick(17.0)
        assert [type(e) for e in fired] == [rp.TimeoutTriggered, rp.BufferCommitted, rp.ItemAdded]
        assert fired[0].item_id == fired[1].item_id and conv.deadline() is None
        session = conv.session
        assert isinstance(session, FakeSession) and ("create_response", None) in session.calls
        assert ("user_text", idle_note(5000)) in session.calls
        assert conv.tick(30.0) == []

    asyncio.run(body())


def test_idle_timeout_waits_for_the_turns_still_being_transcribed() -> None:
    """No idle timeout fires while a committed turn is still being transcribed (the user spoke: its words are
    coming): it fired 5 s after the first of two turns' transcripts, telling the model the user said nothing and
    asking the turn core for a response while it was preparing one (an error that ended the session's timer)."""

    async def body() -> None:
        conv = RealtimeConversation(FakeSession(FakeBackend()), "default", "Be brief.", now=0.0)
        conv.handle(rp.SessionUpdate(turn_detection_given=True, turn_detection=rp.TurnDetection(idle_timeout_ms=5000)))
        for start in (0, 32_000):  # two turns, each committed by the server VAD
            conv.on_event(events.SpeechStarted(start, start, 1.0))
            conv.on_event(events.SpeechEnded(start, start + 16_000, 2.0))
        conv.on_event(events.FinalTranscript("What time is it?", "en", 3.0))
        assert conv.deadline() is None  # the second turn's transcript is still coming
        assert conv.tick(30.0) == []
        conv.on_event(events.FinalTranscript("And the date?", "en", 31.0))
        assert conv.deadline() == 31.0 + 5.0

    asyncio.run(body())


def test_an_upload_that_expects_100_continue_gets_it_before_sending_the_body() -> None:
    """A request with `Expect: 100-continue` (curl sends it for bodies over 1 MB) gets `100 Continue` before it sends
    the body, then its answer (it got nothing: curl waited a second per upload before sending anyway)."""

    async def body() -> tuple[bytes, bytes]:
        async with running() as (server, _, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            payload = json.dumps({"model": "tts-1", "input": "hi", "voice": "alloy"}).encode()
            head = (
                f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nExpect: 100-continue\r\n\r\n"
            )
            writer.write(head.encode())
            await writer.drain()
            async with asyncio.timeout(10):
                interim = await reader.readuntil(b"\r\n\r\n")
            writer.write(payload)
            await writer.drain()
            async with asyncio.timeout(10):
                final = await reader.read()
            writer.close()
            return interim, final

    interim, final = asyncio.run(body())
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 ")  # the request's own answer follows


def test_a_200_kb_header_line_gets_a_readable_431() -> None:
    """A request whose header line is 200 KB is answered 431 naming the limit (it was a connection reset), and the
    server goes on answering."""

    async def body() -> tuple[bytes, bytes]:
        async with running() as (server, _, _):
            big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
            refused = await raw(server.port, big)
            after = await raw(
                server.port, f"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
            )
            return refused, after

    refused, after = asyncio.run(body())
    assert refused.startswith(b"HTTP/1.1 431 "), refused[:200]
    assert b"send fewer or shorter headers" in refused
    assert after.startswith(b"HTTP/1.1 200 "), after[:200]


class _EndlessSpeech(FakeSpeech):
    """An AudioService whose speech never ends: a second of silence per chunk, as fast as it is taken."""

    async def speak(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        while True:
            yield np.zeros(24_000, np.float32)
            await asyncio.sleep(0)


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(1000):  # a safety net against hangs (10 s), never a timing assertion
        if cond():
            return
        await asyncio.sleep(0.01)


def test_an_http_client_that_never_reads_its_answer_gives_its_slot_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A speech request whose client stays connected but reads nothing is dropped after SEND_TIMEOUT_S; each such
    client held one of the MAX_HTTP_REQUESTS slots for good, so over days /health itself answered 503."""
    monkeypatch.setattr(http, "SEND_TIMEOUT_S", 0.3)
    cfg = replace(ServerConfig(), port=0, token=TOKEN)

    async def body() -> tuple[int, bytes]:
        async with ControlServer(cfg, FakeController(), FakeBackend(), audio=_EndlessSpeech()) as server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once: the server's writes stall
            sock.connect(("127.0.0.1", server.port))
            payload = b'{"input": "Hello there.", "response_format": "pcm"}'
            head = f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            sock.sendall(head.encode() + payload)
            try:
                await _until(lambda: bool(server.http_tasks))  # being answered
                await _until(lambda: not server.http_tasks)  # stalled, then dropped; never read meanwhile
                held = len(server.http_tasks)
                return held, await raw(
                    server.port, f"GET /health HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
                )
            finally:
                sock.close()

    held, health = asyncio.run(body())
    assert held == 0
    assert health.startswith(b"HTTP/1.1 200")
