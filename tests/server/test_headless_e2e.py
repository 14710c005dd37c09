"""Headless end to end: the real ControlServer, the real pipeline and sessions, tiny random-weight engines.

Nothing is faked: espeak-ng speech is appended over `/v1/realtime` (pcm16 24 kHz, as a remote microphone would
send it) and the session's server VAD, transcriber, LLM and TTS answer it with audio over the socket; the native
`ask` goes through the daemon's own pipeline. Skipped when espeak-ng, the tiny-model builders or the Qwen2 BPE
tables are missing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from assistant import cli
from assistant.audio.format import CAPTURE_RATE, float32_to_int16, int16_to_float32, resample
from assistant.audio.sinks import NullSink
from assistant.compute import Compute
from assistant.config import Config, to_dict
from assistant.conversation import Conversation
from assistant.daemon import DaemonControl
from assistant.oneshot import OneShot
from assistant.server.protocol import DEFAULT_LIMITS, Limits
from assistant.server.ws import ControlServer
from assistant.sessions import Sessions
from tests import tiny_engines
from tests.speech import needs_espeak, say, silence

TOKEN = "e2e-token"
WAIT_S = 120.0  # safety net for a busy shared CPU; never a timing assertion
RATE = 24_000
CHUNK_MS = 100


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    changes = {"pipeline.mode": "hands_free", "server.port": 0, "server.token": TOKEN}
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("headless_models"), changes)


@asynccontextmanager
async def daemon(cfg: Config, limits: Limits = DEFAULT_LIMITS) -> AsyncIterator[tuple[ControlServer, Conversation]]:
    """What `assistant run` builds without a sound card: engines on one compute thread, pipeline, server."""
    compute = Compute()
    try:
        engines = await compute.run(cli.build_engines, cfg)
        pipeline = Conversation(cfg, engines, None, NullSink(), compute)
        backend = Sessions(pipeline, cli.SharedEngines(cfg, engines), cfg.server.realtime_sessions)
        audio = OneShot(cfg, engines, compute)
        async with ControlServer(cfg.server, DaemonControl(pipeline), backend, audio=audio, limits=limits) as server:
            yield server, pipeline
        await pipeline.aclose()
    finally:
        await asyncio.to_thread(compute.close, 5.0)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        return json.loads(await ws.recv())  # type: ignore[no-any-return]


async def until(ws: ClientConnection, kind: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Read (keeping everything in `seen`) until a message of type `kind`."""
    while True:
        msg = await recv(ws)
        seen.append(msg)
        if msg["type"] == kind:
            return msg


def speech_24k() -> np.ndarray:
    """A spoken question with silence around it, int16 at 24 kHz (the Realtime input format)."""
    x = np.concatenate([silence(0.3), say("What time is it now?"), silence(1.5)])
    return float32_to_int16(resample(int16_to_float32(x), CAPTURE_RATE, RATE))


