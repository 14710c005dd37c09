"""Voice profiles: one TOML file per voice in voices/, resolved into a talker prompt for a loaded model.

Clone profiles name a reference wav (+ transcript for in-context cloning); its x-vector and reference codes
are cached next to the profiles in `.cache/NAME.npz` (git-ignored), keyed by the wav's and model's hashes, and
recomputed when either changes.
"""

from __future__ import annotations

import hashlib
import tomllib
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from assistant.audio.format import TTS_RATE, int16_to_float32, resample
from assistant.errors import ConfigError, InputError
from assistant.tts.qwen3.prompt import VoicePrompt

Mode = Literal["custom_voice", "voice_design", "clone", "clone_icl"]
MODES: tuple[str, ...] = ("custom_voice", "voice_design", "clone", "clone_icl")
MODEL_TYPE_OF = {"custom_voice": "custom_voice", "voice_design": "voice_design", "clone": "base", "clone_icl": "base"}
KEYS = {"name", "mode", "language", "speaker", "instruct", "ref_wav", "ref_text", "speed", "description"}
PACKAGED_VOICES = Path(__file__).resolve().parents[2] / "voices"


def resolve_voice_dir(setting: str) -> Path:
    return Path(setting).expanduser() if setting else PACKAGED_VOICES


class CloneFrontEnds(Protocol):
    """What resolving a clone profile needs from the engine."""

    loaded: Any
    speech_tokenizer: Any

    @property
    def model_type(self) -> str: ...

    def speaker_encoder(self) -> Any: ...


@dataclass(frozen=True, eq=False)
class Voice:
    name: str
    prompt: VoicePrompt
    profile: VoiceProfile | None
    folder: Path
    speed: float = 1.0  # the model has no speed control: Utterance time-stretches its audio (audio/tempo.py)


@dataclass(frozen=True)
class VoiceProfile:
    name: str
    mode: str
    path: Path
    language: str = "auto"
    speaker: str = ""
    instruct: str = ""
    ref_wav: str = ""
    ref_text: str = ""
    speed: float = 1.0
    description: str = ""

    @classmethod
    def read(cls, path: Path) -> VoiceProfile:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"voice profile {path} cannot be read ({e}); fix the TOML") from e
        unknown = set(data) - KEYS
        if unknown:
            raise ConfigError(f"voice profile {path}: unknown keys {sorted(unknown)}; allowed: {sorted(KEYS)}")
        mode = data.get("mode", "")
        if mode not in MODES:
            raise ConfigError(f"voice profile {path}: `mode` must be one of {', '.join(MODES)}, got {mode!r}")
        for key in ("name", "language", "speaker", "instruct", "ref_wav", "ref_text", "description"):
            if key in data and not isinstance(data[key], str):
                raise ConfigError(f"voice profile {path}: `{key}` must be a string")
        speed = data.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.5 <= speed <= 2.0:
            raise ConfigError(f"voice profile {path}: `speed` must be a number in 0.5..2.0, got {speed!r}")
        prof = cls(
            name=data.get("name", path.stem),
            mode=mode,
            path=path,
            language=data.get("language", "auto"),
            speaker=data.get("speaker", ""),
            instruct=data.get("instruct", ""),
            ref_wav=data.get("ref_wav", ""),
            ref_text=data.get("ref_text", ""),
            speed=float(speed),
            description=data.get("description", ""),
        )
        prof.validate()
        return prof

    def validate(self) -> None:
        need = {"custom_voice": "speaker", "voice_design": "instruct", "clone": "ref_wav", "clone_icl": "ref_wav"}
        if not getattr(self, need[self.mode]):
            raise ConfigError(f"voice profile {self.path}: mode {self.mode} needs `{need[self.mode]}`")
        if self.mode == "clone_icl" and not self.ref_text.strip():
            raise ConfigError(f"voice profile {self.path}: clone_icl needs `ref_text`, the reference transcript")

    @property
    def wav_path(self) -> Path:
        return (self.path.parent / self.ref_wav).resolve()

    def resolve(self, engine: CloneFrontEnds) -> Voice:
        """The talker prompt of this profile for `engine`'s model; clone front ends run once, then cached."""
        want = MODEL_TYPE_OF[self.mode]
        if engine.model_type != want:
            raise InputError(
                f"voice {self.name!r} ({self.mode}) needs a {want} model, tts.model is {engine.model_type}; "
                "pick another voice or set tts.model"
            )
        xvec = codes = None
        if self.mode in ("clone", "clone_icl"):
            xvec, codes = self._clone_inputs(engine)
        prompt = VoicePrompt(
            language=self.language,
            speaker=self.speaker or None,
            instruct=self.instruct,
            xvector=xvec,
            ref_codes=codes if self.mode == "clone_icl" else None,
            ref_text=self.ref_text,
        )
        return Voice(self.name, prompt, self, self.path.parent, self.speed)

    def _clone_inputs(self, engine: CloneFrontEnds) -> tuple[np.ndarray, np.ndarray | None]:
        wav_bytes = _read_bytes(self.wav_path, self.path)
        key = hashlib.sha256(wav_bytes + str(engine.loaded.repo).encode()).hexdigest()
        cache = self.path.parent / ".cache" / f"{self.name}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                if str(z["key"]) == key and (self.mode == "clone" or "codes" in z.files):
                    return z["xvector"], (z["codes"] if "codes" in z.files else None)
        wav = read_wav_24k(self.wav_path)
        xvec = np.array(engine.speaker_encoder().embed(wav), dtype=np.float32)
        codes = None
        if self.mode == "clone_icl":
            st = engine.speech_tokenizer
            if st is None or st.encoder is None:
                raise InputError(f"voice {self.name!r}: in-context cloning needs the speech tokenizer's encoder")
            codes = np.array(st.encoder.encode(wav), dtype=np.int32)
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {"key": np.array(key), "xvector": xvec}
        if codes is not None:
            arrays["codes"] = codes
        np.savez(cache, **arrays)
        return xvec, codes


def _read_bytes(path: Path, profile: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"voice profile {profile}: reference wav {path} cannot be read ({e.strerror})") from e


def read_wav_24k(path: Path) -> np.ndarray:
    """A 16-bit PCM WAV (any rate, mono or stereo) as float32 mono at 24 kHz."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise InputError(f"{path}: only 16-bit PCM WAV is supported; convert it (e.g. with sox)")
            rate, channels = w.getframerate(), w.getnchannels()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (OSError, wave.Error, EOFError) as e:
        raise InputError(f"{path} is not a readable WAV file ({e}); use 16-bit PCM WAV") from e
    audio = int16_to_float32(data.reshape(-1, channels).mean(axis=1).astype(np.int16))
    return resample(audio, rate, TTS_RATE).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int = TTS_RATE) -> None:
    """float32 mono -> 16-bit PCM WAV with the stdlib `wave` module."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def load_profiles(folder: Path) -> dict[str, VoiceProfile]:
    """Every voices/*.toml profile by name. Raises ConfigError on a missing folder or a bad profile."""
    if not folder.is_dir():
        raise ConfigError(f"voices folder {folder} does not exist; set tts.voices_dir or create it")
    out: dict[str, VoiceProfile] = {}
    for path in sorted(folder.glob("*.toml")):
        prof = VoiceProfile.read(path)
        if prof.name in out:
            raise ConfigError(f"voice name {prof.name!r} is used by {out[prof.name].path} and {path}; rename one")
        out[prof.name] = prof
    return out
