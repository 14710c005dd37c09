"""`assistant transcribe FILE.wav [--partials]` with a tiny local model."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from assistant import cli
from assistant.audio.format import resample
from assistant.config import SttConfig
from assistant.stt import load_transcriber
from tools.stt_ref import tiny


def write_wav(path: Path, x: np.ndarray, rate: int, channels: int = 1) -> Path:
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(pcm, channels).tobytes())
    return path


def test_transcribe_wav_any_rate(
    isolated_env: Path, tiny_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 44.1 kHz stereo WAV prints the same transcript as the engine gives for the audio resampled to 16 kHz."""
    x = resample(tiny.audio(), 16000, 44100)
    wav = write_wav(isolated_env / "a.wav", x, 44100, channels=2)
    model = str(tiny_dirs["parakeet"])
    assert cli.main(["--set", f"stt.model={model}", "transcribe", str(wav), "--partials"]) == 0
    out = capsys.readouterr()
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32768.0
    want = load_transcriber(SttConfig(model=model)).transcribe(resample(pcm, 44100, 16000)).text  # type: ignore[attr-defined]
    assert want and out.out.strip() == want
    assert "s] " in out.err  # partials as they evolve


def test_transcribe_rejects_other_formats(isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file libsndfile cannot read, or no file at all, is a one-line error with exit code 2."""
    fake = isolated_env / "a.wav"
    fake.write_bytes(b"just some text, not audio")
    assert cli.main(["transcribe", str(fake)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"assistant: error: {fake} is not an audio file libsndfile can read (Format not recognised.); convert it, "
        f"e.g. `ffmpeg -i {fake} -ar 16000 -ac 1 out.wav`\n"
    )
    assert cli.main(["transcribe", str(isolated_env / "missing.wav")]) == 2
    assert "no such file" in capsys.readouterr().err
