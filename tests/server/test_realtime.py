"""/v1/realtime: driven by the official openai SDK and by a raw websockets client, against the scripted session."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed

from assistant.audio.format import StreamResampler, float32_to_int16, int16_to_float32, resample
from assistant.errors import ModelError
from tests.server.fakes import FakeSession
from tests.server.helpers import TOKEN, client, collect, recv, running, until

RATE = 24_000


def tone(seconds: float, amp: float = 0.5, hz: float = 300.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return float32_to_int16((amp * np.sin(2 * np.pi * hz * t)).astype(np.float32))


def b64(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


def test_openai_sdk_session_audio_in_response_audio_out_and_cancel() -> None:
    """The official SDK: session.update, streamed audio + commit -> transcript, response audio deltas, then a cancel."""

    async def body() -> None:
        async with running() as (server, _, backend):
            sdk = AsyncOpenAI(api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{server.port}/v1", max_retries=0)
            async with sdk.realtime.connect(model="assistant") as conn:
                created = await collect(conn, "session.created")
                assert created[-1].session.audio.input.turn_detection.type == "server_vad"
                await conn.session.update(
                    session={
                        "type": "realtime",
                        "instructions": "Answer in one word.",
                        "audio": {
                            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
                            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alice"},
                        },
                    }
                )
                updated = (await collect(conn, "session.updated"))[-1]
                assert updated.session.instructions == "Answer in one word."
                assert updated.session.audio.input.turn_detection is None
                assert updated.session.audio.output.voice == "alice"

                audio = tone(1.0)
                for i in range(0, len(audio), 480):  # 20 ms chunks, as a microphone would send them
                    await conn.input_audio_buffer.append(audio=b64(audio[i : i + 480]))
                await conn.input_audio_buffer.commit()
                got = await collect(conn, "conversation.item.done")
                assert [e.type for e in got] == [
                    "input_audio_buffer.committed",
                    "conversation.item.added",
                    "conversation.item.input_audio_transcription.delta",
                    "conversation.item.input_audio_transcription.completed",
                    "conversation.item.done",
                ]
                assert got[-2].transcript == "heard 16000 samples"  # 1 s at 24 kHz -> 16 000 samples at 16 kHz
                assert got[-2].usage.type == "duration" and got[-2].usage.seconds == 1.0
                assert got[-2].item_id == got[0].item_id == got[-1].item.id
                assert got[-1].item.content[0].transcript == "heard 16000 samples"

                await conn.response.create()
                got = await collect(conn, "response.done")
                kinds = [e.type for e in got]
                assert kinds[0] == "response.created" and kinds[-1] == "response.done"
                deltas = [e for e in got if e.type == "response.output_audio.delta"]
                assert len(deltas) == FakeSession.N_CHUNKS
                pcm = np.concatenate([np.frombuffer(base64.b64decode(e.delta), "<i2") for e in deltas])
                assert len(pcm) == FakeSession.N_CHUNKS * FakeSession.CHUNK
                assert abs(np.abs(pcm).max() / 32767 - 0.3) < 0.01  # the session's 0.3-amplitude tone, intact
                transcript = next(e for e in got if e.type == "response.output_audio_transcript.done").transcript
                assert transcript == "reply 1 ...."
                assert got[-1].response.status == "completed"

                backend.hold_replies = asyncio.Event()
                await conn.response.create()
                refused = (await collect(conn, "error"))[-1]  # everything so far is answered
                assert refused.error.code == "response_create_nothing_to_answer"
                await conn.conversation.item.create(
                    item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "More?"}]}
                )
                await conn.response.create()
                first = await collect(conn, "response.output_audio.delta")
                assert [e.type for e in first][:3] == [
                    "conversation.item.added",
                    "conversation.item.done",
                    "response.created",
                ]
                await conn.response.cancel()
                done = (await collect(conn, "response.done"))[-1]
                assert done.response.status == "cancelled"
                assert done.response.output[0].status == "incomplete"

        session = backend.sessions[0]  # the server has closed: every handler has finished
        assert ("instructions", "Answer in one word.") in session.calls
        assert ("voice", "alice") in session.calls and ("turn_detection", None) in session.calls
        assert ("cancel", None) in session.calls and session.closed
        heard = np.concatenate(session.audio)
        expect = float32_to_int16(resample(int16_to_float32(audio), RATE, 16_000))
        assert np.array_equal(heard, expect)  # chunked streaming resampling == one-shot resampling

    asyncio.run(body())


def test_server_vad_turn_gives_speech_events_transcript_and_response() -> None:
    """With server_vad, speech then silence -> speech_started/stopped, committed, transcript, and a response."""

    async def body() -> None:
        async with running() as (server, _, _), client(server, "/v1/realtime", additional_headers=auth()) as ws:
            await until(ws, "session.created")
            await ws.send(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "type": "realtime",
                            "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 200}}},
                        },
                    }
                )
            )
            await until(ws, "session.updated")
            audio = np.concatenate([np.zeros(2400, np.int16), tone(0.5), np.zeros(RATE // 2, np.int16)])
            for i in range(0, len(audio), 2400):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(audio[i : i + 2400])}))
            done, seen = await until(ws, "response.done")
            kinds = [m["type"] for m in seen]
            order = [
                "input_audio_buffer.speech_started",
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "conversation.item.input_audio_transcription.completed",
                "response.created",
                "response.output_audio.delta",
            ]
            assert [kinds.index(k) for k in order] == sorted(kinds.index(k) for k in order)
            started = seen[kinds.index("input_audio_buffer.speech_started")]
            stopped = seen[kinds.index("input_audio_buffer.speech_stopped")]
            # the tone starts at 100 ms; the scripted VAD decides per block, and the resampler holds back ~20 ms
            assert 75 <= started["audio_start_ms"] <= 100 and started["item_id"] == stopped["item_id"]
            assert 600 <= stopped["audio_end_ms"] <= 700  # the tone ends at 600 ms, inside a 100 ms VAD block
            assert done["response"]["status"] == "completed"

    asyncio.run(body())


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_text_item_truncate_and_clear() -> None:
    """conversation.item.create adds user text; truncate cuts a finished answer; clear empties the buffer."""

    async def body() -> None:
        async with running() as (server, _, backend), client(server, "/v1/realtime", additional_headers=auth()) as ws:
            await until(ws, "session.created")
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            added = await recv(ws)
            assert added["type"] == "conversation.item.added" and added["item"]["content"][0]["text"] == "Hi there"
            await ws.send(json.dumps({"type": "response.create"}))
            done, _ = await until(ws, "response.done")
            item_id = done["response"]["output"][0]["id"]
            await ws.send(
                json.dumps(
                    {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 150}
                )
            )
            truncated = await recv(ws)
            assert truncated["type"] == "conversation.item.truncated" and truncated["audio_end_ms"] == 150
            await ws.send(
                json.dumps(
                    {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 5000}
                )
            )
            assert "past the 150 ms" in (await recv(ws))["error"]["message"]
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(tone(0.1, 0.0))}))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert (await recv(ws))["type"] == "input_audio_buffer.cleared"
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "c1"}))
            err = await recv(ws)
            assert err["error"]["code"] == "input_audio_buffer_commit_empty" and err["error"]["event_id"] == "c1"
            calls = backend.sessions[0].calls
            assert ("user_text", "Hi there") in calls and ("truncate", (1, 150)) in calls
            # 0.1 s = 1600 samples at 16 kHz, less what the resampler still holds (its filter delay)
            held = 1600 - len(StreamResampler(RATE, 16_000).push(tone(0.1, 0.0)))
            assert 0 < held < 400 and ("clear", 1600 - held) in calls

    asyncio.run(body())


def test_beta_clients_get_beta_event_names() -> None:
    """A client sending `OpenAI-Beta: realtime=v1` gets the beta session shape, conversation.created, and
    response.audio.delta / response.audio_transcript.* names with beta content types."""

    async def body() -> None:
        headers = {**auth(), "OpenAI-Beta": "realtime=v1"}
        async with running() as (server, _, _), client(server, "/v1/realtime", additional_headers=headers) as ws:
            await until(ws, "session.created")
            await ws.send(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "modalities": ["audio", "text"],
                            "voice": "alice",
                            "input_audio_format": "pcm16",
                            "output_audio_format": "pcm16",
                            "turn_detection": None,
                        },
                    }
                )
            )
            updated, before = await until(ws, "session.updated")
            assert "conversation.created" in {m["type"] for m in before}
            assert updated["session"]["voice"] == "alice" and updated["session"]["input_audio_format"] == "pcm16"
            assert updated["session"]["modalities"] == ["audio", "text"] and "audio" not in updated["session"]
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            await ws.send(json.dumps({"type": "response.create"}))
            done, seen = await until(ws, "response.done")
            kinds = {m["type"] for m in seen}
            assert {"response.audio.delta", "response.audio_transcript.delta", "response.audio.done"} <= kinds
            assert "response.output_audio.delta" not in kinds and "conversation.item.created" in kinds
            assert done["response"]["output"][0]["content"][0]["type"] == "audio"

    asyncio.run(body())


BAD_REALTIME = [
    ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_audio", "not valid base64"),
    ('{"type": "input_audio_buffer.append", "audio": "AAAA"}', "invalid_audio", "3 bytes, not a whole number"),
    ('{"type": "input_audio_buffer.append", "audio": ""}', "invalid_audio", "`audio` is empty"),
    (
        '{"type": "input_audio_buffer.append", "audio": 12}',
        "invalid_value",
        "`input_audio_buffer.append.audio` must be",
    ),
    (
        '{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}',
        "invalid_value",
        'use {"type": "audio/pcm", "rate": 24000}',
    ),
    (
        '{"type": "session.update", "session": {"turn_detection": {"type": "near_vad"}}}',
        "invalid_value",
        'use {"type": "server_vad"}, {"type": "semantic_vad"} or null',
    ),
    (
        '{"type": "session.update", "session": {"audio": {"output": {"voice": "bob"}}}}',
        "invalid_value",
        "unknown voice 'bob'",
    ),
    (
        '{"type": "conversation.item.create", "item": {"type": "message", "role": "assistant", "content": []}}',
        "invalid_value",
        "only user text messages",
    ),
    (
        '{"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, "audio_end_ms": -1}',
        "invalid_value",
        "must be an integer >= 0",
    ),
    (
        '{"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 5}',
        "item_truncate_invalid_item_id",
        "no finished assistant audio item",
    ),
    ('{"type": "response.cancel"}', "response_cancel_not_active", "no response to cancel"),
    ('{"type": "conversation.item.delete", "item_id": "x"}', "item_delete_invalid_item_id", "no item 'x'"),
    ('{"type": "conversation.item.frob", "item_id": "x"}', "unknown_type", "this server accepts session.update"),
    ("{oops", "bad_json", "not valid JSON"),
]


@pytest.mark.parametrize(("text", "code", "message"), BAD_REALTIME)
def test_bad_realtime_events_get_errors_and_the_session_survives(text: str, code: str, message: str) -> None:
    """Bad base64, wrong audio length, wrong types, unsupported values: an `error` event, then the session works."""

    async def body() -> None:
        async with running() as (server, _, _), client(server, "/v1/realtime", additional_headers=auth()) as ws:
            await until(ws, "session.created")
            await ws.send(text)
            err = await recv(ws)
            assert err["type"] == "error" and err["error"]["code"] == code, err
            assert message in err["error"]["message"], err["error"]["message"]
            await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "still here"}}))
            assert (await recv(ws))["session"]["instructions"] == "still here"

    asyncio.run(body())


@pytest.mark.parametrize("sizes", [[1], [7, 1, 300], [480] * 10, [1000, 3, 3, 2000, 17]])
def test_stream_resampler_equals_one_shot_resampling(sizes: list[int]) -> None:
    """24 -> 16 kHz block by block (any block sizes), then flush, gives exactly audio.format.resample's output."""
    rng = np.random.default_rng(len(sizes))
    x = rng.integers(-20000, 20000, sum(sizes)).astype(np.int16)
    r = StreamResampler(RATE, 16_000)
    pieces, at = [], 0
    for n in sizes:
        pieces.append(r.push(x[at : at + n]))
        at += n
    pieces.append(r.flush())
    expect = float32_to_int16(resample(int16_to_float32(x), RATE, 16_000))
    assert np.array_equal(np.concatenate(pieces), expect)


