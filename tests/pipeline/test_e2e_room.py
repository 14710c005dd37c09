"""End to end in the virtual room: the real daemon pipeline with tiny random-weight models of every engine.

espeak-ng speech is played into the virtual microphone, the reply is recorded from the virtual speaker, and a
second utterance spoken during the reply interrupts it. Skipped until every engine, the audio room and the tiny
model builders are in the tree (they come from the other branches), or without PulseAudio/espeak-ng.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant import cli
from assistant.compute import Compute
from assistant.config import Config
from assistant.conversation import Conversation
from assistant.daemon import ReopeningSource
from assistant.events import (
    BargeIn,
    FinalTranscript,
    LatencyTrace,
    ResponseDone,
    ResponseTextDelta,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
    TurnState,
)
from tests import tiny_engines
from tests.event_log import EventLog

pytestmark = pytest.mark.audio

RATE = 24_000
LOUD = 2000  # |int16| above this in the recording is reply audio (the room is digitally silent otherwise)
WAIT_S = 120.0  # safety net for a busy shared CPU; never a timing assertion
SHOUT_GAIN = 16.0  # the user must be louder than the playback level (see the test docstring)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Tiny seeded checkpoints of every engine in the real on-disk layouts, and a config naming them."""
    # No acoustic path from this room's speaker to its microphone: the headphone case, so no echo canceller (with
    # no echo to learn, AEC3 turns a user over the reply down by ~40 dB; test_echo_turns_room.py has the loop).
    changes = {
        "pipeline.mode": "hands_free",
        "vad.barge_in_energy_margin_db": 0.0,
        "server.enabled": False,
        "echo.enabled": False,
        "pipeline.backchannels": [],  # the VAD's start interrupts (the tiny STT writes random words anyway)
    }
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("e2e_models"), changes)


async def until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def test_spoken_turn_and_barge_in(room_env: Any, tiny_config: Config, tmp_path: Path) -> None:
    """A spoken question gets a spoken reply after the user stopped; a second utterance during the reply flushes
    playback within 150 ms of the barge-in decision and the history keeps only the heard part, interrupted.

    The virtual microphone does not hear the virtual speaker, but the VAD still demands that speech during the
    reply be as loud as the reply (margin 0 dB here); random-weight TTS audio is near full scale, so the
    interruption is spoken loudly (gain 16, clipped): a user shouting over the assistant.
    """
    from assistant.audio.capture import Capture
    from assistant.audio.playback import Playback
    from tests.speech import require_espeak, say, silence

    require_espeak()
    cfg = tiny_config

    async def main() -> tuple[EventLog, np.ndarray, float, list[Any], Conversation]:
        compute = Compute()
        engines = await compute.run(cli.build_engines, cfg)
        source = ReopeningSource(lambda: Capture(cfg.audio))
        try:
            with Playback(cfg.audio, rate=engines.tts.sample_rate) as sink:
                pipeline = Conversation(cfg, engines, source, sink, compute)
                events = EventLog(pipeline, WAIT_S)
                recorder = room_env.record()
                recorder.wait_started()
                rec_t0 = time.monotonic()
                runner = asyncio.create_task(pipeline.run())
                await until(lambda: pipeline.core.ring.end > 0)
                room_env.play(np.concatenate([silence(0.3), say("What time is it now?")]).astype(np.int16))
                await events.until(SpeechEnded)
                await events.until(FinalTranscript)
                speaking = TurnState.ASSISTANT_SPEAKING
                await until(lambda: pipeline.core.state is speaking and sink.played_samples >= RATE // 2)
                shout = np.clip(say("Stop, wait a moment please.").astype(np.float32) * SHOUT_GAIN, -32768, 32767)
                room_env.play(shout.astype(np.int16))
                await events.until(BargeIn)
                await events.until(ResponseDone, lambda e: e.interrupted)
                if not any(isinstance(e, LatencyTrace) for e in events.seen):  # it may come before the barge-in
                    await events.until(LatencyTrace)
                await asyncio.sleep(0.5)  # the recording shows what followed the flush
                history = await compute.run(lambda: list(engines.chat.history))
                runner.cancel()
                await pipeline.aclose()
            heard = recorder.stop()
        finally:
            await source.aclose()
            compute.close(5.0)
        return events, heard, rec_t0, history, pipeline

    events, heard, rec_t0, history, _ = asyncio.run(main())
    seen = events.seen

    # the event sequence of a full turn, then the interruption
    order = [
        events.index(SpeechStarted),
        events.index(SpeechEnded),
        events.index(FinalTranscript),
        events.index(ResponseTextDelta),
        events.index(BargeIn),
        events.index(ResponseDone),
    ]
    assert order == sorted(order), [type(e).__name__ for e in seen]
    states = [e.new for e in seen if isinstance(e, StateChanged)]
    assert states[:4] == [
        TurnState.USER_SPEAKING,
        TurnState.THINKING,
        TurnState.ASSISTANT_SPEAKING,
        TurnState.USER_SPEAKING,
    ]

    # audio came out of the speaker only after the user stopped (nothing speculative was played)
    ended = seen[events.index(SpeechEnded)]
    loud = np.flatnonzero(np.abs(heard.astype(np.int32)) > LOUD)
    assert len(loud), "no reply audio was recorded"
    first_audio = rec_t0 + loud[0] / RATE
    assert first_audio > ended.time - 0.05, first_audio - ended.time
    trace = next(e for e in seen if isinstance(e, LatencyTrace))
    assert trace.first_sample_played_ms is not None and trace.first_sample_played_ms > trace.vad_hangover_ms

    # the interruption flushed playback within 150 ms of the decision
    barge = seen[events.index(BargeIn)]
    after = loud[rec_t0 + loud / RATE > barge.time]
    last_audio = rec_t0 + (after[-1] / RATE if len(after) else 0.0)
    print(
        f"first audio {1000 * (first_audio - ended.time):.0f} ms after SpeechEnded; last audio "
        f"{1000 * (last_audio - barge.time):.0f} ms after the barge-in; heard={barge.heard!r}; trace={trace}"
    )
    assert len(after) == 0 or last_audio - barge.time < 0.15

    # the history holds only the heard part, marked interrupted
    done = seen[events.index(ResponseDone)]
    final = seen[events.index(FinalTranscript)]
    assert done.interrupted and done.text == barge.heard
    answer = "".join(e.text for e in seen if isinstance(e, ResponseTextDelta) and e.turn == done.turn)
    assert barge.played_ms > 0 and barge.heard and answer.strip().startswith(barge.heard)
    # (the barge-in's own words may already be the next user turn by the time the history is read)
    at = next(i for i, m in enumerate(history) if m.role == "user" and m.content == final.text)
    assert history[at + 1].role == "assistant" and history[at + 1].content == barge.heard
    # the Chat marks it interrupted unless every generated word was heard (the random talker can outlast its text)
    assert history[at + 1].interrupted or barge.heard == answer.strip()
