"""The engines one conversation drives, as the protocols of their packages, and the LLM chat's protocol.

Every call into an engine runs on the compute thread (assistant/compute.py); engines own their state, so callers
ask for operations (`Chat.discard_answer`, `Chat.revise_answer`) instead of editing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from assistant.config import VadConfig
from assistant.events import VadEvent
from assistant.stt.types import Transcriber
from assistant.tools.calls import ToolCall, ToolChoice
from assistant.tts.types import Tts

if TYPE_CHECKING:  # the message type only: importing llm would load MLX with the conversation
    from assistant.llm import Message


class ChatLike(Protocol):
    """The LLM conversation (assistant/llm.py `Chat`)."""

    @property
    def history(self) -> Sequence[Message]: ...  # a copy, oldest first

    def respond(self, user_text: str) -> Iterator[str]: ...
    def finish_turn(self, heard_text: str | None) -> None: ...  # record the answer (None: all of it)
    def discard_answer(self) -> None: ...  # drop the answer in progress and its user message
    def revise_answer(self, recorded: str, heard: str) -> bool: ...
    def restore(self, messages: Sequence[Message]) -> int: ...  # replace the history (oldest turns may drop)
    def reset(self) -> None: ...
    def set_system_prompt(self, text: str) -> None: ...
    def set_temperature(self, value: float) -> None: ...  # sampling from the next token on
    def set_tools(self, schemas: Sequence[Mapping[str, Any]], choice: ToolChoice = ...) -> bool: ...
    @property
    def can_call_tools(self) -> bool: ...  # False: set_tools offers nothing (no tool-call format)
    def continue_with_results(self, said: str, results: Sequence[tuple[ToolCall, str]]) -> Iterator[str]: ...
    def last_turn(self) -> list[Message]: ...  # the newest turn's messages (for the memory store)
    def warmup(self) -> None: ...  # compile what a turn runs, before the daemon reports listening


class VadLike(Protocol):
    def feed(self, samples: np.ndarray) -> Sequence[VadEvent]: ...
    def set_playback(self, active: bool, level_dbfs: float = -120.0, linear: bool = False) -> None: ...
    def reset(self, origin: int = 0) -> None: ...  # positions of the events after it count from `origin`


@dataclass
class Engines:
    """The loaded engines one conversation drives; every call into them runs on the compute thread."""

    transcriber: Transcriber
    chat: ChatLike
    tts: Tts
    voice: Any  # this conversation's voice: the handle `tts.voice(name)` returned
    make_vad: Callable[[VadConfig], VadLike]
    score_turn: Callable[[np.ndarray], float] | None = None  # end-of-turn model: P(turn complete) of int16 audio

    def use_voice(self, name: str) -> None:
        """On the compute thread: load voice `name`; replies started after this speak with it."""
        self.voice = self.tts.voice(name)

    def warmup(self) -> None:
        """On the compute thread: every engine compiles its shapes now, before the daemon reports listening."""
        self.transcriber.warmup()
        self.chat.warmup()
        self.tts.warmup()
