"""Streaming, pitch-preserving time stretch (WSOLA): a voice profile's `speed` applied to the TTS output.

WSOLA (Verhelst & Roelands 1993): Hann windows are read from the input every `rate * HOP` samples, each shifted
by up to +-TOLERANCE to the position best aligned (normalised cross-correlation) with the natural continuation of
the previous window, and overlap-added every HOP samples of output. Pure numpy with explicit state: a window is
processed as soon as the input it needs has arrived, and every decision depends only on input samples, so any
chunking of the input gives exactly the same output as pushing it at once.
"""

from __future__ import annotations

import numpy as np

from assistant.errors import InputError

HOP_MS = 15  # synthesis hop; windows of 2 * HOP (30 ms) overlap by half, so periodic Hann weights sum to 1
TOLERANCE_MS = 7.5  # alignment search +-7.5 ms: covers one pitch period down to ~67 Hz
MIN_RATE, MAX_RATE = 0.5, 2.0


class TimeStretch:
    """Plays float32 mono audio `rate` times faster (rate 2.0: half the duration) at the same pitch.

    push() returns the output that is final so far; it holds back at most one window plus the search tolerance
    (37.5 ms) of input. flush() returns the tail, so the whole output has round(n / rate) samples for n pushed.
    rate 1.0 is an exact pass-through.
    """

    def __init__(self, rate: float, sample_rate: int):
        if not MIN_RATE <= rate <= MAX_RATE:
            raise InputError(f"speed {rate!r} is out of range; use a value in {MIN_RATE}..{MAX_RATE}")
        if sample_rate < 1000:
            raise InputError(f"sample rate {sample_rate} Hz is too low for a time stretch; use >= 1000 Hz")
        self.rate, self.sample_rate = float(rate), sample_rate
        self.hop = sample_rate * HOP_MS // 1000  # 360 at 24 kHz
        self.window = 2 * self.hop  # 720 = 30 ms at 24 kHz
        self.tolerance = int(sample_rate * TOLERANCE_MS // 1000)  # 180 at 24 kHz
        n = np.arange(self.window)
        self._hann = (0.5 - 0.5 * np.cos(2 * np.pi * n / self.window)).astype(np.float32)
        # The first window has no predecessor to overlap: full weight on its first half (no fade-in).
        self._first = np.concatenate([np.ones(self.hop, np.float32), self._hann[self.hop :]])
        self.reset()

    def reset(self) -> None:
        """Forget all input and output: the next push starts a new stream."""
        self._in = np.zeros(0, np.float32)
        self._in_start = 0  # absolute input index of self._in[0]
        self._pushed = 0  # input samples received
        self._k = 0  # next window to place
        self._prev = 0  # input position of the previous window
        self._acc = np.zeros(self.window, np.float32)  # output [k * hop, k * hop + window): partial sums
        self._emitted = 0  # output samples returned

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Feed float32 mono samples (any length); returns the stretched output that is now final."""
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._pushed += len(x)
        if self.rate == 1.0:
            self._emitted += len(x)
            return x.copy()
        self._in = np.concatenate([self._in, x])
        out: list[np.ndarray] = []
        while self._need() <= self._in_start + len(self._in):
            out.append(self._place())
        return self._emit(out)

    def flush(self) -> np.ndarray:
        """The rest of the output (input end padded with silence), then reset() for the next stream."""
        total = round(self._pushed / self.rate)
        out: list[np.ndarray] = []
        if self.rate != 1.0:
            while self._emitted + self.hop * len(out) < total:  # each window completes `hop` samples
                missing = self._need() - (self._in_start + len(self._in))
                if missing > 0:
                    self._in = np.concatenate([self._in, np.zeros(missing, np.float32)])
                out.append(self._place())
        y = np.concatenate(out) if out else np.zeros(0, np.float32)
        tail = y[: max(0, total - self._emitted)]
        self.reset()
        return tail

    def latency_samples(self) -> int:
        """Input samples pushed but not yet represented in the output (for tests and metrics)."""
        return self._pushed - round(self._emitted * self.rate)

    # ---- inside --------------------------------------------------------------------------------------------

    def _nominal(self, k: int) -> int:
        return int(k * self.hop * self.rate + 0.5)

    def _need(self) -> int:
        """One past the last input sample that placing window k reads."""
        if self._k == 0:
            return self.window
        return self._nominal(self._k) + self.tolerance + self.window  # >= prev + window: the template's end

    def _take(self, a: int, b: int) -> np.ndarray:
        # A fresh copy: the same values in the same layout whatever the chunking, so the arithmetic matches.
        return np.array(self._in[a - self._in_start : b - self._in_start], dtype=np.float32)

    def _place(self) -> np.ndarray:
        """Place window k; returns the HOP output samples it completes."""
        if self._k == 0:
            pos, weights = 0, self._first
        else:
            pos, weights = self._align(), self._hann
        self._acc += weights * self._take(pos, pos + self.window)
        done = self._acc[: self.hop].copy()
        self._acc = np.concatenate([self._acc[self.hop :], np.zeros(self.hop, np.float32)])
        self._k, self._prev = self._k + 1, pos
        keep = min(self._nominal(self._k) - self.tolerance, self._prev + self.hop)  # first sample still needed
        if keep > self._in_start:
            self._in, self._in_start = self._in[keep - self._in_start :], keep
        return done

    def _align(self) -> int:
        """The input position near the nominal one whose window best continues the previous window."""
        nominal = self._nominal(self._k)
        lo = max(nominal - self.tolerance, 0)
        # Only the overlap matters: the previous window's second half continues as input[prev + hop : prev + window].
        target = self._take(self._prev + self.hop, self._prev + self.window).astype(np.float64)
        region = self._take(lo, nominal + self.tolerance + self.hop).astype(np.float64)
        corr = np.correlate(region, target, "valid")
        power = np.concatenate([[0.0], np.cumsum(region * region)])
        energy = np.maximum(power[self.hop :] - power[: -self.hop], 0.0)
        score = corr / np.sqrt(energy + 1e-9)
        return lo + int(np.argmax(score))

    def _emit(self, out: list[np.ndarray]) -> np.ndarray:
        y = np.concatenate(out) if out else np.zeros(0, np.float32)
        self._emitted += len(y)
        return y
