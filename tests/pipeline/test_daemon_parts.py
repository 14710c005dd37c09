"""Device loss and retry, the reopening microphone source, and the live status line."""

from __future__ import annotations

import asyncio
import io
import signal
import time

import numpy as np

from assistant.console import Console, StatusLine
from assistant.daemon import ReopeningSource, serve
from assistant.errors import AudioDeviceError
from assistant.events import DeviceStatus, FinalTranscript, LatencyTrace, ResponseDone, TurnState
from tests.pipeline.doubles import BLOCK, FRAME, FakeSink, Message, word_block
from tests.pipeline.harness import ANSWER, Harness, eventually

FULL = "".join(ANSWER)


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
            assert h.control.status()["device_ok"]

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
    """serve() has every engine's warmup() (STT, LLM, TTS) run on the compute thread before ready() (before
    "listening")."""

    async def main() -> None:
        async with Harness() as h:
            seen: list[tuple[bool, bool]] = []

            def ready() -> None:
                seen.append((h.stt.warmed, h.chat.warmed, h.tts.warmed))
                signal.raise_signal(signal.SIGINT)

            assert await serve(h.p, ready=ready) == 0
            assert seen == [(True, True, True)]


def test_lost_speaker_ends_the_reply_as_heard_and_answers_in_text() -> None:
    """DeviceStatus(output, ok=False) mid-reply ends the reply, interrupted, with the heard part in the history;
    the next turn is answered in text only (nothing written to the sink, a device event saying so); once the
    speaker is back replies play again."""

    async def main() -> None:
        async with Harness(sink=FakeSink(auto=False)) as h:
            h.speak("hello")
            h.silence(6)
            await eventually(lambda: h.sink.total >= 5 * FRAME)
            h.sink.played = 3 * FRAME + 17  # the listener was inside the 4th frame when the speaker went
            h.p.device_status(DeviceStatus("output", False, "speaker gone", time.monotonic()))
            done = await h.next_event(ResponseDone)
            assert done.interrupted and done.text == "One two three four"
            await eventually(lambda: len(h.chat.history) == 2)
            assert h.chat.history[1] == Message("assistant", "One two three four", interrupted=True)
            assert not h.control.status()["output_ok"] and h.p.core.state is TurnState.IDLE
            written = h.sink.written_all
            assert await h.p.ask("hello") == FULL
            assert h.sink.written_all == written
            note = await h.next_event(DeviceStatus, lambda e: "text only" in e.message)
            assert (note.kind, note.ok) == ("output", False)
            h.p.device_status(DeviceStatus("output", True, "speaker is back", time.monotonic()))
            h.sink.auto = True
            assert await h.p.ask("hello") == FULL
            assert h.sink.written_all > written and h.control.status()["output_ok"]

    asyncio.run(main())


class StutteringSink(FakeSink):
    """A sink double whose buffer runs dry once, at the reply's third chunk."""

    underruns = 0

    def write(self, chunk: np.ndarray) -> None:
        super().write(chunk)
        if self.total == 3 * len(chunk):
            self.underruns += 1


def test_latency_trace_counts_the_replys_underruns() -> None:
    """The turn's latency trace carries how many times playback ran dry during that reply."""

    async def main() -> None:
        async with Harness(sink=StutteringSink()) as h:
            h.sink.underruns = 5  # from earlier replies: not this one's
            assert await h.p.ask("hello") == FULL
            trace = await h.next_event(LatencyTrace)
            assert trace.extra["playback_underruns"] == 1

    asyncio.run(main())


class ScriptedCapture:
    """A capture double that delivers `blocks`, then fails (`fail`) or stays silent."""

    def __init__(self, blocks: list[np.ndarray], fail: bool) -> None:
        self.blocks, self.fail = list(blocks), fail

    async def __aenter__(self) -> ScriptedCapture:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def read(self) -> np.ndarray:
        await asyncio.sleep(0)
        if self.blocks:
            return self.blocks.pop(0)
        if self.fail:
            raise AudioDeviceError("microphone unplugged")
        return np.zeros(BLOCK, dtype=np.int16)


def test_speech_cut_by_a_lost_microphone_does_not_swallow_the_next_turn() -> None:
    """The microphone goes while the user speaks: that utterance is dropped, and once it is back the next one
    starts a turn of its own and is transcribed alone."""

    async def main() -> None:
        captures = [
            ScriptedCapture([word_block("hello")] * 4, fail=True),
            ScriptedCapture([word_block("what")] * 4, fail=False),  # the user asks again at once
        ]
        async with Harness({"audio.device_retry_s": 0.5}) as h:
            h.p.source = ReopeningSource(lambda: captures.pop(0))
            runner = asyncio.create_task(h.p.run())
            await h.next_event(DeviceStatus, lambda e: not e.ok)
            final = await h.next_event(FinalTranscript)
            runner.cancel()
            assert final.text == "what"

    asyncio.run(main())
