"""The settings a client may read and change while the daemon runs (`config.get` / `config.set`).

`public(cfg)` is what a client may see: secrets (`server.token`) are hidden. `apply(cfg, changes, voices)` is the
only way a client changes settings: every change is checked before any takes effect, against config.py's types
and ranges and against what is loaded (a voice must exist and fit the TTS model); keys that only take effect at
a restart, and every `server.*` key, are refused. Error messages name keys and the fix, never server paths, and
quote at most a few dozen characters of what the client sent.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from assistant import config as config_mod
from assistant.config import Config
from assistant.errors import ConfigError

log = logging.getLogger("assistant.settings")

SECRETS = frozenset({"server.token"})
HIDDEN = "(hidden)"  # what config.get shows for a secret that is set
# Keys the running daemon applies at once (pipeline and VAD decisions read them per event; the system prompt and
# log level are pushed to their owners). tts.voice is loaded on the compute thread and used from the next reply,
# by the daemon and by new Realtime sessions.
LIVE_KEYS = frozenset(
    {
        "pipeline.mode",
        "pipeline.speculative",
        "pipeline.barge_in",
        "pipeline.barge_in_min_words",
        "pipeline.backchannels",
        "vad.aggressiveness",
        "vad.min_speech_ms",
        "vad.preroll_ms",
        "vad.hangover_ms",
        "vad.early_silence_ms",
        "vad.noise_gate_db",
        "vad.adaptive_hangover",
        "vad.short_hangover_ms",
        "vad.barge_in_min_speech_ms",
        "vad.barge_in_energy_margin_db",
        "llm.system_prompt",
        "logging.level",
        "tts.voice",
    }
)
DAEMON_AT_RESTART: frozenset[str] = frozenset()  # live keys whose effect on the daemon waits for a restart
MAX_KEYS = 32  # changes in one config.set
MAX_KEY_CHARS = 64
MAX_STRING_CHARS = 8_000  # = protocol.MAX_INSTRUCTIONS_CHARS: the longest string setting is the system prompt
MAX_INT = 2**53  # larger numbers are not settings (and JSON clients cannot represent them exactly)
MAX_LIST_ITEMS = 64  # a list setting is a few words (pipeline.backchannels)
MAX_ITEM_CHARS = 64


class VoiceProfileLike(Protocol):
    @property
    def mode(self) -> str: ...

    @property
    def speaker(self) -> str: ...

    @property
    def language(self) -> str: ...


class VoiceCatalog(Protocol):
    """What validating `tts.voice` needs: the profiles, the TTS model's type, its preset speakers and its
    languages (each None: not known yet, as before the model is on disk)."""

    @property
    def model_type(self) -> str | None: ...

    @property
    def speakers(self) -> Collection[str] | None: ...

    @property
    def languages(self) -> Collection[str] | None: ...

    def profiles(self) -> Mapping[str, VoiceProfileLike]: ...


def public(cfg: Config) -> dict[str, dict[str, Any]]:
    """The settings as `{section: {key: value}}` with every secret hidden: the server token and the header
    values of HTTP tools (API keys travel there)."""
    out = config_mod.to_dict(cfg)
    for dotted in SECRETS:
        section, _, key = dotted.partition(".")
        if out[section][key]:
            out[section][key] = HIDDEN
    for tool in out.get("tools", {}).get("custom", {}).values():
        tool["headers"] = {name: HIDDEN for name in tool.get("headers", {})}
    return out


def apply(cfg: Config, changes: Mapping[str, object], voices: VoiceCatalog, no_hotkey: str | None = None) -> Config:
    """A copy of `cfg` with `changes` applied, or ConfigError (one line) if any change is not allowed (`no_hotkey`:
    why the daemon has no hotkey, which push-to-talk alone needs)."""
    if not changes:
        raise ConfigError('config.set: `changes` is empty; e.g. {"vad.aggressiveness": 2}')
    if len(changes) > MAX_KEYS:
        raise ConfigError(f"config.set: {len(changes)} changes at once, over {MAX_KEYS}; send fewer")
    for key, value in changes.items():
        _check_key(key)
        _check_value(key, value)
    new = cfg.replace(changes)  # types and ranges; messages quote only the bounded values checked above
    if "tts.voice" in changes and new.tts.voice != cfg.tts.voice:
        check_voice(voices, new.tts.voice)
    if new.pipeline.mode == "push_to_talk" != cfg.pipeline.mode and no_hotkey is not None:
        raise ConfigError(  # the check `assistant run` makes at start: a daemon without a hotkey would be deaf
            f'config.set: pipeline.mode = "push_to_talk" needs the hotkey, but {no_hotkey}; '
            'use "both", or set the mode in config.toml and restart'
        )
    return new


def at_restart(changes: Mapping[str, object]) -> list[str]:
    """The changed keys whose effect on the daemon's own audio waits for a restart."""
    return sorted(k for k in changes if k in DAEMON_AT_RESTART)


