"""What the conversation needs from its engines: the fixed interfaces the real classes satisfy, and the bundle.

Every call into an engine runs on the compute thread (assistant/compute.py); engines own their state, so callers
ask for operations (`Chat.discard_answer`, `Chat.revise_answer`) instead of editing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from assistant.config import VadConfig
from assistant.events import SilenceStarted, SpeechEnded, SpeechResumed, SpeechStarted

VadEvent = SpeechStarted | SilenceStarted | SpeechResumed | SpeechEnded


class TranscriptLike(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def language(self) -> str: ...


class TranscriberLike(Protocol):
    def warmup(self) -> None: ...  # compile every shape it will use (on the compute thread, before listening)
    def reset(self) -> None: ...
    def feed(self, audio: np.ndarray) -> str | None: ...
    def finalize(self) -> TranscriptLike: ...


class MessageLike(Protocol):
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def interrupted(self) -> bool: ...


class ChatLike(Protocol):
    """The LLM conversation (assistant/llm.py `Chat`)."""

    @property
    def history(self) -> Sequence[MessageLike]: ...  # a copy, oldest first

    def respond(self, user_text: str) -> Iterator[str]: ...
    def finish_turn(self, heard_text: str | None) -> None: ...  # record the answer (None: all of it)
    def discard_answer(self) -> None: ...  # drop the answer in progress and its user message
    def revise_answer(self, recorded: str, heard: str) -> bool: ...
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
    """A streaming TTS engine (assistant/tts `Tts`)."""

    @property
    def sample_rate(self) -> int: ...
    def warmup(self) -> None: ...  # compile every shape it will use (on the compute thread, before listening)
    def start(self, voice: Any, text: str | None = None) -> UtteranceLike: ...


class VadLike(Protocol):
    def feed(self, samples: np.ndarray) -> Sequence[VadEvent]: ...
    def set_playback(self, active: bool, level_dbfs: float = -120.0) -> None: ...
    def reset(self) -> None: ...


@dataclass
class Engines:
    """The loaded engines one conversation drives; every call into them runs on the compute thread."""

    transcriber: TranscriberLike
    chat: ChatLike
    tts: SpeechLike
    voice: Any  # the TTS engine's voice for this conversation (an opaque handle from `tts.voice(name)`)
    make_vad: Callable[[VadConfig], VadLike]
    score_turn: Callable[[np.ndarray], float] | None = None  # end-of-turn model: P(turn complete) of int16 audio

    def warmup(self) -> None:
        """On the compute thread: every engine compiles its shapes now, before the daemon reports listening."""
        self.transcriber.warmup()
        self.tts.warmup()
