"""The Transcriber engines on bad, odd and edge-case input: a clear result or error, never a crash."""

from __future__ import annotations

import itertools
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest

from assistant.audio.files import read_audio
from assistant.audio.format import resample
from assistant.config import SttConfig
from assistant.errors import ConfigError, InputError, ModelError
from assistant.stt.guard import SpeechGuard
from assistant.stt.model import LoadedModel
from assistant.stt.transcriber import OfflineTranscriber, StreamingTranscriber, to_float32
from tools.stt_ref import tiny

ENGINES = ("parakeet", "nemotron")


def make(models: dict[str, LoadedModel], engine: str, guard: bool = True, **kw: object) -> OfflineTranscriber:
    cfg = SttConfig(engine=engine, **kw)  # type: ignore[arg-type]
    cls = OfflineTranscriber if engine == "parakeet" else StreamingTranscriber
    return cls(models[engine], cfg, guard=guard)  # type: ignore[return-value]


@pytest.mark.parametrize("engine", ENGINES)
def test_speech_like_audio_gives_text(engine: str, models: dict[str, LoadedModel]) -> None:
    """The speech-like test signal passes the guard and the random model transcribes it to some text."""
    assert make(models, engine).transcribe(tiny.audio()).text != ""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "signal",
    [
        pytest.param(lambda rng, t: np.zeros_like(t), id="silence"),
        pytest.param(lambda rng, t: 0.1 * rng.standard_normal(len(t)), id="white-noise"),
        pytest.param(lambda rng, t: 0.3 * np.sin(2 * np.pi * 440 * t), id="steady-tone"),
        pytest.param(
            lambda rng, t: 0.2 * rng.standard_normal(len(t)) * (0.1 + 0.9 * np.sin(2 * np.pi * 3 * t) ** 2),
            id="bursty-noise",
        ),
    ],
)
def test_no_text_on_silence_or_noise(engine: str, signal, models: dict[str, LoadedModel]) -> None:  # type: ignore[no-untyped-def]
    """Silence, noise and a steady tone give an empty transcript (and empty partials) instead of invented words."""
    t = np.arange(32000) / 16000
    x = signal(np.random.default_rng(0), t).astype(np.float32)
    tr = make(models, engine)
    partials = [p for s in range(0, len(x), 1600) if (p := tr.feed(x[s : s + 1600])) is not None]
    assert partials and all(p == "" for p in partials)
    assert tr.finalize().text == ""


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_and_too_short(engine: str, models: dict[str, LoadedModel]) -> None:
    """No audio, or less than stt.min_utterance_ms of it, finalizes to an empty transcript."""
    tr = make(models, engine)
    assert tr.feed(np.zeros(0, np.float32)) is None
    assert tr.finalize().text == ""
    short = tiny.audio(seconds=0.15)  # min_utterance_ms defaults to 200
    assert tr.transcribe(short).text == ""
    assert (
        make(models, engine, guard=False, min_utterance_ms=0).transcribe(tiny.audio(seconds=0.005)).text == ""
    )  # < one mel frame


@pytest.mark.parametrize("engine", ENGINES)
def test_nan_and_clipped_audio_are_repaired(engine: str, models: dict[str, LoadedModel]) -> None:
    """NaN/inf samples count as silence and samples beyond full scale are clipped: the result equals clean input."""
    x = tiny.audio()
    bad = x.copy()
    bad[100:140] = np.nan
    bad[5000] = np.inf
    bad[6000:6100] *= 40.0
    clean = np.clip(np.where(np.isfinite(bad), bad, 0.0), -1, 1).astype(np.float32)
    assert make(models, engine).transcribe(bad) == make(models, engine).transcribe(clean)


@pytest.mark.parametrize("engine", ENGINES)
def test_int16_and_other_rates(engine: str, models: dict[str, LoadedModel]) -> None:
    """int16 input equals its float32 value, and 48 kHz input equals the same audio resampled to 16 kHz."""
    x16 = (tiny.audio() * 32767).astype(np.int16)
    tr = make(models, engine)
    assert tr.transcribe(x16) == tr.transcribe(x16.astype(np.float32) / 32768.0)
    hi = resample(tiny.audio(), 16000, 48000)
    assert tr.transcribe(hi, 48000) == tr.transcribe(resample(hi, 48000, 16000))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_rates_in_blocks_equal_at_once(engine: str, rate: int, models: dict[str, LoadedModel]) -> None:
    """8 and 44.1 kHz audio fed in 30 ms blocks transcribes exactly as the same audio fed at once (one streaming
    resampler per utterance, no edge transient per block); a bad rate is an InputError naming the fix."""
    audio = resample(tiny.audio(), 16000, rate)
    tr = make(models, engine)
    whole = tr.transcribe(audio, rate)
    block = rate * 30 // 1000
    tr.reset()
    for i in range(0, len(audio), block):
        tr.feed(audio[i : i + block], rate)
    assert tr.finalize() == whole
    # the samples themselves: streamed blocks equal the one-shot resampling
    tr.reset()
    streamed = np.concatenate([tr._at_16k(audio[i : i + block], rate) for i in range(0, len(audio), block)])
    streamed = np.concatenate([streamed, tr._resampler_tail()])
    assert np.array_equal(streamed, resample(audio, rate, 16000))
    with pytest.raises(InputError, match="sample rate"):
        tr.feed(np.zeros(10, np.float32), 0)


