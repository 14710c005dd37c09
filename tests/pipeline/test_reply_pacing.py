"""The reply's audio plays without gaps when the TTS is faster than real time: the pump decides when the engine
decodes (assistant.reply.ChunkPacing) from the listener's buffer, driven here on a virtual clock (no timing)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from assistant import reply as reply_module
from assistant.config import Config
from assistant.engines import Engines
from assistant.events import ResponseAudio
from assistant.reply import ChunkPacing, Reply, TurnTrace, pump
from assistant.tts.qwen3.engine import Utterance
from assistant.turns import Responder
from benchmarks.v2v import TimestampSink
from tests.pipeline.doubles import ScriptedChat

TOKENS = ["It", " will", " be", " sunny", " and", " mild", " tomorrow", " morning", "."]
H100 = {"llm": 0.018, "frame": 0.027, "decode": 0.014, "decode_frame": 0.006}  # the 23:09 UTC run's costs


class Clock:
    """Virtual monotonic seconds: the doubles' work moves it, nothing waits."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


class CostChat(ScriptedChat):
    """The scripted answer, each token costing `llm` seconds of the clock."""

    def __init__(self, clock: Clock, llm: float) -> None:
        super().__init__(list(TOKENS))
        self.clock, self.llm = clock, llm

    def respond(self, user_text: str) -> Iterator[str]:
        inner = super().respond(user_text)

        def timed() -> Iterator[str]:
            for tok in inner:
                self.clock.t += self.llm
                yield tok

        return timed()


class CostFrames:
    """The FrameGenerator's contract: one frame per pushed text piece (then two more after end_text), each costing
    `frame` seconds; it waits when no text is pending."""

    def __init__(self, clock: Clock, frame: float) -> None:
        self.clock, self.frame = clock, frame
        self.pending: deque[str] = deque()
        self.ended, self.done, self.waiting_for_text, self.tail = False, False, False, 2

    def push_text(self, piece: str) -> None:
        self.pending.append(piece)

    def end_text(self) -> None:
        self.ended = True

    def chars_at_frame(self, frame: int) -> int:
        return 0

    def step(self) -> np.ndarray | None:
        self.waiting_for_text = False
        if self.pending or (self.ended and self.tail):
            if self.pending:
                self.pending.popleft()
            else:
                self.tail -= 1
            self.clock.t += self.frame
            return np.zeros(16, np.int32)
        if self.ended:
            self.done = True
        else:
            self.waiting_for_text = True
        return None


class CostDecoder:
    """The codec decoder's contract: 1920 samples a frame, costing `decode + decode_frame x frames` seconds."""

    def __init__(self, clock: Clock, decode: float, decode_frame: float) -> None:
        self.clock, self.decode, self.decode_frame = clock, decode, decode_frame
        self.sizes: list[int] = []

    def new_state(self) -> None:
        return None

    def step(self, codes: np.ndarray, state: None) -> mx.array:
        self.sizes.append(len(codes))
        self.clock.t += self.decode + self.decode_frame * len(codes)
        return mx.full((len(codes) * 1920,), 0.1)


class CostTts:
    """The real engine's Utterance (its chunk schedule) over the costed frame generator and decoder."""

    sample_rate = 24000

    def __init__(self, clock: Clock, costs: dict[str, float], listens: bool = True) -> None:
        self.clock, self.costs, self.listens = clock, costs, listens
        self.decoder = CostDecoder(clock, costs["decode"], costs["decode_frame"])

    def start(self, voice: object, text: str | None = None) -> Utterance:
        utt = Utterance(CostFrames(self.clock, self.costs["frame"]), self.decoder, None, 1, 4)  # type: ignore[arg-type]
        if not self.listens:  # the fixed 1, 1, 2, 4 schedule whatever the pump asks
            step = utt.step
            utt.step = lambda decode=None: step(None)  # type: ignore[method-assign]
        return utt


class InlineCompute:
    """The compute thread's `run`, inline: the jobs' costs are on the virtual clock."""

    async def run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return fn(*args)


def speak(
    monkeypatch: pytest.MonkeyPatch, costs: dict[str, float], listens: bool = True
) -> tuple[TimestampSink, CostTts]:
    """One confirmed reply through the real pump; each chunk is written to the v2v speaker model on the clock."""
    clock = Clock()
    monkeypatch.setattr(reply_module, "time", clock)
    sink = TimestampSink(0.04, clock.monotonic)
    tts = CostTts(clock, costs, listens)
    engines = Engines(None, CostChat(clock, costs["llm"]), tts, None, make_vad=lambda cfg: None)  # type: ignore[arg-type]

    async def main() -> None:
        reply = Reply(1, TurnTrace(1, clock.t, clock.t), Responder("weather"))
        reply.confirmed.set()
        async for out in pump(reply, engines, InlineCompute(), Config()):  # type: ignore[arg-type]
            if isinstance(out, ResponseAudio):
                sink.write(out.audio)
        clock.t += 5.0  # let it play out

    asyncio.run(main())
    return sink, tts


def test_reply_plays_without_a_gap_when_each_frame_and_its_token_beat_real_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the H100 run's costs (a token 18 ms + a frame 27 ms, decode 14 ms + 6 ms a frame: faster than real time
    but not twice) the fixed 1, 1, 2, 4 schedule lets the speaker run dry; deciding each decode from the listener's
    buffer plays the same audio without a gap and with the same first sample."""
    fixed, fixed_tts = speak(monkeypatch, H100, listens=False)
    paced, paced_tts = speak(monkeypatch, H100)
    assert fixed_tts.decoder.sizes[:4] == [1, 1, 2, 4] and fixed.underruns > 0 and fixed.gap_s > 0.02
    assert paced.underruns == 0 and paced.gap_s == 0.0
    assert sum(paced_tts.decoder.sizes) == sum(fixed_tts.decoder.sizes) == len(TOKENS) - 1 + 2
    assert paced.writes[0] - 1000.0 == pytest.approx(fixed.writes[0] - 1000.0)  # first audio: no later
    assert max(paced_tts.decoder.sizes) > 1  # once the buffer is ahead, frames are gathered into larger chunks


def test_pacing_decodes_when_one_more_frame_would_come_after_the_listener_runs_dry() -> None:
    """With 50 ms between frames, a 40 ms frame step and a 100 ms decoding step, holding one more frame needs 190 ms
    (+60 ms margin) of audio left: with 260 ms it holds, with 140 ms (or none) it decodes now."""
    p = ChunkPacing(24000)
    p.frame(0.0, 0.1, True)  # the first chunk: frame + decode 100 ms
    p.chunk(0.1, 3 * 1920)  # plays until 0.34
    p.frame(0.15, 0.19, False)
    assert p.decide(0.08) is False
    assert p.decide(0.2) is True
    assert p.decide(0.5) is True  # ran dry already: the chunk still comes soonest this way


def test_pacing_holds_frames_while_the_buffer_is_ahead() -> None:
    """With a second of audio queued, the next frame and its decode fit many times over: no chunk yet."""
    p = ChunkPacing(24000)
    p.frame(0.0, 0.05, True)
    p.chunk(0.05, 24000)
    assert p.decide(0.06) is False
    assert ChunkPacing(24000).decide(0.0) is None  # before the first chunk: the engine's own schedule
