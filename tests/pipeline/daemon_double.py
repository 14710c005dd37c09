"""The daemon's lifetime over scripted doubles, as a process that tests signal (tests only).

`python -m tests.pipeline.daemon_double [--stuck]` prints `ready` once listening; with --stuck a reply is in
flight whose LLM step never returns (a wedged engine), so shutdown must not wait for the compute thread.
"""

from __future__ import annotations

import asyncio
import sys
import threading

import numpy as np

from assistant import logs
from assistant.config import Config
from assistant.conversation import Conversation
from assistant.daemon import serve
from tests.pipeline.doubles import BLOCK, FakeSink, ScriptedChat, make_engines


class PacedSilence:
    """A microphone double: a silent 20 ms block every 20 ms."""

    async def read(self) -> np.ndarray:
        await asyncio.sleep(BLOCK / 16_000)
        return np.zeros(BLOCK, dtype=np.int16)


async def main(stuck: bool) -> int:
    gate = threading.Semaphore(0) if stuck else None
    engines, _ = make_engines(ScriptedChat(["Hi", " there"], gate=gate))
    cfg = Config().replace({"pipeline.mode": "hands_free"})
    pipeline = Conversation(cfg, engines, PacedSilence(), FakeSink())

    def ready() -> None:
        if stuck:
            asyncio.get_running_loop().create_task(pipeline.ask("hello"))
        print("ready", flush=True)

    return await serve(pipeline, ready=ready)


if __name__ == "__main__":
    logs.setup("info")
    sys.exit(asyncio.run(main("--stuck" in sys.argv)))
