"""A transcriber stand-in for room tests that need real words: it recognises known espeak-ng phrases in the
captured audio (tests only).

The tiny random-weight STT model writes random text, so tests whose behaviour depends on the words (the wake
phrase, both halves of a paused question in one turn) use this instead. It is not a lookup by test order: it
matches each known phrase's loudness contour (10 ms frames, dB) against the audio it was fed, by normalised
correlation, and writes the phrases it finds in the order they were heard. Audio the room lost, cut or merged
therefore shows up in the transcript exactly as it would with a real recogniser.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from assistant.audio.format import CAPTURE_RATE
from assistant.stt.types import Transcript

FRAME = CAPTURE_RATE // 100  # 160 samples: 10 ms loudness frames
FLOOR_DB = -70.0  # digital silence and the quietest espeak-ng tails clip here
MATCH = 0.8  # correlation at which a phrase counts as heard (different sentences of the clip sets reach 0.73)
PARTIAL_EVERY = CAPTURE_RATE * 100 // 1000  # a new partial at most every 100 ms of audio, like stt.partial_interval_ms


def contour(audio: np.ndarray) -> np.ndarray:
    """Loudness per 10 ms frame in dBFS (floored at FLOOR_DB) of int16 16 kHz audio."""
    n = len(audio) // FRAME
    x = audio[: n * FRAME].astype(np.float64).reshape(n, FRAME) / 32768.0
    return np.maximum(10.0 * np.log10(np.mean(np.square(x), axis=1) + 1e-12), FLOOR_DB)


class KnownSpeech:
    """Transcribes audio made of known phrases: `phrases` pairs each phrase's text with its int16 16 kHz audio
    (trimmed of silence). Follows the Transcriber contract (reset / warmup / feed / finalize)."""

    def __init__(self, phrases: Iterable[tuple[str, np.ndarray]]) -> None:
        self._refs = [(text, contour(audio)) for text, audio in phrases]
        self._audio: list[np.ndarray] = []
        self._fed = 0
        self._partial_at = 0
        self._partial = ""
        self.finals: list[str] = []  # every final it gave, in order

    def reset(self) -> None:
        self._audio, self._fed, self._partial_at, self._partial = [], 0, 0, ""

    def warmup(self) -> None:
        self.reset()

    def feed(self, audio: np.ndarray) -> str | None:
        self._audio.append(np.asarray(audio, dtype=np.int16))
        self._fed += len(audio)
        if self._fed - self._partial_at < PARTIAL_EVERY:
            return None
        self._partial_at = self._fed
        text = self.hear()
        if text == self._partial:
            return None
        self._partial = text
        return text

    def finalize(self) -> Transcript:
        text = self.hear()
        self.finals.append(text)
        self.reset()
        return Transcript(text, "en")

    def hear(self) -> str:
        """The known phrases in the audio fed since reset, in the order they were spoken."""
        if not self._audio:
            return ""
        heard = contour(np.concatenate(self._audio))
        found: list[tuple[float, int, int, str]] = []
        for text, ref in self._refs:
            n = len(ref)
            if len(heard) < n:
                continue
            windows = sliding_window_view(heard, n)
            w = windows - windows.mean(axis=1, keepdims=True)
            r = ref - ref.mean()
            corr = (w @ r) / (np.linalg.norm(w, axis=1) * np.linalg.norm(r) + 1e-9)
            at = int(np.argmax(corr))
            if corr[at] >= MATCH:
                found.append((float(corr[at]), at, at + n, text))
        kept: list[tuple[float, int, int, str]] = []
        # of overlapping candidates the longest wins: a phrase's words also match inside a longer phrase
        for f in sorted(found, key=lambda f: (f[2] - f[1], f[0]), reverse=True):
            if all(f[2] <= k[1] or f[1] >= k[2] for k in kept):
                kept.append(f)
        return " ".join(k[3] for k in sorted(kept, key=lambda k: k[1]))
