"""Pure parts of turn-taking: the engine and audio-endpoint protocols, and the bookkeeping a turn needs.

Nothing here does I/O: the capture clock, the turn's audio ring, the played-samples -> heard-text map and the
latency milestones are plain values the pipeline updates and tests check directly.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from assistant.audio.format import CAPTURE_RATE, AudioBlock
from assistant.config import VadConfig
from assistant.events import LatencyTrace, SilenceStarted, SpeechEnded, SpeechResumed, SpeechStarted

# ---- what the pipeline needs from the engines (the fixed interfaces; the real classes satisfy these) ---------


class TranscriptLike(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def language(self) -> str: ...


class TranscriberLike(Protocol):
    def reset(self) -> None: ...
    def feed(self, audio: np.ndarray) -> str | None: ...
    def finalize(self) -> TranscriptLike: ...


class ChatLike(Protocol):
    history: list[Any]  # Message(role, content, interrupted); a dropped speculative exchange is removed

    def respond(self, user_text: str) -> Iterator[str]: ...
    def finish_turn(self, heard_text: str | None) -> None: ...
    def reset(self) -> None: ...
    def set_system_prompt(self, text: str) -> None: ...


class UtteranceLike(Protocol):
    @property
    def waiting_for_text(self) -> bool: ...
    @property
    def done(self) -> bool: ...
    @property
    def frames_emitted(self) -> int: ...
    def push_text(self, text: str) -> None: ...
    def end_text(self) -> None: ...
    def step(self) -> np.ndarray | None: ...


class SpeechLike(Protocol):
    @property
    def sample_rate(self) -> int: ...
    def start(self, voice: Any, text: str | None = None) -> UtteranceLike: ...


VadEvent = SpeechStarted | SilenceStarted | SpeechResumed | SpeechEnded


class VadLike(Protocol):
    def feed(self, samples: np.ndarray) -> Sequence[VadEvent]: ...
    def set_playback(self, active: bool, level_dbfs: float = -120.0) -> None: ...
    def reset(self) -> None: ...


class AudioSource(Protocol):
    """The microphone: `Capture`, or a WebSocket client in headless mode."""

    # next int16 16 kHz mono block (with its capture time from a real microphone); AudioDeviceError when lost
    async def read(self) -> np.ndarray | AudioBlock: ...


class AudioSink(Protocol):
    """The speaker: `Playback`, or a WebSocket client in headless mode."""

    def write(self, chunk: np.ndarray) -> None: ...  # float32 at the TTS rate; never blocks
    def flush(self) -> None: ...  # drop queued audio; played_samples restarts at 0
    @property
    def played_samples(self) -> int: ...


@runtime_checkable
class TimedSink(Protocol):
    """A sink that knows when the first sample after start/flush reached the DAC (`time.monotonic()`)."""

    @property
    def first_sample_dac_time(self) -> float | None: ...


@runtime_checkable
class CountsUnderruns(Protocol):
    """A sink that counts the times its buffer ran dry in the middle of a run (`Playback`)."""

    @property
    def underruns(self) -> int: ...


@dataclass
class Engines:
    """The loaded engines the pipeline drives; every call into them runs on the compute thread."""

    transcriber: TranscriberLike
    chat: ChatLike
    tts: SpeechLike
    voice: Any  # the TTS voice profile (`Qwen3TTS.voice()`)
    make_vad: Callable[[VadConfig], VadLike]


def shift_event(ev: VadEvent, origin: int) -> VadEvent:
    """A VAD event with positions on the capture clock (the VAD counts from its construction or reset)."""
    if origin == 0:
        return ev
    if isinstance(ev, SpeechStarted):
        return dataclasses.replace(ev, start_sample=ev.start_sample + origin, onset_sample=ev.onset_sample + origin)
    if isinstance(ev, SpeechEnded):
        return dataclasses.replace(ev, start_sample=ev.start_sample + origin, end_sample=ev.end_sample + origin)
    return dataclasses.replace(ev, sample=ev.sample + origin)


# ---- the capture clock and the turn's audio -------------------------------------------------------------------


class SampleClock:
    """Maps capture sample positions to `time.monotonic()`: the last block ended at `time`."""

    def __init__(self) -> None:
        self.samples = 0
        self.time = 0.0

    def advance(self, n: int, now: float) -> None:
        self.samples += n
        self.time = now

    def time_of(self, sample: int) -> float:
        return self.time - (self.samples - sample) / CAPTURE_RATE


class AudioRing:
    """The last `capacity` captured samples (int16), addressed by absolute sample position."""

    def __init__(self, capacity: int) -> None:
        self._buf = np.zeros(capacity, dtype=np.int16)
        self.end = 0  # absolute position one past the newest sample

    @property
    def start(self) -> int:
        return max(0, self.end - len(self._buf))

    def append(self, block: np.ndarray) -> None:
        block = block[-len(self._buf) :]
        n, cap = len(block), len(self._buf)
        at = (self.end) % cap
        first = min(n, cap - at)
        self._buf[at : at + first] = block[:first]
        self._buf[: n - first] = block[first:]
        self.end += n

    def slice(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b), clamped to what is still held."""
        a, b = max(a, self.start), min(b, self.end)
        if b <= a:
            return np.zeros(0, dtype=np.int16)
        cap = len(self._buf)
        idx = np.arange(a, b) % cap
        return self._buf[idx]


