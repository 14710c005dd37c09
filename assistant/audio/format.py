"""Sample rates and frame sizes, with their derivation, and sample-format conversions."""

from __future__ import annotations

import numpy as np

CAPTURE_RATE = 16_000  # VAD and STT run at 16 kHz mono
TTS_RATE = 24_000  # Qwen3-TTS 12 Hz decodes 24 kHz mono
TTS_FRAME_SAMPLES = 1920  # 80 ms at 24 kHz: one 12.5 Hz codec frame


def frame_samples(rate: int, ms: int) -> int:
    """Samples in `ms` milliseconds at `rate` Hz, e.g. 480 = 30 ms at 16 kHz."""
    return rate * ms // 1000


def int16_to_float32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 32768.0


def float32_to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling of a mono float32 signal by windowed-sinc interpolation."""
    if src_rate == dst_rate or len(x) == 0:
        return x.astype(np.float32, copy=False)
    n_out = round(len(x) * dst_rate / src_rate)
    t = np.arange(n_out) * (src_rate / dst_rate)  # output instants in input-sample units
    cutoff = min(1.0, dst_rate / src_rate)  # low-pass at the lower Nyquist
    half = 16  # taps each side, scaled with the cutoff
    width = int(np.ceil(half / cutoff))
    base = np.floor(t).astype(np.int64)
    out = np.zeros(n_out, dtype=np.float64)
    xp = np.pad(x.astype(np.float64), (width, width + 1))
    for k in range(-width, width + 1):
        idx = base + k
        d = t - idx
        w = cutoff * np.sinc(cutoff * d) * (0.5 + 0.5 * np.cos(np.pi * np.clip(d / (width + 1), -1, 1)))
        out += xp[idx + width] * w
    return out.astype(np.float32)
