"""Voice profiles: one TOML file per voice in voices/, resolved into a talker prompt for a loaded model.

Clone profiles name a reference recording (+ transcript for in-context cloning); its x-vector and reference
codes are cached in the user's cache folder (assistant/paths.py; never next to the profiles, which may be
read-only), keyed by the recording's and model's hashes, and recomputed when either changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from assistant.audio.files import read_audio
from assistant.audio.format import TTS_RATE, resample
from assistant.errors import ConfigError, InputError
from assistant.paths import voice_cache_dir

if TYPE_CHECKING:  # the qwen3 engine imports this module: import its prompt type only where it is used
    from assistant.tts.qwen3.prompt import VoicePrompt

Mode = Literal["custom_voice", "voice_design", "clone", "clone_icl"]
log = logging.getLogger("assistant.tts.voices")

MODES: tuple[str, ...] = ("custom_voice", "voice_design", "clone", "clone_icl")
MODEL_TYPE_OF = {"custom_voice": "custom_voice", "voice_design": "voice_design", "clone": "base", "clone_icl": "base"}
KEYS = {"name", "mode", "language", "speaker", "instruct", "ref_wav", "ref_text", "speed", "description"}
PACKAGED_VOICES = Path(__file__).resolve().parents[1] / "voices"  # package data (a link to the repository's voices/)


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
            data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM (Windows editors), as config
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"voice profile {path} cannot be read ({e}); fix the TOML") from e
        except UnicodeDecodeError as e:  # UTF-16 or Latin-1 text was a traceback that took every voice away
            raise ConfigError(
                f"voice profile {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                "save it as UTF-8"
            ) from e
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
        from assistant.tts.qwen3.prompt import VoicePrompt

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
        where = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:12]  # one entry per profile file
        cache = voice_cache_dir() / f"{self.name}-{where}.npz"
        if cache.is_file():
            try:
                with np.load(cache) as z:
                    if str(z["key"]) == key and (self.mode == "clone" or "codes" in z.files):
                        return z["xvector"], (z["codes"] if "codes" in z.files else None)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # cut short by a crash
                log.warning("voice %r: its cached prompt %s is unreadable (%s); recomputing it", self.name, cache, e)
        wav = read_wav_24k(self.wav_path)
        xvec = np.array(engine.speaker_encoder().embed(wav), dtype=np.float32)
        codes = None
        if self.mode == "clone_icl":
            st = engine.speech_tokenizer
            if st is None or st.encoder is None:
                raise InputError(f"voice {self.name!r}: in-context cloning needs the speech tokenizer's encoder")
            codes = np.array(st.encoder.encode(wav), dtype=np.int32)
        arrays: dict[str, Any] = {"key": np.array(key), "xvector": xvec}
        if codes is not None:
            arrays["codes"] = codes
        partial = cache.with_name(cache.name + ".part")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as f:
                np.savez(f, **arrays)
            partial.replace(cache)  # whole or not at all: a full disk or a crash leaves no half-written cache
        except OSError as e:  # a cache that cannot be written costs time at the next start, nothing else
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            log.warning("voice %r: cannot cache its prompt in %s (%s); it is recomputed next time", self.name, cache, e)
        return xvec, codes


def _read_bytes(path: Path, profile: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"voice profile {profile}: reference wav {path} cannot be read ({e.strerror})") from e


def read_wav_24k(path: Path) -> np.ndarray:
    """A reference recording (any format libsndfile reads, any rate, mono or stereo) as float32 mono at 24 kHz."""
    audio, rate = read_audio(str(path))
    return resample(audio, rate, TTS_RATE).astype(np.float32)


def load_profiles(folder: Path, broken: dict[str, str] | None = None) -> dict[str, VoiceProfile]:
    """Every voices/*.toml profile by name. Raises ConfigError on a missing folder, or on a bad profile unless
    `broken` is given: then each bad file's problem goes there under its file name (stem) and the rest load (one
    typo in a new profile must not take every voice away from a running daemon)."""
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"voices folder {folder} {why}; set tts.voices_dir or create it")
    out: dict[str, VoiceProfile] = {}
    for path in sorted(folder.glob("*.toml")):
        try:
            prof = VoiceProfile.read(path)
            if prof.name in out:
                raise ConfigError(f"voice name {prof.name!r} is used by {out[prof.name].path} and {path}; rename one")
        except ConfigError as e:
            if broken is None:
                raise
            broken[path.stem] = str(e)
            continue
        out[prof.name] = prof
    return out
