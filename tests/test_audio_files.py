"""assistant/audio/files.py: every format libsndfile reads, the writer's format from the extension, and the
one-line errors for folders, missing, unreadable, non-audio and empty files."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from assistant.audio.files import check_output, decode_audio, read_audio, write_audio
from assistant.errors import InputError

RATE = 22050


def tone(seconds: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 330.0 * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "subtype", "tolerance"),
    [
        ("float.wav", "FLOAT", 1e-7),
        ("pcm24.wav", "PCM_24", 1e-6),
        ("pcm16.wav", "PCM_16", 1e-4),
        ("u8.wav", "PCM_U8", 1e-2),
        ("pcm32.wav", "PCM_32", 1e-7),
        ("a.flac", "PCM_24", 1e-6),
        ("a.aiff", "PCM_16", 1e-4),
    ],
)
def test_reads_every_sample_type(tmp_path: Path, name: str, subtype: str, tolerance: float) -> None:
    """Float, 8/16/24/32-bit WAV, FLAC and AIFF read back as the float32 samples written, with their rate."""
    x = tone()
    sf.write(tmp_path / name, x, RATE, subtype=subtype)
    y, rate = read_audio(str(tmp_path / name))
    assert rate == RATE and y.dtype == np.float32 and len(y) == len(x)
    assert np.abs(y - x).max() <= tolerance


def test_stereo_is_averaged(tmp_path: Path) -> None:
    """A two-channel file reads as the mean of its channels."""
    left, right = tone(), np.zeros(int(0.5 * RATE), np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    y, _ = read_audio(str(tmp_path / "s.wav"))
    assert np.allclose(y, left / 2, atol=1e-7)


@pytest.mark.parametrize(("ext", "fmt"), [("wav", "WAV"), ("flac", "FLAC"), ("ogg", "OGG"), ("mp3", "MP3")])
def test_output_format_follows_the_extension(tmp_path: Path, ext: str, fmt: str) -> None:
    """--out x.EXT writes that container (MP3 really is MP3), readable back at the same rate and length."""
    path = tmp_path / f"out.{ext}"
    write_audio(check_output(str(path)), tone(1.0, 24000), 24000)
    info = sf.info(str(path))
    assert info.format == fmt and info.samplerate == 24000
    y, _ = read_audio(str(path))
    assert abs(len(y) - 24000) <= 2400  # lossy codecs pad their frames


def test_wav_out_is_16_bit_pcm(tmp_path: Path) -> None:
    """WAV output stays 16-bit PCM, what every player reads."""
    write_audio(tmp_path / "x.wav", tone(), RATE)
    assert sf.info(str(tmp_path / "x.wav")).subtype == "PCM_16"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("{d}", "--out {d}: is a folder; give a file name, e.g. {d}/speech.wav"),
        ("{d}/sub/", "--out {d}/sub/: is a folder; give a file name, e.g. {d}/sub/speech.wav"),
        ("{d}/nope/x.wav", "--out {d}/nope/x.wav: folder {d}/nope does not exist; create it or pick another path"),
        ("{d}/x", "--out {d}/x: no file extension; add one of .wav, .flac, .ogg, .mp3"),
        (
            "{d}/x.m4a",
            "--out {d}/x.m4a: cannot write .m4a audio (libsndfile {v}); use one of .flac, .mp3, .ogg, .wav",
        ),
    ],
)
def test_bad_output_paths_are_refused_in_one_line(tmp_path: Path, given: str, message: str) -> None:
    """Folders, missing folders, no extension and formats libsndfile cannot write are refused before any work."""
    d = str(tmp_path)
    with pytest.raises(InputError) as e:
        check_output(given.format(d=d))
    assert str(e.value) == message.format(d=d, v=sf.__libsndfile_version__)


def test_read_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder, a missing file, an unreadable file, a non-audio file and an empty file each get one line."""
    cases = {str(tmp_path): f"{tmp_path} is a folder; give an audio file"}
    cases[str(tmp_path / "missing.wav")] = f"no such file: {tmp_path / 'missing.wav'}"
    (tmp_path / "text.wav").write_text("hello")
    cases[str(tmp_path / "text.wav")] = (
        f"{tmp_path / 'text.wav'} is not an audio file libsndfile can read (Format not recognised.); convert it, "
        f"e.g. `ffmpeg -i {tmp_path / 'text.wav'} -ar 16000 -ac 1 out.wav`"
    )
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), RATE)
    empty = tmp_path / "empty.wav"
    cases[str(empty)] = f"{empty} holds no audio (0 samples); record or pick another file"
    for path, message in cases.items():
        with pytest.raises(InputError) as e:
            read_audio(path)
        assert str(e.value) == message
    # permission bits do not stop root, so the refusal is checked through os.access, as read_audio asks it
    locked = tmp_path / "locked.wav"
    sf.write(locked, tone(), RATE)
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked)
    with pytest.raises(InputError) as e:
        read_audio(str(locked))
    assert str(e.value) == f"{locked} cannot be read (permission denied); check its permissions"