@needs_espeak
def test_realtime_speech_in_gets_transcript_and_spoken_reply_out(tiny_config: Config) -> None:
    """Speech appended over /v1/realtime with server_vad gives speech_started/stopped, committed, transcription,
    a response with output_audio.delta chunks, and response.done (completed); the session history holds it."""
    cfg = tiny_config

    async def body() -> tuple[list[dict[str, Any]], float]:
        async with daemon(cfg) as (server, pipeline):
            url = f"ws://127.0.0.1:{server.port}/v1/realtime"
            async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, max_size=None) as ws:
                seen: list[dict[str, Any]] = []
                await until(ws, "session.created", seen)
                detection = {"type": "server_vad", "silence_duration_ms": 500, "create_response": True}
                update = {"type": "session.update", "session": {"audio": {"input": {"turn_detection": detection}}}}
                await ws.send(json.dumps(update))
                await until(ws, "session.updated", seen)
                audio = speech_24k()
                step = RATE * CHUNK_MS // 1000
                began = time.monotonic()
                for i in range(0, len(audio), step):
                    chunk = base64.b64encode(audio[i : i + step].astype("<i2").tobytes()).decode()
                    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                done = await until(ws, "response.done", seen)
                elapsed = time.monotonic() - began
                assert done["response"]["status"] == "completed", done
                assert pipeline.engines.chat.history == []  # the session had its own conversation
            return seen, elapsed

    seen, elapsed = asyncio.run(body())
    kinds = [m["type"] for m in seen]
    order = [
        kinds.index(k)
        for k in (
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
            "response.output_audio.delta",
            "response.output_audio.done",
            "response.done",
        )
    ]
    assert order == sorted(order), kinds
    started = next(m for m in seen if m["type"] == "input_audio_buffer.speech_started")
    stopped = next(m for m in seen if m["type"] == "input_audio_buffer.speech_stopped")
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
    transcript = next(m for m in seen if m["type"] == "conversation.item.input_audio_transcription.completed")
    deltas = [m for m in seen if m["type"] == "response.output_audio.delta"]
    samples = sum(len(base64.b64decode(m["delta"])) // 2 for m in deltas)
    said = "".join(m["delta"] for m in seen if m["type"] == "response.output_audio_transcript.delta")
    done = seen[-1]["response"]["output"][0]["content"][0]["transcript"]
    print(
        f"transcript={transcript['transcript']!r} reply={said!r} audio={len(deltas)} chunks, "
        f"{samples / RATE:.2f} s; {elapsed:.1f} s from the first append to response.done"
    )
    assert transcript["transcript"].strip(), "the tiny STT heard nothing, so nothing was answered"
    assert len(deltas) >= 1 and samples > 0
    assert said and done == said


def test_native_ask_streams_through_the_real_pipeline(tiny_config: Config) -> None:
    """`ask` over /v1/control runs the daemon's pipeline: ask.delta pieces, then a reply holding their join."""
    cfg = tiny_config

    async def body() -> tuple[list[str], dict[str, Any], list[Any]]:
        async with daemon(cfg) as (server, pipeline):
            url = f"ws://127.0.0.1:{server.port}/v1/control"
            async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                assert (await recv(ws))["type"] == "hello"
                await ws.send(json.dumps({"type": "ask", "id": "q1", "text": "Hello, who are you?"}))
                deltas: list[str] = []
                while (msg := await recv(ws))["type"] == "ask.delta":
                    assert msg["id"] == "q1"
                    deltas.append(msg["text"])
                history = await pipeline.compute.run(lambda: list(pipeline.engines.chat.history))
            return deltas, msg, history

    deltas, reply, history = asyncio.run(body())
    print(f"ask: {len(deltas)} deltas, answer {reply['result'].get('text')!r}")
    assert reply["type"] == "reply" and reply["id"] == "q1", reply
    assert deltas and reply["result"]["text"] == "".join(deltas)
    assert [m.role for m in history] == ["user", "assistant"] and history[0].content == "Hello, who are you?"
    assert history[1].content == "".join(deltas).strip()


def test_an_ask_cut_short_says_so(tiny_config: Config) -> None:
    """An `ask` interrupted by `interrupt`, or by another `ask`, replies with `interrupted: true` (on a daemon without
    a sound card it replied `text: ""` and nothing else, like an empty answer); the ask that ran to its end says
    `interrupted: false`."""
    cfg = tiny_config.replace({"llm.max_tokens": 400})  # long enough to be cut short

    async def body() -> dict[str, dict[str, Any]]:
        async with daemon(cfg) as (server, _):
            url = f"ws://127.0.0.1:{server.port}/v1/control"
            async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                assert (await recv(ws))["type"] == "hello"
                replies: dict[str, dict[str, Any]] = {}
                second = {"type": "ask", "id": "a3", "text": "Hi."}
                for first, then in (("a1", {"type": "interrupt", "id": "i"}), ("a2", second)):
                    await ws.send(json.dumps({"type": "ask", "id": first, "text": "Tell me a long story."}))
                    while (await recv(ws))["type"] != "ask.delta":
                        pass
                    await ws.send(json.dumps(then))
                    while len(replies) < (2 if first == "a1" else 4):
                        msg = await recv(ws)
                        if msg["type"] == "reply":
                            replies[msg["id"]] = msg["result"]
            return replies

    replies = asyncio.run(body())
    assert replies["a1"]["interrupted"] is True and replies["a2"]["interrupted"] is True
    assert replies["a3"]["interrupted"] is False and replies["a3"]["text"]


def test_an_ask_whose_llm_fails_gets_an_error_naming_why(tiny_config: Config) -> None:
    """An `ask` whose LLM server is down gets an `error` (code `failed`) with the LLM's one-line reason and fix (it
    got a success reply `{"text": "", "interrupted": true}`, the reason only in a pipeline event to subscribers);
    the next `ask`, the LLM still down, fails the same way (the daemon's spoken apology is no answer to it)."""
    from tests.llm.servers import free_port

    down = f"http://127.0.0.1:{free_port()}/v1"
    cfg = tiny_config.replace({"llm.backend": "openai", "llm.base_url": down, "llm.model": "any"})

    async def body() -> list[dict[str, Any]]:
        async with daemon(cfg) as (server, _):
            url = f"ws://127.0.0.1:{server.port}/v1/control"
            async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                assert (await recv(ws))["type"] == "hello"
                answers = []
                for i in (1, 2):
                    await ws.send(json.dumps({"type": "ask", "id": i, "text": "Hello?"}))
                    while (msg := await recv(ws))["type"] not in ("reply", "error"):
                        pass
                    answers.append(msg)
            return answers

    for answer in asyncio.run(body()):
        assert answer["type"] == "error" and answer["code"] == "failed", answer
        assert f"LLM server {down} is not reachable" in answer["message"]
        assert answer["message"].endswith("start it, or fix llm.base_url")


def config_file(cfg: Config, path: Path) -> Path:
    """A config.toml holding the keys of `cfg` that differ from the defaults."""
    ours, default = to_dict(cfg), to_dict(Config())
    lines = []
    for section, values in ours.items():
        changed = {k: v for k, v in values.items() if v != default[section][k]}
        if changed:
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in changed.items()]  # JSON scalars are TOML scalars here
    path.write_text("\n".join(lines) + "\n")
    return path


