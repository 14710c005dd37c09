"""Typed events that flow out of the pipeline (to the log, the status line and WebSocket clients).

Times are seconds on the `time.monotonic()` clock unless named `*_sample` (a sample index at 16 kHz on the
capture clock). Every event is a frozen dataclass; `Event` is their union.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class TurnState(enum.Enum):
    IDLE = "idle"  # listening, nobody speaking
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"  # final transcript taken; LLM/TTS working, nothing audible yet
    ASSISTANT_SPEAKING = "assistant_speaking"


@dataclass(frozen=True)
class StateChanged:
    old: TurnState
    new: TurnState
    time: float


@dataclass(frozen=True)
class SpeechStarted:
    """VAD decided the user is speaking; `start_sample` includes the pre-roll."""

    start_sample: int
    onset_sample: int  # first voiced frame
    time: float


@dataclass(frozen=True)
class SilenceStarted:
    """The user went quiet; the utterance ends unless speech resumes within the hangover."""

    sample: int
    time: float


@dataclass(frozen=True)
class PauseStarted:
    """The user has been quiet for vad.pause_notice_ms, before SilenceStarted: the turn core asks the end-of-turn
    model now, on the pause padded with zeros, and weighs the answer if SilenceStarted follows with the same
    `sample` (voice in between starts a new pause). Between the VAD and the turn core only: never published."""

    sample: int
    time: float


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back before the hangover ended: the same utterance goes on."""

    sample: int
    time: float


@dataclass(frozen=True)
class SpeechEnded:
    """End of utterance: `end_sample` is the true end of speech (the start of the final silence)."""

    start_sample: int
    end_sample: int
    time: float
    truncated: bool = False  # cut at vad.max_utterance_s


@dataclass(frozen=True)
class PartialTranscript:
    text: str
    time: float


@dataclass(frozen=True)
class FinalTranscript:
    text: str
    language: str
    time: float


@dataclass(frozen=True)
class ResponseTextDelta:
    turn: int
    text: str
    time: float


@dataclass(frozen=True)
class ResponseDone:
    turn: int
    text: str  # what was said (the heard part when interrupted)
    interrupted: bool
    time: float


@dataclass(frozen=True)
class LatencyTrace:
    """Per-turn milestones, ms after the true end of speech (None where a stage did not happen)."""

    turn: int
    vad_hangover_ms: float
    stt_final_ms: float | None = None
    llm_first_token_ms: float | None = None
    tts_first_text_ms: float | None = None
    tts_first_audio_ms: float | None = None
    first_sample_played_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceStatus:
    """A capture or playback device stopped or came back."""

    kind: str  # "input" | "output"
    ok: bool
    message: str
    time: float


@dataclass(frozen=True)
class SpeculationStarted:
    """Silence started: transcription and the answer began before the turn is confirmed (nothing plays yet)."""

    turn: int
    time: float


@dataclass(frozen=True)
class SpeculationCancelled:
    """Speech resumed: the speculative answer was dropped and the same user turn goes on."""

    turn: int
    time: float


@dataclass(frozen=True)
class BargeIn:
    """The user interrupted the reply: playback flushed, LLM and TTS cancelled, the answer trimmed to `heard`."""

    turn: int
    played_ms: float
    heard: str
    time: float


@dataclass(frozen=True)
class FalseStart:
    """Speech during the reply never became enough words to interrupt; the reply went on untouched."""

    time: float


@dataclass(frozen=True)
class PushToTalk:
    """The hotkey (or a `ptt.start`/`ptt.stop` command) started or ended a turn."""

    pressed: bool
    time: float


@dataclass(frozen=True)
class MuteChanged:
    """The microphone was muted (captured audio ignored) or unmuted."""

    muted: bool
    time: float


@dataclass(frozen=True)
class AttentionChanged:
    """With a wake phrase: "listening_for_name" (hands-free turns need the phrase) or "engaged" (they do not,
    while the assistant answers and for `pipeline.follow_up_s` after it stopped speaking)."""

    attention: str
    time: float


@dataclass(frozen=True)
class ErrorEvent:
    """Something failed; `client_fault` when the client's request or input caused it (the client must change
    what it sends), else the assistant's own failure (a model, a device, a bug); `turn`: the reply it failed."""

    message: str
    time: float
    client_fault: bool = False
    turn: int | None = None


VadEvent = SpeechStarted | PauseStarted | SilenceStarted | SpeechResumed | SpeechEnded  # what the VAD reports

Event = (
    StateChanged
    | SpeechStarted
    | SilenceStarted
    | SpeechResumed
    | SpeechEnded
    | PartialTranscript
    | FinalTranscript
    | ResponseTextDelta
    | ResponseDone
    | LatencyTrace
    | DeviceStatus
    | SpeculationStarted
    | SpeculationCancelled
    | BargeIn
    | FalseStart
    | PushToTalk
    | MuteChanged
    | AttentionChanged
    | ErrorEvent
)


@dataclass(frozen=True)
class ResponseStarted:
    """A reply turn began (in a headless session: after response.create, or after server VAD ended a turn)."""

    turn: int
    time: float


@dataclass(frozen=True)
class ResponseAudio:
    """Reply audio for a headless session's client: float32 mono at 24 kHz, in playback order."""

    turn: int
    audio: np.ndarray = field(compare=False)
    time: float = 0.0


@dataclass(frozen=True)
class FunctionCall:
    """The reply's model called a client's function (Realtime tools): the client runs it and sends the output.

    Published before the reply's ResponseDone; `arguments` is the JSON text of the arguments."""

    turn: int
    call_id: str
    name: str
    arguments: str
    time: float = 0.0


# What a headless (Realtime) session streams to its client: the pipeline events plus the reply audio and calls.
SessionEvent = Event | ResponseStarted | ResponseAudio | FunctionCall
