"""The capture timeline: the last captured samples by absolute position, and when each block was recorded.

Pure data structures (numpy only): the turn core keeps the user's audio in an `AudioRing` and maps sample
positions to capture time, and to whether the speaker (or its echo tail) was sounding then, with a `CaptureClock`.
"""

from __future__ import annotations

import bisect
from collections import deque

import numpy as np

from assistant.audio.format import CAPTURE_RATE, SILENT_DBFS

SPEAKER_HISTORY = 2048  # captured blocks whose speaker level is remembered (~40 s of 20 ms blocks)


class AudioRing:
    """The last `capacity` captured samples (int16), addressed by absolute sample position."""

    def __init__(self, capacity: int) -> None:
        self._buf = np.zeros(capacity, dtype=np.int16)
        self.end = 0  # absolute position one past the newest sample

    @property
    def start(self) -> int:
        return max(0, self.end - len(self._buf))

    def append(self, block: np.ndarray) -> None:
        n, cap = len(block), len(self._buf)
        block = block[-cap:]
        idx = (self.end + n - len(block) + np.arange(len(block))) % cap
        self._buf[idx] = block
        self.end += n

    def slice(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b), clamped to what is still held."""
        a, b = max(a, self.start), min(b, self.end)
        if b <= a:
            return np.zeros(0, dtype=np.int16)
        return self._buf[np.arange(a, b) % len(self._buf)].copy()


class CaptureClock:
    """Capture sample positions -> capture time, and the speaker's level when each block was recorded."""

    def __init__(self) -> None:
        self._starts: deque[int] = deque(maxlen=SPEAKER_HISTORY)
        self._times: deque[float] = deque(maxlen=SPEAKER_HISTORY)
        self._echo: deque[bool] = deque(maxlen=SPEAKER_HISTORY)
        self._loud: tuple[float, float] | None = None  # (capture time, dBFS) the speaker last played audibly

    def add(self, start: int, t: float, speaker_dbfs: float, speaker_end: float | None, tail_ms: int) -> float | None:
        """The block from sample `start` was recorded from capture time `t` while the speaker played at
        `speaker_dbfs` (its last queued sample left it at `speaker_end`; None: still playing, or nothing played).
        Returns the level the block is to be judged against: what played, else within `tail_ms` after the speaker
        last sounded (echo may still arrive: path delay + reverberation) the last level heard; None: no echo."""
        if speaker_dbfs > SILENT_DBFS:
            self._loud = (t, speaker_dbfs)
            echo: float | None = speaker_dbfs
        elif self._loud is None:
            echo = None
        else:
            ended = speaker_end if speaker_end is not None else self._loud[0]
            echo = self._loud[1] if t < max(ended, self._loud[0]) + tail_ms / 1000.0 else None
        self._starts.append(start)
        self._times.append(t)
        self._echo.append(echo is not None)
        return echo

    def _block(self, sample: int) -> int:
        return max(0, bisect.bisect_right(self._starts, sample) - 1)

    def time_of(self, sample: int) -> float:
        """Capture time of absolute sample `sample` (0.0 before any audio)."""
        if not self._starts:
            return 0.0
        i = self._block(sample)
        return self._times[i] + (sample - self._starts[i]) / CAPTURE_RATE

    def echo_at(self, sample: int) -> bool:
        """Whether the speaker (or its echo tail) was sounding when `sample` was recorded."""
        return bool(self._starts) and self._echo[self._block(sample)]