def test_assistant_run_without_a_sound_card_serves_realtime(tiny_config: Config, tmp_path: Path) -> None:
    """`assistant run` with no sound card starts headless: a Realtime client's text item gets a spoken reply,
    the native channel answers status, and SIGINT stops it with exit code 0."""
    path = config_file(tiny_config, tmp_path / "config.toml")
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "HOME": str(tmp_path / "home"),
        "PULSE_SERVER": "unix:" + str(tmp_path / "no-pulse"),  # no sound server: no devices
        "ASSISTANT_CONFIG": "",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }

    async def body() -> tuple[list[dict[str, Any]], int, list[str]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "assistant", "--config", str(path), "run", env=env, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stderr is not None
        log: list[str] = []
        try:
            async with asyncio.timeout(WAIT_S):
                while (m := re.search(r"control server on ws://127\.0\.0\.1:(\d+)", log[-1] if log else "")) is None:
                    line = await proc.stderr.readline()
                    assert line, f"the daemon exited: {log}"
                    log.append(line.decode())
            drain = asyncio.create_task(_collect(proc.stderr, log))
            headers = {"Authorization": f"Bearer {TOKEN}"}
            base = f"ws://127.0.0.1:{m.group(1)}"
            seen: list[dict[str, Any]] = []
            async with connect(f"{base}/v1/realtime", additional_headers=headers, max_size=None) as ws:
                await until(ws, "session.created", seen)
                item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}
                await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
                await ws.send(json.dumps({"type": "response.create"}))
                await until(ws, "response.done", seen)
            async with connect(f"{base}/v1/control", additional_headers=headers) as ws:
                assert (await recv(ws))["type"] == "hello"
                await ws.send(json.dumps({"type": "status", "id": 1}))
                status = await recv(ws)
                assert status["type"] == "reply" and status["result"]["state"] == "idle", status
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(WAIT_S):
                code = await proc.wait()
            await drain
            return seen, code, log
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    seen, code, log = asyncio.run(body())
    assert any("running headless" in line for line in log), log
    done = seen[-1]["response"]
    assert done["status"] == "completed", done
    assert sum(m["type"] == "response.output_audio.delta" for m in seen) >= 1
    assert code == 0, log[-5:]