def check_voice(voices: VoiceCatalog, name: str, prefix: str = "config.set: ", where: str = "") -> None:
    """ConfigError (its message begins with `prefix`; `where` ends the unknown-voice one) unless `name` is a voice
    profile the TTS model can speak with: the one voice check, before start and while running."""
    profiles = _profiles(voices, prefix)
    profile = profiles.get(name)
    if profile is None:
        raise ConfigError(f"{prefix}unknown voice {name!r}; voices: {', '.join(sorted(profiles)) or 'none'}{where}")
    problem = _unfit(voices, name, profile)
    if problem is not None:
        fits = sorted(n for n, p in profiles.items() if _unfit(voices, n, p) is None)
        raise ConfigError(prefix + problem.replace("{fits}", ", ".join(fits) or "none"))  # names may hold braces


def speakable(voices: VoiceCatalog) -> list[str]:
    """The profile names check_voice passes, sorted: what a client may be offered (/health, Wyoming's voice list;
    offering every profile let Home Assistant and the page pick a clone voice a CustomVoice model cannot speak)."""
    return sorted(n for n, p in _profiles(voices, "").items() if _unfit(voices, n, p) is None)


def _profiles(voices: VoiceCatalog, prefix: str) -> Mapping[str, VoiceProfileLike]:
    try:
        return voices.profiles()
    except ConfigError as e:  # the message names the voices folder: it stays in the daemon's log
        log.warning("cannot list the voices: %s", e)
        raise ConfigError(f"{prefix}the voice profiles cannot be read; see the daemon log") from e


def _unfit(voices: VoiceCatalog, name: str, profile: VoiceProfileLike) -> str | None:
    """Why the TTS model cannot speak with `profile` (its type, then its speaker or language), or None; a `{fits}`
    field in it takes the voices that fit."""
    from assistant.tts.voices import MODEL_TYPE_OF  # a table; tts.voices has no model code

    want, have = MODEL_TYPE_OF.get(profile.mode), voices.model_type
    if have is not None and want != have:
        return (
            f"voice {name!r} ({profile.mode}) does not fit the {have} model of tts.model; voices that do: {{fits}} "
            f"(or set tts.model to a {want} model)"
        )
    # a profile's speaker or language the model lacks failed only when the voice loaded: config.set had said yes
    speakers, languages = voices.speakers, voices.languages
    if speakers is not None and profile.speaker and profile.speaker.lower() not in speakers:
        return (
            f"voice {name!r} uses speaker {profile.speaker!r}, which tts.model does not have (its speakers: "
            f"{', '.join(speakers) or 'none'}); set `speaker` in the voice's profile, or pick another voice: {{fits}}"
        )
    if languages is not None and profile.language.lower() not in languages:
        return (
            f"voice {name!r} has language {profile.language!r}, which tts.model does not know (it knows "
            f"{', '.join(languages)}); set `language` in the voice's profile, or pick another voice: {{fits}}"
        )
    return None


def _check_key(key: str) -> None:
    if len(key) > MAX_KEY_CHARS:
        raise ConfigError(
            f"config.set: a key of {len(key)} characters is not a setting; keys look like `vad.hangover_ms`"
        )
    if key.startswith("server."):
        raise ConfigError(
            f"config.set: `{key}` cannot be changed over the connection; set it in config.toml and restart"
        )
    config_mod.field_info(key)  # ConfigError for unknown keys, with a suggestion
    if key not in LIVE_KEYS:
        raise ConfigError(f"config.set: `{key}` takes effect only at start; set it in config.toml and restart")


def _check_value(key: str, value: object) -> None:
    if isinstance(value, bool | float):
        return
    if isinstance(value, list) and config_mod.field_info(key)[0] == list[str]:
        if len(value) > MAX_LIST_ITEMS or not all(isinstance(v, str) and len(v) <= MAX_ITEM_CHARS for v in value):
            raise ConfigError(
                f"config.set: `{key}` takes a list of at most {MAX_LIST_ITEMS} strings of up to {MAX_ITEM_CHARS} "
                "characters each"
            )
        return
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            raise ConfigError(f"config.set: `{key}` is a number far out of range; see config.toml for its range")
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise ConfigError(
                f"config.set: `{key}` has {len(value)} characters, over the {MAX_STRING_CHARS} allowed; shorten it"
            )
        return
    raise ConfigError(f"config.set: `{key}` must be a string, a number or true/false, not a list or object")
