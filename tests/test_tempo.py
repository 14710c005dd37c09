"""The streaming WSOLA time stretch: identity at 1.0, duration and timing, pitch, chunking, clicks and look-ahead."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from assistant.audio.format import TTS_RATE, int16_to_float32, resample
from assistant.audio.tempo import TimeStretch
from assistant.errors import InputError

from .speech import have_espeak, needs_espeak, say, speech_span, trimmed

RATES = [0.5, 0.7, 1.5, 2.0]
LEAD, BODY = 0.3, 1.4  # seconds of silence before the speech, seconds of speech (2.0 s in all)


@functools.cache
def _speechlike() -> np.ndarray:
    """2 s at 24 kHz: 0.3 s silence, 1.4 s of espeak-ng speech (else a seeded enveloped harmonic buzz), silence."""
    n = round(BODY * TTS_RATE)
    if have_espeak():
        text = "The quick brown fox jumps over the lazy dog and then it rests."
        body = resample(int16_to_float32(trimmed(say(text, 170))), 16000, TTS_RATE)[:n]
    else:
        rng = np.random.default_rng(7)
        t = np.arange(n) / TTS_RATE
        f0 = 120 + 30 * np.sin(2 * np.pi * 1.3 * t)  # a gliding pitch, like intonation
        phase = 2 * np.pi * np.cumsum(f0) / TTS_RATE
        buzz = sum(np.sin(k * phase + rng.uniform(0, 6.3)) / k for k in range(1, 20))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t - np.pi / 2)  # syllables at 4 Hz
        body = 0.2 * buzz * envelope / np.abs(buzz).max()
    lead = np.zeros(round(LEAD * TTS_RATE))
    tail = np.zeros(round(2.0 * TTS_RATE) - len(lead) - len(body))
    return np.concatenate([lead, body, tail]).astype(np.float32)


def speechlike() -> np.ndarray:
    return _speechlike().copy()


def tone(freq: float, seconds: float = 2.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * TTS_RATE)) / TTS_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def stretch(x: np.ndarray, rate: float, sizes: list[int] | None = None) -> np.ndarray:
    """`x` pushed in chunks of `sizes` (cycled; None: all at once), then flushed."""
    ts = TimeStretch(rate, TTS_RATE)
    out, i, j = [], 0, 0
    while i < len(x):
        n = len(x) if sizes is None else sizes[j % len(sizes)]
        out.append(ts.push(x[i : i + n]))
        i, j = i + n, j + 1
    out.append(ts.flush())
    return np.concatenate(out)


def dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 8 * len(x)))
    return float(np.argmax(spectrum)) * TTS_RATE / (8 * len(x))


def median_f0(x: np.ndarray, frame: int = TTS_RATE // 25) -> float:
    """Median f0 (Hz) of the voiced 40 ms frames: the autocorrelation peak in 70..400 Hz when it is above 0.5."""
    f0s = []
    lo, hi = TTS_RATE // 400, TTS_RATE // 70
    for i in range(0, len(x) - frame, frame):
        seg = x[i : i + frame].astype(np.float64) - x[i : i + frame].mean()
        ac = np.correlate(seg, seg, "full")[frame - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[0] > 1e-6 and ac[lag] / ac[0] > 0.5:
            f0s.append(TTS_RATE / lag)
    return float(np.median(f0s))


def test_rate_one_is_an_exact_pass_through() -> None:
    """At rate 1.0 every push returns its input unchanged and flush returns nothing."""
    x = speechlike()
    ts = TimeStretch(1.0, TTS_RATE)
    for a, b in [(0, 1), (1, 1921), (1921, 5000), (5000, len(x))]:
        assert np.array_equal(ts.push(x[a:b]), x[a:b])
    assert len(ts.flush()) == 0


@pytest.mark.parametrize("rate", RATES)
def test_duration_and_timing_scale_by_the_rate(rate: float) -> None:
    """Output length is input length / rate (within 1%), and the speech starts and ends at its times / rate."""
    x = speechlike()
    y = stretch(x, rate)
    assert abs(len(y) - len(x) / rate) <= 0.01 * len(x) / rate
    (on_x, off_x), (on_y, off_y) = (speech_span((v * 32768).astype(np.int16), window=240) for v in (x, y))
    tolerance = 0.03 * TTS_RATE  # 30 ms: within one analysis window
    assert abs(on_y - on_x / rate) <= tolerance, (on_y, on_x / rate)
    assert abs(off_y - off_x / rate) <= tolerance, (off_y, off_x / rate)


@pytest.mark.parametrize("rate", [0.7, 1.5])
@pytest.mark.parametrize("freq", [173.3, 440.0])
def test_pitch_is_preserved(rate: float, freq: float) -> None:
    """A steady tone keeps its frequency (within 2%) while its duration changes."""
    y = stretch(tone(freq), rate)
    assert abs(dominant_hz(y) - freq) <= 0.02 * freq


@needs_espeak
@pytest.mark.parametrize("rate", [0.7, 1.5])
def test_speech_keeps_its_pitch(rate: float) -> None:
    """espeak-ng speech keeps its median f0 within 3% (a resampling speed change would move it by the rate)."""
    x = speechlike()
    assert abs(median_f0(stretch(x, rate)) - median_f0(x)) <= 0.03 * median_f0(x)


@pytest.mark.parametrize("rate", [0.7, 1.0, 1.5])
def test_any_chunking_equals_one_shot(rate: float) -> None:
    """Random chunk sizes, 1-sample and 1920-sample chunks all give bit-identical output to one push."""
    x = speechlike()
    whole = stretch(x, rate)
    rng = np.random.default_rng(int(rate * 10))
    assert np.array_equal(stretch(x, rate, [int(n) for n in rng.integers(1, 4000, 200)]), whole)
    assert np.array_equal(stretch(x, rate, [1920]), whole)
    part = x[TTS_RATE // 4 : TTS_RATE // 2]  # 1-sample pushes: 0.25 s around the speech onset keeps it quick
    assert np.array_equal(stretch(part, rate, [1]), stretch(part, rate))


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("freq", [173.3, 220.0, 1000.0])
def test_no_clicks_on_a_pure_tone(rate: float, freq: float) -> None:
    """The largest sample-to-sample step of a stretched pure tone stays within 5% of the input's."""
    x = tone(freq)
    fade = np.sin(np.linspace(0, np.pi / 2, TTS_RATE // 100)) ** 2  # 10 ms ends: the tone has no step at either end
    x[: len(fade)] *= fade
    x[-len(fade) :] *= fade[::-1]
    y = stretch(x, rate)
    assert np.abs(np.diff(y)).max() <= 1.05 * np.abs(np.diff(x)).max()


@pytest.mark.parametrize("rate", RATES)
def test_look_ahead_is_at_most_one_window_plus_tolerance(rate: float) -> None:
    """After every push, at most 37.5 ms of input (window + search tolerance) is not yet in the output."""
    x = speechlike()[: TTS_RATE // 2]
    ts = TimeStretch(rate, TTS_RATE)
    worst = 0
    for i in range(0, len(x), 7):
        ts.push(x[i : i + 7])
        worst = max(worst, ts.latency_samples())
    assert worst <= ts.window + ts.tolerance == round(0.0375 * TTS_RATE)


def test_flush_resets_for_the_next_stream() -> None:
    """After flush() the same input gives the same output again (no state leaks between utterances)."""
    x = speechlike()[: TTS_RATE // 2]
    ts = TimeStretch(1.3, TTS_RATE)
    first = np.concatenate([ts.push(x), ts.flush()])
    assert np.array_equal(np.concatenate([ts.push(x), ts.flush()]), first)


@pytest.mark.parametrize("rate", [0.0, 0.4, 2.5, float("nan")])
def test_rate_out_of_range_is_refused(rate: float) -> None:
    """A speed outside 0.5..2.0 raises InputError naming the valid range."""
    with pytest.raises(InputError, match=r"0\.5\.\.2\.0"):
        TimeStretch(rate, TTS_RATE)
