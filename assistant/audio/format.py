"""Sample rates and frame sizes, with their derivation, and sample-format conversions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAPTURE_RATE = 16_000  # VAD and STT run at 16 kHz mono
TTS_RATE = 24_000  # Qwen3-TTS 12 Hz decodes 24 kHz mono
TTS_FRAME_SAMPLES = 1920  # 80 ms at 24 kHz: one 12.5 Hz codec frame
SILENT_DBFS = -120.0  # the level of digital silence


@dataclass(frozen=True)
class AudioBlock:
    """Captured audio and the time it was recorded, so late processing still judges it by capture time."""

    samples: np.ndarray  # int16 mono at CAPTURE_RATE
    t: float  # time.monotonic() at which the first sample reached the ADC (a headless client: its audio clock)


def frame_samples(rate: int, ms: int) -> int:
    """Samples in `ms` milliseconds at `rate` Hz, e.g. 480 = 30 ms at 16 kHz."""
    return rate * ms // 1000


def level_dbfs(x: np.ndarray) -> float:
    """RMS level in dB full scale of int16 or float32 samples (SILENT_DBFS for silence); the one level formula."""
    if len(x) == 0:
        return SILENT_DBFS
    scale = 32768.0 if x.dtype == np.int16 else 1.0
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) / scale
    return max(SILENT_DBFS, 20.0 * float(np.log10(rms))) if rms > 0 else SILENT_DBFS


def int16_to_float32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 32768.0


def float32_to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype(np.int16)


_HALF_TAPS = 16  # sinc taps each side of an output instant at the full cutoff (scaled up when down-sampling)


def _kernel_width(src_rate: int, dst_rate: int) -> tuple[float, int]:
    cutoff = min(1.0, dst_rate / src_rate)  # low-pass at the lower Nyquist
    return cutoff, int(np.ceil(_HALF_TAPS / cutoff))


def _interpolate(xp: np.ndarray, t: np.ndarray, cutoff: float, width: int) -> np.ndarray:
    """Windowed-sinc values at instants `t` (input-sample units) of `xp`, which is padded by `width` on the left."""
    base = np.floor(t).astype(np.int64)
    out = np.zeros(len(t), dtype=np.float64)
    for k in range(-width, width + 1):
        idx = base + k
        d = t - idx
        w = cutoff * np.sinc(cutoff * d) * (0.5 + 0.5 * np.cos(np.pi * np.clip(d / (width + 1), -1, 1)))
        out += xp[idx + width] * w
    return out


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling of a mono float32 signal by windowed-sinc interpolation."""
    if src_rate == dst_rate or len(x) == 0:
        return x.astype(np.float32, copy=False)
    n_out = round(len(x) * dst_rate / src_rate)
    t = np.arange(n_out) * (src_rate / dst_rate)  # output instants in input-sample units
    cutoff, width = _kernel_width(src_rate, dst_rate)
    xp = np.pad(x.astype(np.float64), (width, width + 1))
    return _interpolate(xp, t, cutoff, width).astype(np.float32)


class StreamResampler:
    """`resample` over a stream of blocks: the concatenated output equals `resample` of the concatenated input.

    Each output sample needs `width` input samples after it, so output lags input by that much until `flush()`.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self._cutoff, self._width = _kernel_width(src_rate, dst_rate)
        self.reset()

    def reset(self) -> None:
        """Forget all input: the next block starts a new signal."""
        self._buf = np.zeros(self._width, dtype=np.float64)  # input history; index 0 = input sample `_first - width`
        self._first = 0  # absolute input index of _buf[width]
        self._n_in = 0  # input samples seen
        self._n_out = 0  # output samples produced

    def push(self, x: np.ndarray) -> np.ndarray:
        """Feed the next block (float32 mono); returns the output samples that are now fully determined."""
        if self.src_rate == self.dst_rate:
            return x.astype(np.float32, copy=False)
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        self._n_in += len(x)
        # output n needs inputs up to floor(n * step) + width, so n < (n_in - width) / step are determined
        ready = int(np.ceil((self._n_in - self._width) * self.dst_rate / self.src_rate))
        return self._emit(min(ready, round(self._n_in * self.dst_rate / self.src_rate)))

    @property
    def pending(self) -> bool:
        """Whether input has been pushed whose output is not all out yet."""
        return self._n_out < round(self._n_in * self.dst_rate / self.src_rate)

    def flush(self) -> np.ndarray:
        """The remaining output of the signal so far (its tail, as if zeros followed), then reset."""
        if self.src_rate == self.dst_rate:
            return np.zeros(0, dtype=np.float32)
        total = round(self._n_in * self.dst_rate / self.src_rate)
        self._buf = np.concatenate([self._buf, np.zeros(self._width + 1)])
        out = self._emit(total)
        self.reset()
        return out

    def _emit(self, total: int) -> np.ndarray:
        step = self.src_rate / self.dst_rate
        total = max(total, self._n_out)
        t = np.arange(self._n_out, total) * step - self._first
        out = _interpolate(self._buf, t, self._cutoff, self._width) if len(t) else np.zeros(0)
        self._n_out = total
        # keep the input still needed: from width before the next output instant
        keep_from = max(0, int(np.floor(self._n_out * step)) - self._first)
        self._buf = self._buf[keep_from:]
        self._first += keep_from
        return out.astype(np.float32)
