"""Test audio: synthetic voiced frames and espeak-ng sentences at 16 kHz, with their true onsets and ends."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave

import numpy as np
import pytest

from assistant.audio.format import CAPTURE_RATE, float32_to_int16, int16_to_float32, resample


def vowel(n: int, amplitude: float = 0.3, f0: float = 140.0) -> np.ndarray:
    """`n` samples of a steady vowel-like sound (a 140 Hz buzz with 29 harmonics), int16 at 16 kHz."""
    t = np.arange(n) / CAPTURE_RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 30))
    return float32_to_int16(x / np.abs(x).max() * amplitude)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * CAPTURE_RATE), dtype=np.int16)


def pattern(frames: str, frame: int = 480, amplitudes: dict[str, float] | None = None) -> np.ndarray:
    """Audio from a frame pattern: '0' digital silence, '1' a vowel frame, other letters vowels at `amplitudes`."""
    levels = {"1": 0.3, **(amplitudes or {})}
    out = [np.zeros(frame, np.int16) if c == "0" else vowel(frame, levels[c]) for c in frames]
    return np.concatenate(out)


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def require_espeak() -> None:
    """Fail, naming the fix, when espeak-ng is missing: a plain clone runs every test or says what to install."""
    if not have_espeak():
        pytest.fail("espeak-ng is not installed: apt-get install espeak-ng (or brew install espeak-ng)", pytrace=False)


needs_espeak = pytest.mark.usefixtures("espeak_ng")  # the fixture (tests/conftest.py) calls require_espeak()


@functools.cache
def say(text: str, words_per_minute: int = 160) -> np.ndarray:
    """`text` spoken by espeak-ng, int16 mono at 16 kHz."""
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-s", str(words_per_minute), text], capture_output=True, check=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return float32_to_int16(resample(int16_to_float32(x), rate, CAPTURE_RATE))


def speech_span(x: np.ndarray, threshold_dbfs: float = -45.0, window: int = 160) -> tuple[int, int]:
    """(true onset, true end) of clean speech: the first and last 10 ms windows louder than `threshold_dbfs`."""
    n = len(x) // window
    rms = np.sqrt(np.mean(np.square(x[: n * window].astype(np.float64).reshape(n, window) / 32768.0), axis=1))
    loud = np.flatnonzero(20 * np.log10(rms + 1e-12) > threshold_dbfs)
    return int(loud[0]) * window, (int(loud[-1]) + 1) * window


def trimmed(x: np.ndarray) -> np.ndarray:
    """Speech without the silence espeak-ng puts around it."""
    on, off = speech_span(x)
    return x[on:off]


def brown_noise(n: int, rms: float, seed: int = 0) -> np.ndarray:
    """Background rumble: integrated white noise, high-passed at ~80 Hz, scaled to `rms` (int16 units), float64."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0.0, 1.0, n))
    x -= np.convolve(x, np.ones(200) / 200, "same")
    return x / np.sqrt(np.mean(np.square(x))) * rms
