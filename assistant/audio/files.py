"""The one audio-file reader and writer: libsndfile through soundfile.

Reads whatever libsndfile reads (WAV of any sample type incl. 24-bit and float, FLAC, OGG/Vorbis/Opus, MP3,
AIFF, CAF, ...); writes the format the file extension names, or refuses in one line. `-` is stdin / stdout.
Every failure is an InputError whose message names the problem and the fix.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from assistant.errors import InputError

log = logging.getLogger(__name__)

STDIO = "-"
# Extensions that are not libsndfile's format names: extension -> (format, subtype or None for the default)
_ALIASES: dict[str, tuple[str, str | None]] = {
    "AIF": ("AIFF", None),
    "OGA": ("OGG", None),
    "OPUS": ("OGG", "OPUS"),
    "WAVE": ("WAV", None),
}
# Telephone audio, the lowest rate speech is recorded at; a lower rate is a wrong header or not speech at all.
MIN_SPEECH_RATE = 8_000
# 16-bit PCM where the format allows it: what players and the old writer produced.
_PCM16 = {"WAV", "WAVEX", "W64", "RF64", "AIFF", "CAF", "AU", "FLAC"}


def writable_extensions() -> list[str]:
    """The extensions `write_audio` accepts with this libsndfile, lower case with the dot."""
    return sorted({f".{f.lower()}" for f in sf.available_formats() if f != "RAW"} | {".opus", ".aif", ".oga"})


@dataclass(frozen=True)
class Output:
    """A checked output destination: a file path (or `-` for stdout), its format and sample type."""

    path: str
    format: str
    subtype: str

    @property
    def is_stdout(self) -> bool:
        return self.path == STDIO


def check_output(path: str, option: str = "--out") -> Output:
    """Validate an output path before any work is done: a file (not a folder) in an existing, writable folder,
    with an extension libsndfile can write. `-` writes WAV to stdout. Raises InputError."""
    if path == STDIO:
        if sys.stdout.isatty():  # WAV bytes would garble the terminal
            raise InputError(
                f"{option} - writes WAV bytes to stdout, which is a terminal; redirect it (`> speech.wav`) or give a "
                "file name"
            )
        return Output(STDIO, "WAV", "PCM_16")
    p = Path(path).expanduser()
    if path.endswith(("/", os.sep)) or p.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name, e.g. {p / 'speech.wav'}")
    ext = p.suffix.lstrip(".").upper()
    if not ext:
        raise InputError(f"{option} {path}: no file extension; add one of .wav, .flac, .ogg, .mp3")
    fmt, subtype = _ALIASES.get(ext, (ext, None))
    if fmt not in sf.available_formats() or fmt == "RAW":
        raise InputError(
            f"{option} {path}: cannot write .{ext.lower()} audio (libsndfile {sf.__libsndfile_version__}); "
            f"use one of {', '.join(e for e in writable_extensions() if e in ('.wav', '.flac', '.ogg', '.mp3'))}"
        )
    subtype = subtype or ("PCM_16" if fmt in _PCM16 else sf.default_subtype(fmt))
    folder = p.parent
    if not folder.is_dir():
        raise InputError(f"{option} {path}: folder {folder} does not exist; create it or pick another path")
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"{option} {path}: not writable; check the permissions or pick another path")
    return Output(str(p), fmt, subtype)


def write_audio(out: Output | str | os.PathLike[str], audio: np.ndarray, rate: int) -> None:
    """Write float32 mono `audio` at `rate` (a path is checked first). Raises InputError when the write fails."""
    if not isinstance(out, Output):
        out = check_output(os.fspath(out))
    x = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    try:
        if out.is_stdout:  # WAV needs a seekable file for its header: build it in memory, then write it at once
            buf = io.BytesIO()
            sf.write(buf, x, rate, format=out.format, subtype=out.subtype)
            sys.stdout.buffer.write(buf.getvalue())
            sys.stdout.buffer.flush()
        else:
            sf.write(os.fsencode(out.path), x, rate, format=out.format, subtype=out.subtype)
    except (sf.LibsndfileError, OSError, ValueError) as e:
        raise InputError(f"cannot write {out.path}: {e}; check the folder and the free space") from e


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate) of an audio file, or of stdin for `-`. Channels are averaged.
    Raises InputError for folders, missing or unreadable files, non-audio files and files without samples."""
    src: bytes | io.BytesIO
    if path == STDIO:
        if sys.stdin.isatty():  # nobody types audio: reading would wait for Ctrl-D
            raise InputError("stdin is a terminal; pipe an audio file in, e.g. `assistant transcribe - < speech.wav`")
        data = sys.stdin.buffer.read()
        if not data:
            raise InputError("stdin is empty; pipe an audio file in, e.g. `assistant transcribe - < speech.wav`")
        src, name = io.BytesIO(data), "stdin"
    else:
        p = Path(path).expanduser()
        if p.is_dir():
            raise InputError(f"{path} is a folder; give an audio file")
        if not p.exists():
            raise InputError(f"no such file: {path}")
        if not os.access(p, os.R_OK):
            raise InputError(f"{path} cannot be read (permission denied); check its permissions")
        src, name = os.fsencode(p), path  # bytes: soundfile encodes a str as UTF-8, failing on undecodable names
    try:
        x, rate = sf.read(src, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise InputError(
            f"{name} is not an audio file libsndfile can read ({e.error_string}); convert it, "
            f"e.g. `ffmpeg -i {'INPUT' if path == STDIO else path} -ar 16000 -ac 1 out.wav`"
        ) from e
    except OSError as e:
        raise InputError(f"{name} cannot be read ({e.strerror or e}); check the file") from e
    if x.shape[0] == 0:
        raise InputError(f"{name} holds no audio (0 samples); record or pick another file")
    _check_rate(name, int(rate))
    return _mono(x, name), int(rate)


def _mono(x: np.ndarray, name: str) -> np.ndarray:
    """The channels' mean, with NaN and infinite samples (float files can hold them) set to silence: one would
    turn every feature of the recording into NaN and lose the whole transcript."""
    mono: np.ndarray = x.mean(axis=1).astype(np.float32)
    bad = ~np.isfinite(mono)
    if bad.any():
        log.warning("%s has %d samples that are not numbers (NaN or infinite); they count as silence", name, bad.sum())
        mono[bad] = 0.0
    return mono


def _check_rate(name: str, rate: int) -> None:
    if rate < MIN_SPEECH_RATE:
        raise InputError(
            f"{name} is sampled at {rate} Hz, below the {MIN_SPEECH_RATE} Hz speech needs; check the file, or "
            f"convert it, e.g. `ffmpeg -i INPUT -ar 16000 -ac 1 out.wav`"
        )


def encode_audio(audio: np.ndarray, rate: int, fmt: str) -> bytes:
    """float32 mono `audio` at `rate` as a whole file in memory; `fmt` is an extension (wav, flac, mp3, opus, ...).
    Raises InputError naming the formats this libsndfile writes when it cannot."""
    ext = fmt.lower().lstrip(".")
    name, subtype = _ALIASES.get(ext.upper(), (ext.upper(), None))
    if name not in sf.available_formats() or name == "RAW":
        raise InputError(f"cannot encode {fmt!r} audio; use one of {', '.join(writable_extensions())}")
    subtype = subtype or ("PCM_16" if name in _PCM16 else sf.default_subtype(name))
    x = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if name == "OGG" and subtype == "OPUS":  # Opus runs at 48 kHz and its encoder refuses other rates
        from assistant.audio.format import resample

        x, rate = resample(x, rate, 48_000), 48_000
    buf = io.BytesIO()
    try:
        sf.write(buf, x, rate, format=name, subtype=subtype)
    except (sf.LibsndfileError, ValueError) as e:
        raise InputError(f"cannot encode {fmt} audio at {rate} Hz: {e}; ask for wav or pcm") from e
    return buf.getvalue()


def decode_audio(data: bytes, name: str = "upload") -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate) of an audio file held in memory (`name` is only for the message)."""
    if not data:
        raise InputError(f"{name} is empty; send an audio file")
    try:
        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        why = e.error_string if isinstance(e, sf.LibsndfileError) else str(e)  # str(e) names the BytesIO object
        raise InputError(
            f"{name} is not an audio file libsndfile can read ({why}); send WAV, FLAC, OGG or MP3, "
            "e.g. `ffmpeg -i INPUT -ar 16000 -ac 1 out.wav`"
        ) from e
    if x.shape[0] == 0:
        raise InputError(f"{name} holds no audio (0 samples); send a recording")
    _check_rate(name, int(rate))
    return _mono(x, name), int(rate)
