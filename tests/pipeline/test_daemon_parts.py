"""Device loss and retry, the reopening microphone source, and the live status line."""

from __future__ import annotations

import asyncio
import io
import signal

import numpy as np

from assistant.console import Console, StatusLine
from assistant.daemon import ReopeningSource, serve
from assistant.errors import AudioDeviceError
from assistant.events import DeviceStatus, FinalTranscript, LatencyTrace
from tests.pipeline.doubles import BLOCK, word_block
from tests.pipeline.harness import Harness


class FlakyCapture:
    """A capture double: the n-th opened device fails on its `fail_after`-th read."""

    opened = 0

    def __init__(self, fail_after: int | None) -> None:
        self.fail_after = fail_after
        self.reads = 0
        self.closed = False

    async def __aenter__(self) -> FlakyCapture:
        FlakyCapture.opened += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True

    async def read(self) -> np.ndarray:
        self.reads += 1
        if self.fail_after is not None and self.reads >= self.fail_after:
            raise AudioDeviceError("microphone unplugged")
        await asyncio.sleep(0)
        return np.zeros(BLOCK, dtype=np.int16)


def test_lost_microphone_is_reopened_and_reported() -> None:
    """A capture failure publishes DeviceStatus(ok=False); the next read reopens it and reports it back."""

    async def main() -> None:
        made: list[FlakyCapture] = []

        def open_capture() -> FlakyCapture:
            made.append(FlakyCapture(fail_after=3 if not made else None))
            return made[-1]

        async with Harness({"audio.device_retry_s": 0.5}) as h:
            h.p.source = ReopeningSource(open_capture)
            runner = asyncio.create_task(h.p.run())
            lost = await h.next_event(DeviceStatus)
            back = await h.next_event(DeviceStatus)
            runner.cancel()
            assert (lost.ok, back.ok) == (False, True) and "unplugged" in lost.message
            assert len(made) == 2 and made[0].closed and not made[1].closed
            assert h.p.status()["device_ok"]

    asyncio.run(main())


def test_status_line_renders_state_and_latency() -> None:
    """The status line rewrites one terminal line with the state and the last latencies; what was heard is
    printed above it as a "you:" line."""

    async def main() -> None:
        out = io.StringIO()
        async with Harness() as h:
            line = StatusLine(h.p, Console(out, columns=200))
            task = asyncio.create_task(line.run())
            await asyncio.sleep(0)
            for _ in range(4):
                h.p.on_audio(word_block("hello"))
            h.silence(6)
            await h.next_event(FinalTranscript)
            await h.next_event(LatencyTrace)
            await asyncio.sleep(0.01)
            task.cancel()
        text = out.getvalue()
        assert "\r\x1b[Kyou: hello\n" in text and "\r\x1b[K  turn 1: stt " in text
        last = text.split("\r\x1b[K")[-2]  # the status before the task's cancellation erased it
        assert last.startswith("● ") and "last: stt " in last

    asyncio.run(main())


def test_serve_warms_the_engines_before_it_reports_listening() -> None:
    """serve() has every engine's warmup() run on the compute thread before ready() (before "listening")."""

    async def main() -> None:
        async with Harness() as h:
            seen: list[tuple[bool, bool]] = []

            def ready() -> None:
                seen.append((h.stt.warmed, h.tts.warmed))
                signal.raise_signal(signal.SIGINT)

            assert await serve(h.p, ready=ready) == 0
            assert seen == [(True, True)]

    asyncio.run(main())
