"""The transcript value and the Transcriber protocol (see assistant/stt/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str  # "" when unknown


class Transcriber(Protocol):
    def reset(self) -> None: ...

    def warmup(self) -> None:
        """Compile every shape utterances will use (once, at start-up, on the compute thread); then reset."""
        ...

    def feed(self, audio: np.ndarray) -> str | None:
        """16 kHz mono int16 or float32 of any length; the new partial transcript when one is due, else None."""
        ...

    def finalize(self) -> Transcript:
        """The transcript of everything fed since reset(); then resets."""
        ...
