"""A Realtime client that reads too slowly for its session's event queue loses reply audio first, never the events
that end something, and is told once with an error event."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np

from assistant import events
from assistant.bus import EventBus
from assistant.sessions import QUEUE_LIMIT, RealtimeSession
from tests.server.helpers import TOKEN, client, running, until


def test_a_full_session_queue_drops_reply_audio_and_keeps_what_ends_a_response() -> None:
    """Past QUEUE_LIMIT waiting events, a session's queue drops its oldest reply audio, never the response's start,
    text or response.done (it dropped the oldest event of any kind, response.done included), and counts what it
    lost."""

    async def body() -> None:
        bus: EventBus[events.SessionEvent] = EventBus()
        session = RealtimeSession(SimpleNamespace(bus=bus), on_close=lambda s: None)  # type: ignore[arg-type]
        audio = np.zeros(240, np.float32)
        bus.publish(events.SpeechStarted(0, 0, 0.0))
        bus.publish(events.ResponseStarted(1, 0.0))
        for _ in range(QUEUE_LIMIT + 100):
            bus.publish(events.ResponseAudio(1, audio))
        bus.publish(events.ResponseTextDelta(1, "hi", 0.0))
        bus.publish(events.ResponseDone(1, "hi", False, 0.0))
        for _ in range(QUEUE_LIMIT):  # the next reply's audio must not push the first one's end out either
            bus.publish(events.ResponseAudio(2, audio))
        bus.close()
        got = [ev async for ev in session.events()]
        kinds = [type(ev).__name__ for ev in got if not isinstance(ev, events.ResponseAudio)]
        assert kinds == ["SpeechStarted", "ResponseStarted", "ResponseTextDelta", "ResponseDone"]
        assert len(got) == QUEUE_LIMIT and session.dropped == QUEUE_LIMIT + 100 + QUEUE_LIMIT + 4 - QUEUE_LIMIT

    asyncio.run(body())


def test_a_client_whose_events_were_dropped_is_told_once() -> None:
    """When its session has dropped events, the Realtime client gets one `error` event (server_error,
    events_dropped) naming the count and the slow reading, and the response still ends with response.done."""

    async def body() -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with running() as (server, _, backend), client(server, "/v1/realtime", additional_headers=headers) as ws:
            await until(ws, "session.created")
            backend.sessions[0].dropped = 7
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}
            seen: list[dict[str, object]] = []
            for _ in range(2):
                await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
                await ws.send(json.dumps({"type": "response.create"}))
                done, before = await until(ws, "response.done")
                seen += before
                assert done["response"]["status"] == "completed"
        errors = [e["error"] for e in seen if e["type"] == "error"]
        assert len(errors) == 1
        assert errors[0]["type"] == "server_error" and errors[0]["code"] == "events_dropped"
        assert errors[0]["message"].startswith("7 session events were dropped") and "too slowly" in errors[0]["message"]

    asyncio.run(body())