def test_session_unavailable_is_an_error_then_a_close() -> None:
    """When the backend cannot open a session, the client gets an `error` naming why, then close code 1011."""

    async def body() -> None:
        async with running() as (server, _, backend):

            async def refuse() -> FakeSession:
                raise ModelError("all sessions busy; close another client or wait")

            backend.open_session = refuse  # type: ignore[method-assign]
            async with client(server, "/v1/realtime", additional_headers=auth()) as ws:
                err = await recv(ws)
                assert err["error"]["code"] == "session_unavailable" and "all sessions busy" in err["error"]["message"]
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011

    asyncio.run(body())


def test_openai_sdk_beta_client_gets_beta_names() -> None:
    """The SDK's beta realtime client (OpenAI-Beta: realtime=v1): beta session shape in, beta event names out."""

    async def body() -> None:
        async with running() as (server, _, backend):
            sdk = AsyncOpenAI(api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{server.port}/v1", max_retries=0)
            async with sdk.beta.realtime.connect(model="assistant") as conn:
                await collect(conn, "session.created")
                await conn.session.update(
                    session={"modalities": ["audio", "text"], "voice": "alice", "input_audio_format": "pcm16",
                             "output_audio_format": "pcm16", "turn_detection": None}
                )  # fmt: skip
                await collect(conn, "session.updated")
                await conn.input_audio_buffer.append(audio=b64(tone(0.2)))
                await conn.input_audio_buffer.commit()
                done = (await collect(conn, "conversation.item.input_audio_transcription.completed"))[-1]
                assert done.transcript == "heard 3200 samples"
                await conn.response.create()
                got = await collect(conn, "response.done")
                kinds = [e.type for e in got]
                assert kinds.count("response.audio.delta") == FakeSession.N_CHUNKS
                assert "response.audio_transcript.done" in kinds and "conversation.item.created" in kinds
                assert got[-1].response.status == "completed"
        assert ("voice", "alice") in backend.sessions[0].calls

    asyncio.run(body())
