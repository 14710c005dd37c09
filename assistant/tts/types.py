"""The TTS protocol every engine implements (see assistant/tts/__init__.py); voices are opaque handles here."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class SpeechUtterance(Protocol):
    """One utterance being spoken: text in (whole, or pushed piece by piece), audio chunks out, one step each."""

    @property
    def waiting_for_text(self) -> bool: ...  # the last step found no text to speak (push more or end_text)
    @property
    def done(self) -> bool: ...
    @property
    def frames_emitted(self) -> int: ...
    def push_text(self, text: str) -> None: ...
    def end_text(self) -> None: ...
    def step(self, decode: bool | None = None) -> np.ndarray | None:
        """One generation step: a float32 chunk at `sample_rate`, or None when it made no audio this step.
        `decode` (engines that decode frames in chunks): True makes the frames held so far a chunk now, False
        holds them for a larger one, None follows the engine's own schedule."""
        ...


class Tts(Protocol):
    """A streaming text-to-speech engine; all calls on the compute thread."""

    @property
    def sample_rate(self) -> int: ...
    def warmup(self) -> None: ...  # compile every shape it will use, before the daemon reports listening
    def voice_names(self) -> list[str]: ...  # the voice profiles this engine can speak with
    def voice(self, name: str | None = None) -> Any: ...  # an engine-specific handle for `start` (None: default)
    def start(self, voice: Any, text: str | None = None) -> SpeechUtterance:
        """text given: speak it whole; None: incremental text through push_text/end_text."""
        ...
