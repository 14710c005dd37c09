"""A reminder set by a spoken request is spoken in the virtual room while the daemon is idle, and one that fell
due while the daemon was down is spoken after the restart: real tiny STT and TTS, a scripted LLM that calls
set_reminder, the real toolbox, scheduler and memory database."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant import cli
from assistant.compute import Compute
from assistant.config import Config
from assistant.conversation import Conversation
from assistant.daemon import ReopeningSource
from assistant.events import FinalTranscript, ResponseDone
from assistant.memory import Memory
from assistant.tools.setup import build_toolbox
from assistant.tools.timers import speak_reminders
from tests import tiny_engines
from tests.event_log import EventLog
from tests.pipeline.doubles import ToolChat
from tests.pipeline.test_e2e_room import LOUD, RATE, WAIT_S, until

pytestmark = pytest.mark.audio

SET = '<tool_call>{"name": "set_reminder", "arguments": {"in_seconds": %s, "text": "stretch"}}</tool_call>'


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    # replies of ~1 s (12 frames of 80 ms): the answer to the request ends, and the daemon idles, before the 2 s
    # reminder falls due
    changes = {
        "pipeline.mode": "hands_free",
        "server.enabled": False,
        "tools.enabled": ["reminders"],
        "tts.max_frames": 12,
    }
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("reminder_models"), changes)


async def reminder_due(memory: Memory, wall0: float) -> float:
    pending = memory.pending_reminders()
    assert len(pending) == 1
    return pending[0].due - wall0


def test_reminders_fire_while_idle_and_after_a_restart(room_env: Any, tiny_config: Config, tmp_path: Path) -> None:
    """The spoken request sets a 2 s reminder (the reply ends, the daemon idles), then the reminder is heard;
    a 1 s reminder set just before a shutdown fires at the next start."""
    from assistant.audio.capture import Capture
    from assistant.audio.playback import Playback
    from tests.speech import require_espeak, say, silence

    require_espeak()
    cfg = tiny_config
    db = tmp_path / "memory.sqlite3"

    async def daemon(chat: ToolChat, spoken: bool) -> tuple[np.ndarray, float]:
        """One daemon run until the due reminder was spoken: the recording, and the reminder's offset in it (s)."""
        compute = Compute()
        engines = await compute.run(cli.build_engines, cfg)
        engines = dataclasses.replace(engines, chat=chat)
        memory = Memory(db)
        toolbox, scheduler = build_toolbox(cfg, memory)
        source = ReopeningSource(lambda: Capture(cfg.audio))
        due = 0.0
        try:
            with Playback(cfg.audio, rate=engines.tts.sample_rate) as sink:
                pipeline = Conversation(cfg, engines, source, sink, compute, toolbox=toolbox, memory=memory)
                events = EventLog(pipeline, WAIT_S)
                recorder = room_env.record()
                recorder.wait_started()
                wall0 = time.time()
                if not spoken:
                    due = await reminder_due(memory, wall0)  # read before the scheduler starts and speaks it
                await pipeline.prepare()
                runner = asyncio.create_task(pipeline.run())
                speaking = asyncio.create_task(speak_reminders(scheduler, pipeline))
                if spoken:
                    await until(lambda: pipeline.core.ring.end > 0)
                    room_env.play(np.concatenate([silence(0.3), say("Remind me to stretch.")]).astype(np.int16))
                    await events.until(FinalTranscript, lambda e: bool(e.text))
                    await events.until(ResponseDone)  # the answer to the request
                due = await reminder_due(memory, wall0)
                await until(lambda: not memory.pending_reminders())  # spoken, then marked fired
                await asyncio.sleep(0.3)
                runner.cancel()
                speaking.cancel()
                await pipeline.aclose()
            heard = recorder.stop()
        finally:
            await source.aclose()
            memory.close()
            compute.close(5.0)
        return heard, due

    async def main() -> None:
        chat = ToolChat([[SET % 2], ["Okay."]])
        heard, due = await daemon(chat, spoken=True)
        ((call, result),) = chat.results[0]
        assert call.name == "set_reminder" and "error" not in result
        loud = np.flatnonzero(np.abs(heard.astype(np.int32)) > LOUD)
        assert len(loud) and loud[-1] / RATE > due, "nothing was spoken after the reminder fell due"

        memory = Memory(db)  # a reminder due while the daemon is down
        memory.add_reminder(time.time() + 0.5, "drink water", time.time())
        memory.close()
        await asyncio.sleep(1.0)
        heard, due = await daemon(ToolChat([]), spoken=False)
        assert due < 0 and len(np.flatnonzero(np.abs(heard.astype(np.int32)) > LOUD)), "it was not spoken"

    asyncio.run(main())
