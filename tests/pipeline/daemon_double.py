"""The daemon's lifetime over scripted doubles, as a process that tests signal (tests only).

`python -m tests.pipeline.daemon_double [--stuck] [--hung-devices] [--wedged-service]` prints `ready` once
listening.
- --stuck: a reply is in flight whose LLM step never returns (a wedged engine), so shutdown must not wait for the
  compute thread.
- --hung-devices: the real Capture (through ReopeningSource) and Playback over stream doubles; once listening,
  both streams die and every PortAudio call from then on hangs forever (a sound server that went away).
- --wedged-service: a service whose close blocks the event loop thread for good (a bug), so only the shutdown
  deadline can end the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from assistant import logs
from assistant.config import Config
from assistant.conversation import Conversation
from assistant.daemon import DaemonControl, ReopeningSource, Service, serve
from tests.pipeline.doubles import BLOCK, FakeSink, ScriptedChat, make_engines


class PacedSilence:
    """A microphone double: a silent 20 ms block every 20 ms."""

    async def read(self) -> np.ndarray:
        await asyncio.sleep(BLOCK / 16_000)
        return np.zeros(BLOCK, dtype=np.int16)


@contextlib.asynccontextmanager
async def wedged_service(control: DaemonControl) -> AsyncIterator[None]:
    yield
    time.sleep(3600)  # noqa: ASYNC251 (the bug under test: it blocks the loop thread for good)


async def main(stuck: bool, hung_devices: bool, wedged: bool) -> int:
    gate = threading.Semaphore(0) if stuck else None
    engines, _ = make_engines(ScriptedChat(["Hi", " there"], gate=gate))
    cfg = Config().replace(
        {"pipeline.mode": "hands_free", "audio.device_retry_s": 0.5, "endofturn.detector": "silence"}
    )
    services: list[Service] = [wedged_service] if wedged else []
    if not hung_devices:
        pipeline = Conversation(cfg, engines, PacedSilence(), FakeSink())
        return await serve(pipeline, services, ready=lambda: print("ready", flush=True))

    from assistant.audio.capture import Capture
    from assistant.audio.playback import Playback
    from tests import audio_doubles

    sd = audio_doubles.FakeSounddevice()
    audio_doubles.install(None, sd)
    source = ReopeningSource(lambda: Capture(cfg.audio))
    async with Playback(cfg.audio, rate=engines.tts.sample_rate) as sink:
        pipeline = Conversation(cfg, engines, source, sink)
        sink.report = pipeline.device_status

        def ready() -> None:
            async def unplug() -> None:
                for _ in range(1000):  # until the microphone runs
                    if pipeline.core.ring.end:
                        break
                    await asyncio.sleep(0.01)
                sd.hang = {"open", "start", "stop", "abort", "close"}
                for stream in list(sd.streams):
                    stream.die()
                await asyncio.sleep(0.3)  # the supervisor and the source are now inside hung calls
                print("ready", flush=True)

            keep.append(asyncio.get_running_loop().create_task(unplug()))

        keep: list[Any] = []
        return await serve(pipeline, services, ready=ready)


if __name__ == "__main__":
    logs.setup("info")
    sys.exit(asyncio.run(main("--stuck" in sys.argv, "--hung-devices" in sys.argv, "--wedged-service" in sys.argv)))
