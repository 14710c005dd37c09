"""Sample rates and frame sizes, with their derivation, and sample-format conversions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

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
    out: np.ndarray = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    return out


# Resampling is libsoxr's (python-soxr): band-limited, fast, and streaming output equals one-shot output exactly.
SOXR_QUALITY = "HQ"


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling of a mono signal (float32 out); the one resampler, with `StreamResampler`."""
    x = np.asarray(x, dtype=np.float32)
    if src_rate == dst_rate or len(x) == 0:
        return x
    out: np.ndarray = soxr.resample(x, src_rate, dst_rate, quality=SOXR_QUALITY)
    return out.astype(np.float32, copy=False)


class StreamResampler:
    """`resample` over a stream of blocks: the concatenated output (after `flush()`) equals `resample` of the
    concatenated input, whatever the block sizes. Output lags input by the filter's delay until `flush()`.
    int16 blocks give int16 out (through float32, as `float32_to_int16(resample(int16_to_float32(x)))`)."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self.reset()

    def reset(self) -> None:
        """Forget all input: the next block starts a new signal."""
        self._stream = soxr.ResampleStream(self.src_rate, self.dst_rate, 1, dtype="float32", quality=SOXR_QUALITY)
        self._n_in = 0
        self._n_out = 0
        self._int16 = False

    def push(self, x: np.ndarray) -> np.ndarray:
        """Feed the next block (mono); returns the output samples that are now determined (same sample type)."""
        self._int16 = x.dtype == np.int16
        if self.src_rate == self.dst_rate:
            return x if self._int16 else np.asarray(x, dtype=np.float32)
        self._n_in += len(x)
        y = int16_to_float32(x) if self._int16 else np.asarray(x, dtype=np.float32)
        return self._out(self._stream.resample_chunk(y, last=False))

    @property
    def pending(self) -> bool:
        """Whether input has been pushed whose output is not all out yet."""
        return self._n_out < round(self._n_in * self.dst_rate / self.src_rate)

    @property
    def held_s(self) -> float:
        """Seconds of input pushed whose output is not out yet (the output's lag behind the input)."""
        return self._n_in / self.src_rate - self._n_out / self.dst_rate

    def flush(self) -> np.ndarray:
        """The remaining output of the signal so far (its tail), then reset."""
        if self.src_rate == self.dst_rate:
            return np.zeros(0, dtype=np.int16 if self._int16 else np.float32)
        out = self._out(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self.reset()
        return out

    def _out(self, y: np.ndarray) -> np.ndarray:
        self._n_out += len(y)
        return float32_to_int16(y) if self._int16 else np.asarray(y, dtype=np.float32)