def test_bad_input_is_a_clear_error() -> None:
    """Unsupported sample types, shapes or rates raise InputError naming the fix."""
    with pytest.raises(InputError, match="int16 or float32"):
        to_float32(np.array(["a", "b"]))
    with pytest.raises(InputError, match="mono"):
        to_float32(np.zeros((2, 2, 2), np.float32))
    stereo = np.stack([tiny.audio(), tiny.audio()], axis=1)
    assert np.allclose(to_float32(stereo), tiny.audio())


@pytest.mark.parametrize("engine", ENGINES)
def test_repaired_input_is_logged_once_per_utterance(
    engine: str, models: dict[str, LoadedModel], caplog: pytest.LogCaptureFixture
) -> None:
    """Audio past full scale fed in 100 ms blocks logs one clipping warning per utterance, not one per block (a
    one-second file printed ten)."""
    loud = 3.0 * tiny.audio()
    tr = make(models, engine, partial_interval_ms=0)
    with caplog.at_level(logging.WARNING, logger="assistant.stt.transcriber"):
        for utterance in range(2):
            for s in range(0, len(loud), 1600):
                tr.feed(loud[s : s + 1600])
            tr.finalize()
            tr.reset()
            clipped = [r for r in caplog.records if "beyond full scale was clipped" in r.getMessage()]
            assert len(clipped) == utterance + 1


def test_too_long_utterance_is_split(models: dict[str, LoadedModel], caplog: pytest.LogCaptureFixture) -> None:
    """Past stt.max_utterance_s the buffer is split at a quiet point; each piece is transcribed once and joined."""
    x = np.concatenate([tiny.audio(seconds=1.7), tiny.audio(seed=5, seconds=1.7)])
    tr = make(models, "parakeet", max_utterance_s=2.0, partial_interval_ms=0)
    with caplog.at_level(logging.INFO, logger="assistant.stt.transcriber"):
        for s in range(0, len(x), 1600):
            tr.feed(x[s : s + 1600])
    assert "split" in caplog.text
    assert len(tr._done) == 1 and tr._buffered <= 32000
    first = tr._done[0][0]
    final = tr.finalize()
    assert first and final.text.startswith(first)


def test_silent_split_pieces_are_not_transcribed(models: dict[str, LoadedModel]) -> None:
    """A split-off piece of a long utterance that holds only silence adds no text; the speech pieces do."""
    x = np.concatenate([tiny.audio(seconds=1.2), np.zeros(40000, np.float32), tiny.audio(seed=5, seconds=1.2)])
    tr = make(models, "parakeet", max_utterance_s=1.5, partial_interval_ms=0)
    tr.feed(x)
    assert ("", "") in tr._done and any(text for text, _ in tr._done)
    assert tr.finalize().text


def test_bad_chunk_size_and_language(models: dict[str, LoadedModel]) -> None:
    """A chunk size the model was not trained for, or an unknown language, is refused with the valid choices."""
    with pytest.raises(ConfigError, match="480, 320, 160, 80"):
        make(models, "nemotron", chunk_ms=200)
    with pytest.raises(ModelError, match="en-US"):
        make(models, "nemotron", language="xx-YY")


def test_language_is_reported(models: dict[str, LoadedModel]) -> None:
    """Nemotron reports the language tag it emitted; a fixed stt.language is reported when the model has none."""
    tr = make(models, "nemotron", chunk_ms=160)
    out = tr.transcribe(tiny.audio())
    assert out.language == "de-DE"  # the tiny model's stream emits the <de-DE> tag
    assert "<" not in out.text
    assert make(models, "parakeet", language="en").transcribe(tiny.audio()).language == "en"
    assert make(models, "parakeet").transcribe(tiny.audio()).language == ""


def test_streaming_partials_only_grow(models: dict[str, LoadedModel]) -> None:
    """Nemotron partials extend each other and the final transcript (tokens are never revised)."""
    tr = make(models, "nemotron", chunk_ms=160, partial_interval_ms=160)
    x = tiny.audio()
    partials = [p for s in range(0, len(x), 480) if (p := tr.feed(x[s : s + 480])) is not None]
    final = tr.finalize().text
    seq = [*partials, final]
    assert len(seq) > 5 and final
    for a, b in itertools.pairwise(seq):
        assert b.startswith(a)


@pytest.mark.usefixtures("espeak_ng")
@pytest.mark.parametrize("snr_db", [None, 10, 5])
def test_guard_passes_real_speech_in_noise(snr_db: float | None, tmp_path: Path) -> None:
    """Synthesized speech, clean or in white noise down to 5 dB SNR, passes the guard that rejects noise alone."""
    wav = tmp_path / "s.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "What is the weather like tomorrow?"], check=True)
    x, rate = read_audio(str(wav))
    x = resample(x, rate, 16000)
    if snr_db is not None:
        rms = float(np.sqrt(np.mean(x**2)))
        x = x + np.random.default_rng(0).standard_normal(len(x)).astype(np.float32) * rms / 10 ** (snr_db / 20)
    guard = SpeechGuard()
    guard.push(x.astype(np.float32))
    assert guard.has_speech
