"""Property-based fuzzing of both endpoints: thousands of random and mutated frames, zero crashes."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.helpers import client, recv, request, running, until

# strings include lone surrogates: legal as JSON escapes, impossible to encode as UTF-8
strings = st.lists(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=12).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | strings,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
    max_leaves=12,
)

NATIVE = [
    {"type": "status", "id": 1},
    {"type": "say", "text": "hello"},
    {"type": "ask", "text": "hi", "id": "a"},
    {"type": "interrupt"},
    {"type": "mute"},
    {"type": "unmute"},
    {"type": "ptt.start"},
    {"type": "ptt.stop"},
    {"type": "config.get"},
    {"type": "config.set", "changes": {"vad.aggressiveness": 1}},
    {"type": "history.get"},
    {"type": "history.reset"},
    {"type": "subscribe"},
    {"type": "unsubscribe"},
]
PCM = base64.b64encode(b"\x10\x27" * 240).decode()
REALTIME = [
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": "x",
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": {"type": "server_vad"}}
            },
        },
    },
    {"type": "session.update", "session": {"voice": "alice", "turn_detection": None, "modalities": ["text"]}},
    {"type": "input_audio_buffer.append", "audio": PCM},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    },
    {"type": "conversation.item.truncate", "item_id": "item_3", "content_index": 0, "audio_end_ms": 10},
    {"type": "response.create", "response": {"instructions": "short"}},
    {"type": "response.cancel"},
]


def mutated(templates: list[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid message with one of its keys dropped, retyped or added, or its type changed."""

    def mutate(msg: dict[str, Any], how: int, key: str, value: Any) -> dict[str, Any]:
        out = dict(msg)
        keys = sorted(out)
        target = keys[len(key) % len(keys)]
        if how == 0:
            out.pop(target)
        elif how == 1:
            out[target] = value
        elif how == 2:
            out[key] = value
        elif how == 3:
            out["type"] = str(out["type"]) + key
        else:
            inner = next((k for k, v in out.items() if isinstance(v, dict)), None)
            if inner:
                out[inner] = {**out[inner], key: value}
        return out

    return st.builds(mutate, st.sampled_from(templates), st.integers(0, 4), strings, json_values)


def frames(templates: list[dict[str, Any]]) -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        st.sampled_from(templates).map(json.dumps),
        mutated(templates).map(json.dumps),
        json_values.map(json.dumps),
        st.text(max_size=40),
        st.binary(max_size=40),
        mutated(templates).map(lambda m: json.dumps(m)[: len(json.dumps(m)) // 2]),  # truncated JSON
    )


FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(st.lists(frames(NATIVE), min_size=20, max_size=60))
def test_native_endpoint_survives_random_and_mutated_messages(batch: list[str | bytes]) -> None:
    """Random, mutated and truncated frames never crash a handler or close the socket; `status` answers after."""

    async def body() -> None:
        async with running(commands_per_s=10_000.0) as (server, _, _), client(server, max_queue=None) as ws:
            for frame in batch:
                await ws.send(frame)
            reply = await request(ws, {"type": "status", "id": "final-check"})
            assert reply["type"] == "reply"
            assert server.handler_errors == 0

    asyncio.run(body())


@FUZZ
@given(st.lists(frames(REALTIME), min_size=20, max_size=60))
def test_realtime_endpoint_survives_random_and_mutated_messages(batch: list[str | bytes]) -> None:
    """Random, mutated and truncated Realtime events never crash the session; it still answers session.update."""

    async def body() -> None:
        async with running(commands_per_s=10_000.0) as (server, _, _):
            # max_queue=None: the client keeps reading, so closing never waits behind unread reply audio
            headers = {"Authorization": "Bearer test-token-1234"}
            async with client(server, "/v1/realtime", additional_headers=headers, max_queue=None) as ws:
                await until(ws, "session.created")
                for frame in batch:
                    await ws.send(frame)
                await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "final-check"}}))
                while True:
                    got = await recv(ws)
                    if got["type"] == "session.updated" and got["session"]["instructions"] == "final-check":
                        break
                assert server.handler_errors == 0

    asyncio.run(body())
