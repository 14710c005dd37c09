"""Sample-format conversion and resampling: streaming equals batch, and the band-limited result is right."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.audio.format import StreamResampler, float32_to_int16, int16_to_float32, resample

PAIRS = [(24000, 48000), (24000, 44100), (48000, 16000), (44100, 16000), (16000, 24000)]


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_streaming_equals_batch(src: int, dst: int) -> None:
    """Blocks of random sizes through StreamResampler, then flush(), give exactly resample() of the whole."""
    rng = np.random.default_rng(src + dst)
    x = rng.normal(0.0, 0.2, 10_007).astype(np.float32)
    r = StreamResampler(src, dst)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 700))
        out.append(r.push(x[i : i + n]))
        i += n
    out.append(r.flush())
    assert np.array_equal(np.concatenate(out), resample(x, src, dst))


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_sine_keeps_its_shape(src: int, dst: int) -> None:
    """A 1 kHz sine resampled matches the same sine generated at the new rate (error < 1e-3 away from the edges)."""
    t_src, t_dst = np.arange(src) / src, np.arange(dst) / dst
    y = resample((0.5 * np.sin(2 * np.pi * 1000 * t_src)).astype(np.float32), src, dst)
    want = 0.5 * np.sin(2 * np.pi * 1000 * t_dst)
    edge = dst // 100
    assert np.abs(y[edge:-edge] - want[edge:-edge]).max() < 1e-3


def test_downsampling_rejects_what_cannot_be_represented() -> None:
    """A 12 kHz tone at 48 kHz, taken down to 16 kHz (Nyquist 8 kHz), is attenuated by more than 40 dB."""
    t = np.arange(48000) / 48000
    y = resample((0.5 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32), 48000, 16000)
    assert 20 * np.log10(np.sqrt(np.mean(y[160:-160] ** 2)) / (0.5 / np.sqrt(2))) < -40


def test_int16_float32_round_trip() -> None:
    """int16 -> float32 -> int16 changes no sample by more than one step."""
    x = np.arange(-32768, 32768, 7, dtype=np.int16)
    assert np.abs(float32_to_int16(int16_to_float32(x)).astype(np.int32) - x).max() <= 1