async def _collect(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode())


async def sdk_until(conn: Any, last: str) -> list[Any]:
    """SDK events up to and including the first of type `last`."""
    out = []
    async with asyncio.timeout(WAIT_S):
        async for ev in conn:
            out.append(ev)
            if ev.type == last:
                return out
    raise AssertionError(f"connection ended before {last}")


@needs_espeak
def test_openai_sdk_manual_turn_response_cancel_and_truncate(tiny_config: Config) -> None:
    """The official openai SDK against the real engines: manual turn (append + commit) -> transcript; a response
    with audio; a second response cancelled after its first audio; the first answer truncated to what was heard."""
    try:
        import openai
    except ImportError:
        pytest.fail("the openai SDK is not installed: pip install -e '.[dev]'", pytrace=False)
    cfg = tiny_config

    async def body() -> tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]:
        async with daemon(cfg) as (server, _):
            sdk = openai.AsyncOpenAI(api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
            async with sdk.realtime.connect(model="assistant") as conn:
                await sdk_until(conn, "session.created")
                audio = {"input": {"format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": None}}
                await conn.session.update(session={"type": "realtime", "instructions": "Be brief.", "audio": audio})
                await sdk_until(conn, "session.updated")
                speech = speech_24k()
                for i in range(0, len(speech), RATE // 10):
                    chunk = base64.b64encode(speech[i : i + RATE // 10].astype("<i2").tobytes()).decode()
                    await conn.input_audio_buffer.append(audio=chunk)
                await conn.input_audio_buffer.commit()
                heard = await sdk_until(conn, "conversation.item.input_audio_transcription.completed")
                await conn.response.create()
                first = await sdk_until(conn, "response.done")
                await conn.conversation.item.create(
                    item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "More."}]}
                )
                await conn.response.create()
                await sdk_until(conn, "response.output_audio.delta")
                await conn.response.cancel()
                second = await sdk_until(conn, "response.done")
                item = first[-1].response.output[0].id
                deltas = [e.delta for e in first if e.type == "response.output_audio.delta"]
                sent = sum(len(base64.b64decode(d)) // 2 for d in deltas)
                half_ms = sent * 1000 // RATE // 2
                await conn.conversation.item.truncate(item_id=item, content_index=0, audio_end_ms=half_ms)
                truncated = await sdk_until(conn, "conversation.item.truncated")
                assert isinstance(server.backend, Sessions)
                (session,) = server.backend.open
                await asyncio.sleep(0.5)  # the rewrite is a compute job queued by the truncate
                c = session.conversation
                history = await c.compute.run(lambda: list(c.engines.chat.history))
            return heard, first, second, truncated, history

    heard, first, second, truncated, history = asyncio.run(body())
    said = first[-1].response.output[0].content[0].transcript.strip()
    print(f"history after truncate at {truncated[-1].audio_end_ms} ms: {history}; first answer {said!r}")
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[0].content == heard[-1].transcript.strip() and history[2].content == "More."
    assert said.startswith(history[1].content) and (history[1].interrupted or history[1].content == said)
    assert history[3].interrupted
    assert heard[-1].transcript.strip()
    assert first[-1].response.status == "completed"
    assert any(e.type == "response.output_audio.delta" for e in first)
    assert second[-1].response.status == "cancelled" and second[-1].response.output[0].status == "incomplete"
    assert truncated[-1].audio_end_ms > 0


def test_a_realtime_voice_that_does_not_fit_the_model_is_refused_at_once(tiny_config: Config) -> None:
    """`session.update` to a voice profile the loaded TTS cannot speak with (a clone voice on a CustomVoice model)
    is an error naming the voices that fit, and the session keeps its voice (it answered session.updated with
    the voice, then an error `loading voice 'clone'` came later and the session went on claiming it)."""

    async def body() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with daemon(tiny_config) as (server, _):
            url = f"ws://127.0.0.1:{server.port}/v1/realtime"
            async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                seen: list[dict[str, Any]] = []
                await until(ws, "session.created", seen)
                update = {"type": "session.update", "session": {"audio": {"output": {"voice": "clone"}}}}
                await ws.send(json.dumps(update))
                first = await recv(ws)
                await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "Be brief."}}))
                after = await until(ws, "session.updated", seen)
                return [first, *seen[1:-1]], after  # what came between the two updates

    got, after = asyncio.run(body())
    assert [m["type"] for m in got] == ["error"]
    assert got[0]["error"]["message"] == (
        "voice 'clone' (clone) does not fit the custom_voice model of tts.model; voices that do: vivian "
        "(or set tts.model to a base model)"  # default's speaker ryan is no speaker of the tiny model
    )
    assert after["session"]["audio"]["output"]["voice"] == "vivian"


