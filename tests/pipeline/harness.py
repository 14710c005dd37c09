"""A pipeline wired to the scripted doubles, driven block by block from the test (tests only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from assistant.audio.format import AudioBlock
from assistant.config import Config
from assistant.conversation import Conversation
from assistant.daemon import DaemonControl
from tests.event_log import EventLog
from tests.pipeline.doubles import (
    FakeSink,
    RuleVad,
    ScriptedChat,
    WordTranscriber,
    WordTts,
    make_engines,
    noise_block,
    silence_block,
    word_block,
)

ANSWER = ["One", " two", " three", " four", " five", " six", " seven", " eight", " nine", " ten"]
WAIT_S = 20.0  # a safety net against hangs, never a timing assertion


class Harness:
    def __init__(
        self,
        changes: dict[str, Any] | None = None,
        chat: ScriptedChat | None = None,
        tts: WordTts | None = None,
        sink: FakeSink | None = None,
    ) -> None:
        # resume_ms 0: these timelines speak again within ms of a turn's end (test_turns_core covers the reopen)
        base = {"pipeline.mode": "hands_free", "vad.preroll_ms": 0, "endofturn.resume_ms": 0}
        self.cfg = Config().replace({**base, **(changes or {})})
        self.chat = chat or ScriptedChat(list(ANSWER))
        self.stt = WordTranscriber()
        self.tts = tts or WordTts()
        self.sink = sink or FakeSink()
        self.engines, self.vads = make_engines(self.chat, self.stt, self.tts)
        # the capture clock: blocks recorded 20 ms apart, from a moment before the test, delivered as fast as it feeds
        self.t = time.monotonic() - 30.0

    def feed(self, samples: np.ndarray) -> None:
        self.p.on_audio(AudioBlock(samples, self.t))
        self.t += len(samples) / 16_000

    @property
    def vad(self) -> RuleVad:
        return self.vads[-1]

    async def __aenter__(self) -> Harness:
        self.p = Conversation(self.cfg, self.engines, None, self.sink)
        self.control = DaemonControl(self.p)  # what the control channel calls
        self.events = EventLog(self.p, WAIT_S)
        self.sink.probe = lambda: self.vad.ended
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.p.aclose()

    def speak(self, *words: str, blocks: int = 4) -> None:
        for w in words:
            for _ in range(blocks):
                self.feed(word_block(w))

    def noise(self, blocks: int) -> None:
        for _ in range(blocks):
            self.feed(noise_block())

    def silence(self, blocks: int) -> None:
        for _ in range(blocks):
            self.feed(silence_block())

    async def next_event(self, kind: type, pred: Callable[[Any], bool] = lambda e: True) -> Any:
        """The next event of `kind` (matching `pred`), consuming the events before it."""
        return await self.events.until(kind, pred)

    @property
    def seen(self) -> list[Any]:
        return self.events.seen

    def of(self, kind: type) -> list[Any]:
        return self.events.since(0, kind)


async def eventually(cond: Callable[[], bool]) -> None:
    """Wait until `cond()` holds (for state kept by the doubles on the compute thread)."""
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.005)
