"""Realtime `semantic_vad` on the real Smart Turn v3.2 model, headless: the real server, session and VAD, tiny
engines for STT/LLM/TTS, espeak-ng speech appended over /v1/realtime.

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
from tests import tiny_engines
from tests.server.test_headless_e2e import TOKEN, daemon, recv
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