def test_a_realtime_session_left_open_keeps_a_bounded_number_of_items(tiny_config: Config) -> None:
    """Many text turns through one headless session keep only the newest `realtime_items` items (the oldest are
    dropped, as OpenAI's truncation drops them; retrieving one names the bound) and the chat's history stays within
    llm.history_tokens: a connection left open for weeks does not grow without bound."""
    keep, turns = 6, 12
    cfg = tiny_config.replace({"llm.max_tokens": 8, "llm.history_tokens": 256})

    async def body() -> tuple[list[str], list[dict[str, Any]], int]:
        async with (
            daemon(cfg, Limits(realtime_items=keep)) as (server, _),
            connect(
                f"ws://127.0.0.1:{server.port}/v1/realtime", additional_headers={"Authorization": f"Bearer {TOKEN}"}
            ) as ws,
        ):
            seen: list[dict[str, Any]] = []
            await until(ws, "session.created", seen)
            await ws.send(json.dumps({"type": "session.update", "session": {"output_modalities": ["text"]}}))
            await until(ws, "session.updated", seen)
            ids: list[str] = []
            for i in range(turns):
                item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"Turn {i}."}]}
                await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
                ids.append((await until(ws, "conversation.item.added", seen))["item"]["id"])
                await ws.send(json.dumps({"type": "response.create"}))
                done = await until(ws, "response.done", seen)
                ids += [out["id"] for out in done["response"]["output"]]
            answers = []
            for item_id in ids[-keep - 2 :]:  # the newest kept and the two before them (events are rate-limited)
                await ws.send(json.dumps({"type": "conversation.item.retrieve", "item_id": item_id}))
                answers.append(await recv(ws))
            assert isinstance(server.backend, Sessions)
            (session,) = server.backend.open
            c = session.conversation
            history = await c.compute.run(lambda: len(c.engines.chat.history))
            return ids, answers, history

    ids, answers, history = asyncio.run(body())
    assert len(ids) == 2 * turns
    kept = [a["item"]["id"] for a in answers if a["type"] == "conversation.item.retrieved"]
    assert kept == ids[-keep:]
    gone = [a for a in answers if a["type"] == "error"]
    assert len(gone) == 2 and "newest items only" in gone[0]["error"]["message"]
    assert history < 2 * turns, f"the chat kept all {history} messages of {turns} turns"