class _Stdio(io.TextIOWrapper):
    """A text stream over a BytesIO, like sys.stdin/sys.stdout with their .buffer."""


def test_dash_reads_stdin_and_writes_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-` reads a whole file from stdin and writes a WAV to stdout, byte for byte what a file would hold."""
    sf.write(tmp_path / "in.flac", tone(), RATE, subtype="PCM_16")
    monkeypatch.setattr(sys, "stdin", _Stdio(io.BytesIO((tmp_path / "in.flac").read_bytes())))
    y, rate = read_audio("-")
    assert rate == RATE and np.abs(y - tone()).max() < 1e-4
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", _Stdio(out))
    target = check_output("-")
    write_audio(target, y, rate)
    write_audio(tmp_path / "same.wav", y, rate)
    assert target.is_stdout and out.getvalue() == (tmp_path / "same.wav").read_bytes()
    monkeypatch.setattr(sys, "stdin", _Stdio(io.BytesIO(b"")))
    with pytest.raises(InputError, match=r"^stdin is empty; pipe an audio file in"):
        read_audio("-")


@pytest.mark.parametrize("rate", [1, 100, 4000])
def test_a_rate_below_speech_is_refused(tmp_path: Path, rate: int) -> None:
    """A file sampled below 8 kHz (a wrong header, or not speech) is refused in one line by both readers; it was
    transcribed to nothing without a word."""
    path = tmp_path / "low.wav"
    sf.write(path, np.zeros(3 * rate, np.float32), rate)
    message = f"is sampled at {rate} Hz, below the 8000 Hz speech needs; check the file, or convert it"
    with pytest.raises(InputError) as e:
        read_audio(str(path))
    assert str(e.value).startswith(f"{path} {message}")
    with pytest.raises(InputError) as e:
        decode_audio(path.read_bytes(), "low.wav")
    assert str(e.value).startswith(f"low.wav {message}")
    sf.write(path, np.zeros(8000, np.float32), 8000)
    assert decode_audio(path.read_bytes())[1] == 8000


def test_an_upload_that_is_not_audio_names_the_reason_only() -> None:
    """An uploaded non-audio file's message gives libsndfile's reason, not the repr of an in-memory buffer."""
    with pytest.raises(InputError) as e:
        decode_audio(b"garbage, not audio", "notes.wav")
    assert str(e.value).startswith(
        "notes.wav is not an audio file libsndfile can read (Format not recognised.); send WAV, FLAC, OGG or MP3"
    )
    assert "BytesIO" not in str(e.value)


class _Terminal(_Stdio):
    def isatty(self) -> bool:
        return True


def test_dash_refuses_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """`-` refuses a terminal: WAV bytes are not written over it and audio is not awaited from the keyboard (it
    garbled the terminal, or waited silently for Ctrl-D)."""
    monkeypatch.setattr(sys, "stdout", _Terminal(io.BytesIO()))
    with pytest.raises(InputError, match=r"^--out - writes WAV bytes to stdout, which is a terminal; redirect it"):
        check_output("-")
    monkeypatch.setattr(sys, "stdin", _Terminal(io.BytesIO(b"RIFF")))
    with pytest.raises(InputError, match=r"^stdin is a terminal; pipe an audio file in"):
        read_audio("-")


def test_nan_and_infinite_samples_become_silence_not_a_lost_transcript(tmp_path: Path) -> None:
    """A float WAV with a NaN and an infinite sample reads (from a path and from bytes) with those two samples set
    to 0 and the rest untouched (one NaN made every mel feature NaN, so the whole recording transcribed to nothing)."""
    x = np.linspace(-0.5, 0.5, 16_000, dtype=np.float32)
    x[100], x[200] = np.nan, np.inf
    path = tmp_path / "bad.wav"
    sf.write(path, x, 16_000, subtype="FLOAT")
    for y, rate in (read_audio(str(path)), decode_audio(path.read_bytes(), "bad.wav")):
        assert rate == 16_000 and np.isfinite(y).all()
        assert y[100] == 0.0 and y[200] == 0.0
        keep = np.isfinite(x)
        np.testing.assert_array_equal(y[keep], x[keep])


def test_a_file_name_that_is_not_utf8_is_read_and_written(tmp_path: Path) -> None:
    """A file whose name holds a byte that is not UTF-8 (copied from a Latin-1 system: b"caf\\xe9.wav") is read
    and written; reading printed a UnicodeEncodeError traceback and writing failed "check the free space"."""
    folder = os.fsencode(tmp_path)
    try:
        os.close(os.open(folder + b"/probe\xe9", os.O_CREAT | os.O_WRONLY))
    except OSError:  # macOS (APFS) refuses such names, so there they cannot occur
        pytest.skip("this file system refuses names that are not UTF-8")
    out = os.fsdecode(folder + b"/caf\xe9.wav")  # what argv holds for it: a lone surrogate
    tone = (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    write_audio(out, tone, 16000)
    back, rate = read_audio(out)
    assert rate == 16000 and np.allclose(back, tone, atol=1e-3)
