"""When is the user's turn over: the evidence at a pause, and the policies that weigh it.

Pure: the turn core consults its policy at every pause; a model's score arrives as a plain value (the driver runs
the model), so a smarter detector is a second policy, not an edit of the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Decision = Literal["end", "wait"]


@dataclass(frozen=True)
class TurnEvidence:
    """What is known about the user's turn at one moment of a pause."""

    silence_ms: int  # silence since the last voiced frame, measured in capture time
    speech_ms: int  # voiced audio in the turn so far
    score: float | None  # P(turn complete) from an end-of-turn model for this pause; None until it arrives
    partial_text: str  # the latest partial transcript, "" when there is none


class EndOfTurnPolicy(Protocol):
    """Decides at a pause whether the user has finished."""

    @property
    def score_after_ms(self) -> int | None: ...  # silence after which the core asks for a model score; None: never

    def decide(self, ev: TurnEvidence) -> Decision: ...


@dataclass(frozen=True)
class FixedSilence:
    """The classic endpoint: the turn ends after `hangover_ms` of silence, whatever was said."""

    hangover_ms: int
    score_after_ms: int | None = None

    def decide(self, ev: TurnEvidence) -> Decision:
        return "end" if ev.silence_ms >= self.hangover_ms else "wait"
