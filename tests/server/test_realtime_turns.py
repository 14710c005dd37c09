"""Realtime turn detection, headless: `semantic_vad` on the real Smart Turn v3.2 model, and the idle timeout.
Both run the real server, session and VAD, tiny engines for STT/LLM/TTS, audio appended over /v1/realtime.

The same spoken audio, a question with a 1.5 s "um" pause in the middle, is one user turn under semantic_vad
(the model hears the hesitation and waits) and two under server_vad with 500 ms of silence.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from assistant.audio.format import CAPTURE_RATE, float32_to_int16, int16_to_float32, resample
from assistant.config import Config
from assistant.endofturn import EAGERNESS, SmartTurnPolicy, eagerness_policy
from assistant.errors import InputError
from assistant.events import LatencyTrace
from assistant.server.realtime import idle_note
from assistant.sessions import Sessions
from tests import tiny_engines
from tests.server.test_headless_e2e import TOKEN, daemon, recv, sdk_until, speech_24k
from tests.speech import needs_espeak, say, silence
from tests.turn_clips import smart_turn_file

RATE = 24_000
CHUNK_MS = 100
PAUSE_S = 1.5  # longer than server_vad's 500 ms, shorter than every eagerness's longest wait except none


@pytest.fixture(scope="module")
def smart_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    changes = {
        "pipeline.mode": "hands_free",
        "server.port": 0,
        "server.token": TOKEN,
        "endofturn.detector": "smart_turn",
        "endofturn.model": str(smart_turn_file().parent),
    }
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("semantic_models"), changes)


def hesitant_question() -> np.ndarray:
    """ "Can you tell me, um," a 1.5 s pause, "the weather for tomorrow?", then 2.5 s of silence: int16 24 kHz."""
    x = np.concatenate(
        [silence(0.3), say("Can you tell me, um,"), silence(PAUSE_S), say("the weather for tomorrow?"), silence(2.5)]
    )
    return float32_to_int16(resample(int16_to_float32(x), CAPTURE_RATE, RATE))


async def user_turns(cfg: Config, detection: dict[str, Any]) -> list[dict[str, Any]]:
    """Append the hesitant question under `detection` (no auto response); every event up to the last
    transcription of the committed turns."""
    async with daemon(cfg) as (server, _pipeline):
        url = f"ws://127.0.0.1:{server.port}/v1/realtime"
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, max_size=None) as ws:
            assert (await recv(ws))["type"] == "session.created"
            update = {"type": "session.update", "session": {"audio": {"input": {"turn_detection": detection}}}}
            await ws.send(json.dumps(update))
            got = await recv(ws)
            assert got["type"] == "session.updated", got
            audio = hesitant_question()
            step = RATE * CHUNK_MS // 1000
            for i in range(0, len(audio), step):
                chunk = base64.b64encode(audio[i : i + step].astype("<i2").tobytes()).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            # the 2.5 s tail ends every turn; a marker item then says all of the audio has been handled
            seen: list[dict[str, Any]] = []
            while True:
                msg = await recv(ws)
                seen.append(msg)
                committed = sum(m["type"] == "input_audio_buffer.committed" for m in seen)
                done = sum(m["type"] == "conversation.item.input_audio_transcription.completed" for m in seen)
                if committed and done == committed and seen[-1]["type"].endswith("transcription.completed"):
                    # a second turn would have been committed before the first's transcript was final
                    stopped = [m for m in seen if m["type"] == "input_audio_buffer.speech_stopped"]
                    if stopped and stopped[-1]["audio_end_ms"] > (len(audio) / RATE - 2.5) * 1000 - 500:
                        return seen


@needs_espeak
def test_semantic_vad_waits_through_a_hesitation_that_server_vad_cuts(smart_config: Config) -> None:
    """semantic_vad (Smart Turn at eagerness auto) keeps "Can you tell me, um, ... the weather" one user turn
    and ends it on the model's word before its 4 s longest wait; server_vad (500 ms) commits two turns."""
    semantic = asyncio.run(user_turns(smart_config, {"type": "semantic_vad", "create_response": False}))
    kinds = [m["type"] for m in semantic]
    assert kinds.count("input_audio_buffer.speech_started") == 1, kinds
    assert kinds.count("input_audio_buffer.speech_stopped") == 1, kinds
    assert kinds.count("input_audio_buffer.committed") == 1, kinds
    stopped = next(m for m in semantic if m["type"] == "input_audio_buffer.speech_stopped")
    total_ms = len(hesitant_question()) * 1000 // RATE
    # the turn ended within the 2.5 s tail, shorter than auto's 4 s longest wait: the model's score ended it
    assert total_ms - 2500 - 500 < stopped["audio_end_ms"] < total_ms - 2500 + 200, (stopped, total_ms)

    detection = {"type": "server_vad", "silence_duration_ms": 500, "create_response": False}
    server = asyncio.run(user_turns(smart_config, detection))
    assert [m["type"] for m in server].count("input_audio_buffer.committed") == 2, [m["type"] for m in server]