# ---- what the listener heard ------------------------------------------------------------------------------------


class HeardMap:
    """Maps the sink's played-sample position back to reply text.

    For every audio chunk we record how much text had been pushed to the TTS when the chunk was produced; the
    heard text is the text pushed by the time the chunk holding the last played sample was made, cut back to a
    whole word. (An upper bound within the TTS's text lead; exact when the TTS consumes text as it is pushed.)
    """

    def __init__(self) -> None:
        self.text = ""  # everything pushed to the TTS so far
        self._ends: list[int] = []  # cumulative samples at the end of each chunk
        self._chars: list[int] = []  # len(self.text) when that chunk was produced

    @property
    def samples(self) -> int:
        return self._ends[-1] if self._ends else 0

    def pushed(self, text: str) -> None:
        self.text += text

    def chunk(self, n_samples: int) -> None:
        self._ends.append(self.samples + n_samples)
        self._chars.append(len(self.text))

    def heard(self, played: int, full_text: str | None = None) -> str:
        """The text heard after `played` samples; `full_text` (all generated so far) decides word ends."""
        if played <= 0 or not self._ends:
            return ""
        i = min(bisect.bisect_left(self._ends, played), len(self._ends) - 1)
        cut = self._chars[i]
        full = self.text if full_text is None else full_text
        if 0 < cut < len(full) and not full[cut].isspace() and not full[cut - 1].isspace():
            cut = max(full.rfind(" ", 0, cut), 0)  # mid-word: the word was not finished
        return full[:cut].strip()


def word_count(text: str) -> int:
    return len(text.split())


# ---- latency ---------------------------------------------------------------------------------------------------


@dataclass
class TurnTrace:
    """Milestones of one turn on the monotonic clock; `speech_end` is the true end of the user's speech."""

    turn: int
    speech_end: float
    endpoint: float  # when the turn was confirmed (VAD SpeechEnded, PTT release, or the ask/say call)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, when: float) -> None:
        self.marks.setdefault(name, when)  # the first occurrence counts

    def trace(self) -> LatencyTrace:
        def ms(name: str) -> float | None:
            t = self.marks.get(name)
            return None if t is None else round((t - self.speech_end) * 1000.0, 1)

        return LatencyTrace(
            turn=self.turn,
            vad_hangover_ms=round((self.endpoint - self.speech_end) * 1000.0, 1),
            stt_final_ms=ms("stt_final"),
            llm_first_token_ms=ms("llm_first_token"),
            tts_first_text_ms=ms("tts_first_text"),
            tts_first_audio_ms=ms("tts_first_audio"),
            first_sample_played_ms=ms("first_sample_played"),
        )


def level_dbfs(chunk: np.ndarray) -> float:
    """RMS level of a float32 chunk in dBFS (-120 for silence)."""
    if len(chunk) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64))))
    return max(-120.0, 20.0 * float(np.log10(max(rms, 1e-6))))