def test_semantic_vad_without_the_model_is_an_error_naming_the_fix(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A daemon without the Smart Turn model answers semantic_vad with an error event that names
    turn_detection.type and `assistant pull`, and keeps its server_vad detection."""
    changes = {"server.port": 0, "server.token": TOKEN}
    cfg = tiny_engines.tiny_config(tmp_path_factory.mktemp("plain_models"), changes)

    async def body() -> tuple[dict[str, Any], dict[str, Any]]:
        async with daemon(cfg) as (server, _pipeline):
            url = f"ws://127.0.0.1:{server.port}/v1/realtime"
            async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                assert (await recv(ws))["type"] == "session.created"
                detection = {"type": "semantic_vad", "eagerness": "high"}
                update = {"type": "session.update", "session": {"audio": {"input": {"turn_detection": detection}}}}
                await ws.send(json.dumps({**update, "event_id": "ev_1"}))
                error = await recv(ws)
                await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "Be brief."}}))
                return error, await recv(ws)

    error, updated = asyncio.run(body())
    assert error["type"] == "error" and error["error"]["event_id"] == "ev_1", error
    assert "turn_detection.type" in error["error"]["message"] and "assistant pull" in error["error"]["message"]
    assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"


def test_eagerness_maps_to_threshold_and_longest_wait() -> None:
    """low waits longest for the surest score, high ends soonest on a weaker one, auto is medium (OpenAI's rule)."""
    low, medium, high = (eagerness_policy(e) for e in ("low", "medium", "high"))
    assert (low.max_wait_ms, medium.max_wait_ms, high.max_wait_ms) == (8000, 4000, 2000)
    assert low.threshold > medium.threshold > high.threshold
    assert eagerness_policy("auto") == medium
    base = SmartTurnPolicy(score_after_ms=240)
    assert eagerness_policy("high", base).score_after_ms == 240  # the daemon's scoring point is kept
    assert set(EAGERNESS) == {"low", "medium", "high", "auto"}
    with pytest.raises(InputError, match="eagerness 'eager'"):
        eagerness_policy("eager")


@needs_espeak
def test_idle_timeout_prompts_a_response_through_the_openai_sdk(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With server_vad idle_timeout_ms 5000, silence streamed after a reply's audio has played brings, through
    the official GA SDK, timeout_triggered, the quiet audio committed as the same item, and a new response whose
    conversation was told how long the user was silent."""
    import openai

    changes = {"server.port": 0, "server.token": TOKEN}
    cfg = tiny_engines.tiny_config(tmp_path_factory.mktemp("idle_models"), changes)

    async def body() -> tuple[list[Any], list[Any], float, list[Any], list[int]]:
        async with daemon(cfg) as (server, _pipeline):
            sdk = openai.AsyncOpenAI(api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
            async with sdk.realtime.connect(model="assistant") as conn:
                await sdk_until(conn, "session.created")
                detection = {"type": "server_vad", "silence_duration_ms": 500, "idle_timeout_ms": 5000}
                await conn.session.update(
                    session={"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
                )
                await sdk_until(conn, "session.updated")
                item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello."}]}
                await conn.conversation.item.create(item=item)
                await conn.response.create()
                first = await sdk_until(conn, "response.done")
                done_at = asyncio.get_running_loop().time()
                quiet = base64.b64encode(np.zeros(RATE // 10, "<i2").tobytes()).decode()

                async def stream_silence() -> None:  # a client's microphone in a quiet room, at its own pace
                    while True:
                        await conn.input_audio_buffer.append(audio=quiet)
                        await asyncio.sleep(0.1)

                mic = asyncio.create_task(stream_silence())
                try:
                    idle = await sdk_until(conn, "response.done")
                finally:
                    mic.cancel()
                waited = asyncio.get_running_loop().time() - done_at
                assert isinstance(server.backend, Sessions)
                (session,) = server.backend.open
                chat, compute = session.conversation.engines.chat, session.conversation.compute
                history = await compute.run(lambda: list(chat.history))
                # the tokenizer's own count of each response's prompt: the first user message, then three messages
                prompts = await compute.run(
                    lambda: [len(chat.render(history[:1], True)), len(chat.render(history[:3], True))]
                )
            reply_s = sum(len(base64.b64decode(e.delta)) // 2 for e in first if e.type == "response.output_audio.delta")
            return first, idle, waited - reply_s / RATE, history, prompts

    first, idle, quiet_s, history, prompts = asyncio.run(body())
    kinds = [e.type for e in idle]
    print(f"idle timeout after {quiet_s:.2f} s of quiet past the reply's audio: {kinds}")
    fired = next(e for e in idle if e.type == "input_audio_buffer.timeout_triggered")
    committed = next(e for e in idle if e.type == "input_audio_buffer.committed")
    assert kinds.index(fired.type) < kinds.index(committed.type) < kinds.index("response.created")
    assert committed.item_id == fired.item_id
    assert 0 < fired.audio_end_ms - fired.audio_start_ms <= 5000
    assert quiet_s >= 5.0  # never before the reply's audio has played plus the timeout
    assert idle[-1].response.status == "completed" and idle[-1].response.output
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[2].content == idle_note(5000)
    # usage: text in as the tokenizer counts it; the second prompt came partly from the prompt cache
    usages = [first[-1].response.usage, idle[-1].response.usage]
    print(f"usage: {[u.model_dump(exclude_none=True) for u in usages]}; prompts {prompts}")
    assert [u.input_token_details.text_tokens for u in usages] == prompts
    cached = usages[1].input_token_details.cached_tokens
    assert cached is not None and 0 < cached < prompts[1]
    assert usages[1].input_token_details.cached_tokens_details.text_tokens == cached
    for u in usages:
        details = u.input_token_details
        assert u.input_tokens == details.text_tokens + details.audio_tokens
        assert u.output_token_details.text_tokens > 0


@needs_espeak
def test_realtime_turns_have_every_headless_latency_field(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A Realtime session's latency trace, for a server_vad voice turn, times every stage after the true end of
    speech in order (end of turn, STT final, first token, first text to TTS, first audio, first audio sent), with
    the answer's token counts; a text item's trace has no STT stage and never a stale one."""
    changes = {"server.port": 0, "server.token": TOKEN}
    cfg = tiny_engines.tiny_config(tmp_path_factory.mktemp("trace_models"), changes)

    async def body() -> list[LatencyTrace]:
        async with daemon(cfg) as (server, _pipeline):
            url = f"ws://127.0.0.1:{server.port}/v1/realtime"
            async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, max_size=None) as ws:
                assert (await recv(ws))["type"] == "session.created"
                assert isinstance(server.backend, Sessions)
                (session,) = server.backend.open
                sub = session.conversation.subscribe()
                audio = speech_24k()
                step = RATE * CHUNK_MS // 1000
                for i in range(0, len(audio), step):
                    chunk = base64.b64encode(audio[i : i + step].astype("<i2").tobytes()).decode()
                    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                while (await recv(ws))["type"] != "response.done":
                    pass
                content = [{"type": "input_text", "text": "Hi."}]
                item = {"type": "message", "role": "user", "content": content}
                await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
                await ws.send(json.dumps({"type": "response.create"}))
                while (await recv(ws))["type"] != "response.done":
                    pass
                traces = []
                async for ev in sub:  # the traces were published before each response.done
                    if isinstance(ev, LatencyTrace):
                        traces.append(ev)
                    if len(traces) == 2:
                        return traces
        raise AssertionError("the session ended before its traces")

    voice, text = asyncio.run(body())
    print(f"voice turn: {voice}\ntext turn: {text}")
    stages = [
        voice.vad_hangover_ms,
        voice.stt_final_ms,
        voice.llm_first_token_ms,
        voice.tts_first_text_ms,
        voice.tts_first_audio_ms,
        voice.first_sample_played_ms,
    ]
    assert None not in stages, voice
    assert stages == sorted(stages) and stages[0] >= 0, voice
    assert text.stt_final_ms is None and text.vad_hangover_ms == 0.0
    later = [text.llm_first_token_ms, text.tts_first_text_ms, text.tts_first_audio_ms, text.first_sample_played_ms]
    assert None not in later and later == sorted(later) and later[0] > 0, text
    for trace in (voice, text):
        assert trace.extra["prompt_tokens"] > trace.extra["cached_tokens"] >= 0 and trace.extra["output_tokens"] > 0
