"""Settings: one frozen dataclass per config.toml section, validated once by `load()`.

Each field's metadata holds its unit and allowed range or choices; the validator, the error messages and the
documentation test all read them from here, so config.toml and the code cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import shutil
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from assistant.errors import ConfigError

PACKAGED_CONFIG = Path(__file__).with_name("config.toml")
MAX_CONFIG_BYTES = 1024 * 1024  # the documented config.toml is 17 KB


def opt(
    default: Any,
    unit: str = "",
    lo: float | None = None,
    hi: float | None = None,
    choices: Sequence[Any] | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A config field: its default, unit, inclusive range or allowed choices, and a `check` of its own (what is
    wrong with a value, after `key`, or None)."""
    meta = {"unit": unit, "lo": lo, "hi": hi, "choices": tuple(choices) if choices else None, "check": check}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _header_safe(value: str) -> str | None:
    """server.token is sent in an HTTP header: a space at either end is stripped there, and non-ASCII bytes read as
    Latin-1."""
    if value == value.strip() and all(" " <= c <= "~" for c in value):
        return None
    return (
        "must be printable ASCII with no space at either end (clients send it in an HTTP header, which drops or "
        'mangles the rest); use e.g. the output of `python3 -c "import secrets; print(secrets.token_urlsafe(32))"`, '
        'or "" to have one generated'
    )


def _has_words(value: str) -> str | None:
    """A wake phrase without a word would match every turn: the user meant to be addressed by name."""
    if not value.strip() or re.search(r"[^\W_]", value):
        return None
    return f'= {value!r} has no words to listen for; write the name, e.g. "hey nova", or "" to answer every turn'


def parse_voice_aliases(entries: list[str]) -> dict[str, str]:
    """`server.voice_aliases` entries "name=profile" -> {name lowercased: profile}. A client's voice name matches
    an alias whatever its case, so two names differing only in case are refused: ValueError naming the fix."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for entry in entries:
        name, sep, profile = entry.partition("=")
        if not sep or not name.strip() or not profile.strip():
            raise ValueError(f'entry {entry!r} is not "name=profile"; write e.g. "alloy=vivian"')
        key = name.strip().lower()
        if key in seen:
            raise ValueError(
                f"entries {seen[key]!r} and {entry!r} name the same voice (names match whatever their case); keep one"
            )
        seen[key] = entry
        out[key] = profile.strip()
    return out


def _aliases(value: list[str]) -> str | None:
    try:
        parse_voice_aliases(value)
    except ValueError as e:
        return str(e)
    return None


@dataclass(frozen=True)
class AudioConfig:
    input_device: str = opt("")  # name substring or index; "" = system default
    output_device: str = opt("")
    device_rate: int = opt(0, "Hz", 0, 384_000)  # 0 = ours when the device takes it, else the device's default
    block_ms: int = opt(20, "ms", 5, 200)
    output_prebuffer_ms: int = opt(40, "ms", 0, 2000)
    capture_queue_blocks: int = opt(500, "blocks", 10, 100_000)
    playback_buffer_s: float = opt(120.0, "s", 1.0, 3600.0)
    device_retry_s: float = opt(1.0, "s", 0.5, 60.0)  # a failed open costs ms; after a return the user waits for it
    follow_default: str = opt("auto", choices=("auto", "reinit", "off"))  # see assistant/audio/follow.py


@dataclass(frozen=True)
class VadConfig:
    aggressiveness: int = opt(2, "", 0, 3)
    frame_ms: int = opt(30, "ms", choices=(10, 20, 30))
    min_speech_ms: int = opt(150, "ms", 10, 5000)
    preroll_ms: int = opt(300, "ms", 0, 3000)
    hangover_ms: int = opt(700, "ms", 100, 5000)
    early_silence_ms: int = opt(200, "ms", 0, 5000)
    pause_notice_ms: int = opt(0, "ms", 0, 5000)  # PauseStarted this early (0 or >= early_silence_ms: never)
    noise_gate_db: float = opt(6.0, "dB", 0.0, 40.0)
    max_utterance_s: float = opt(30.0, "s", 1.0, 600.0)
    adaptive_hangover: bool = opt(False)
    short_hangover_ms: int = opt(400, "ms", 100, 5000)
    barge_in_min_speech_ms: int = opt(300, "ms", 10, 5000)
    barge_in_energy_margin_db: float = opt(6.0, "dB", 0.0, 60.0)
    echo_tail_ms: int = opt(200, "ms", 0, 2000)


@dataclass(frozen=True)
class SttConfig:
    engine: str = opt("parakeet", choices=("parakeet", "nemotron"))
    model: str = opt("")  # "" = the engine's default model (see STT_DEFAULT_MODELS)
    language: str = opt("auto")
    partial_interval_ms: int = opt(300, "ms", 0, 10_000)
    chunk_ms: int = opt(160, "ms", 80, 1120)
    min_utterance_ms: int = opt(200, "ms", 0, 5000)
    max_utterance_s: float = opt(30.0, "s", 1.0, 600.0)
    dtype: str = opt("auto", choices=("auto", "float32", "bfloat16", "float16"))

    @property
    def model_id(self) -> str:
        return self.model or STT_DEFAULT_MODELS[self.engine]


STT_DEFAULT_MODELS = {
    "parakeet": "mlx-community/parakeet-tdt-0.6b-v3",
    "nemotron": "mlx-community/nemotron-3.5-asr-streaming-0.6b",
}

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Your replies are spoken aloud, so answer in short, natural spoken "
    "sentences. Never use markdown, lists, code blocks, emoji or URLs. Ask a brief question when unsure."
)


@dataclass(frozen=True)
class LlmConfig:
    backend: str = opt("mlx", choices=("mlx", "openai"))  # in-process mlx-lm, or an OpenAI-compatible server
    model: str = opt("mlx-community/gemma-4-e4b-it-4bit")
    system_prompt: str = opt(DEFAULT_SYSTEM_PROMPT)
    max_tokens: int = opt(400, "tokens", 1, 32_768)
    temperature: float = opt(0.7, "", 0.0, 2.0)
    top_p: float = opt(0.95, "", 0.0, 1.0)
    top_k: int = opt(64, "", 0, 100_000)
    min_p: float = opt(0.0, "", 0.0, 1.0)
    repetition_penalty: float = opt(1.0, "", 0.5, 2.0)
    history_tokens: int = opt(4096, "tokens", 256, 1_000_000)
    seed: int = opt(-1, "", -1, 2**31 - 1)
    base_url: str = opt("http://127.0.0.1:8080/v1")  # backend = "openai": the server's OpenAI API root
    api_key_env: str = opt("")  # name of the environment variable holding the API key ("" = none)
    api_key_file: str = opt("")  # or a file holding it (read once at start; never logged or returned)
    connect_timeout_s: float = opt(3.0, "s", 0.1, 120.0)
    timeout_s: float = opt(30.0, "s", 0.5, 600.0)  # longest silence from the server before the turn fails


@dataclass(frozen=True)
class TtsConfig:
    engine: str = opt("qwen3", choices=("qwen3",))
    model: str = opt("mlx-community/Qwen3-TTS-12Hz-0.6B-CustomVoice-8bit")
    voice: str = opt("default")
    voices_dir: str = opt("")  # "" = the voices/ folder next to the package
    text_mode: str = opt("incremental", choices=("incremental", "chunked"))
    first_chunk_frames: int = opt(1, "frames", 1, 100)
    chunk_frames: int = opt(4, "frames", 1, 100)
    max_frames: int = opt(2048, "frames", 1, 8192)
    temperature: float = opt(0.9, "", 0.0, 2.0)
    top_k: int = opt(50, "", 0, 4096)
    top_p: float = opt(1.0, "", 0.0, 1.0)
    repetition_penalty: float = opt(1.05, "", 1.0, 2.0)
    subtalker_temperature: float = opt(0.9, "", 0.0, 2.0)
    subtalker_top_k: int = opt(50, "", 0, 4096)
    subtalker_top_p: float = opt(1.0, "", 0.0, 1.0)
    seed: int = opt(-1, "", -1, 2**31 - 1)
    dtype: str = opt("auto", choices=("auto", "float32", "bfloat16", "float16"))


@dataclass(frozen=True)
class ServerConfig:
    enabled: bool = opt(True)
    host: str = opt("127.0.0.1")
    port: int = opt(8765, "", 0, 65535)
    token: str = opt("", check=_header_safe)  # "" = generated at first start and stored in token_file
    token_file: str = opt("")  # "" = ~/.config/assistant/token
    allow_loopback_without_token: bool = opt(False)
    allowed_origins: list[str] = opt([])
    max_message_bytes: int = opt(1_048_576, "bytes", 1024, 64 * 1024 * 1024)
    commands_per_s: float = opt(20.0, "commands/s", 0.1, 10_000.0)
    ping_interval_s: float = opt(20.0, "s", 1.0, 600.0)
    idle_timeout_s: float = opt(600.0, "s", 5.0, 86_400.0)
    client_queue: int = opt(256, "events", 8, 65_536)
    realtime_sessions: int = opt(2, "sessions", 0, 16)  # 0 = /v1/realtime off
    tls_cert: str = opt("")  # PEM certificate (chain): with tls_key, the port speaks https:// and wss:// only
    tls_key: str = opt("")  # PEM private key of tls_cert
    voice_aliases: list[str] = opt([], check=_aliases)  # "alloy=vivian": voice names clients send -> voice profiles


@dataclass(frozen=True)
class PipelineConfig:
    mode: str = opt("both", choices=("hands_free", "push_to_talk", "both"))
    speculative: bool = opt(True)
    barge_in: bool = opt(True)
    barge_in_min_words: int = opt(0, "words", 0, 20)
    backchannels: list[str] = opt(["mm-hm", "mhm", "uh-huh", "yeah", "okay", "ok", "right"])
    hotkey: str = opt("<alt_r>")
    hotkey_mode: str = opt("hold", choices=("hold", "toggle"))
    status_line: bool = opt(True)
    wake_phrase: str = opt("", check=_has_words)  # "" = every hands-free turn is answered
    follow_up_s: float = opt(8.0, "s", 0.0, 600.0)


@dataclass(frozen=True)
class WyomingConfig:
    enabled: bool = opt(False)
    host: str = opt("127.0.0.1")
    asr_port: int = opt(10300, "", 0, 65535)
    tts_port: int = opt(10200, "", 0, 65535)
    handle_port: int = opt(0, "", 0, 65535)  # the LLM as a conversation agent; 0 = off
    max_audio_s: float = opt(60.0, "s", 1.0, 3600.0)
    max_text_chars: int = opt(4000, "chars", 1, 1_000_000)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = opt("info", choices=("debug", "info", "warning", "error"))
    json: bool = opt(False)


@dataclass(frozen=True)
class EndOfTurnConfig:
    detector: str = opt("smart_turn", choices=("smart_turn", "silence"))  # silence: vad.hangover_ms alone
    model: str = opt("pipecat-ai/smart-turn-v3")
    threshold: float = opt(0.5, "", 0.0, 1.0)
    score_after_ms: int = opt(150, "ms", 30, 2000)
    ask_after_ms: int = opt(90, "ms", 30, 2000)  # the model is asked here, its answer weighed at score_after_ms
    max_wait_ms: int = opt(2000, "ms", 100, 10_000)
    resume_ms: int = opt(1200, "ms", 0, 5000)  # speech this soon after a turn's end continues it (0: never)
    threads: int = opt(1, "threads", 1, 16)


@dataclass(frozen=True)
class EchoConfig:
    enabled: bool = opt(True)


@dataclass(frozen=True)
class UserToolConfig:
    """A tool declared in config.toml (`[tools.custom.NAME]`): a local command or an HTTP request."""

    kind: str = opt("command", choices=("command", "http"))
    description: str = opt("")
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    argv: list[str] = opt([])  # command: program and arguments; "{name}" is replaced by that argument
    url: str = opt("")  # http: "{name}" is replaced by that argument, URL-quoted
    method: str = opt("GET", choices=("GET", "POST"))  # GET: the other arguments as the query; POST: as JSON
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = opt(10.0, "s", 0.1, 600.0)
    max_output_bytes: int = opt(4096, "bytes", 64, 1_048_576)


@dataclass(frozen=True)
class ToolsConfig:
    enabled: list[str] = opt(["time", "reminders"])  # built-in tool sets and [tools.custom] names offered
    timezone: str = opt("")  # IANA name; "" = the system's
    filler_after_ms: int = opt(1200, "ms", 0, 60_000)
    filler: list[str] = opt(["One moment.", "Let me check."])
    max_rounds: int = opt(3, "rounds", 1, 10)
    custom: dict[str, UserToolConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryConfig:
    off_the_record: bool = opt(False)  # true: the conversation is never written to disk
    path: str = opt("")  # "" = memory.sqlite3 in the user's data folder


@dataclass(frozen=True)
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    stt: SttConfig = field(default_factory=SttConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    endofturn: EndOfTurnConfig = field(default_factory=EndOfTurnConfig)
    echo: EchoConfig = field(default_factory=EchoConfig)
    source: str = field(default="defaults", compare=False)  # where the settings came from, for messages

    def replace(self, changes: Mapping[str, Any], origin: str = "config.set") -> Config:
        """A copy with `{"section.key": value}` changes applied, validated like the file."""
        table: dict[str, dict[str, Any]] = {}
        for dotted, value in changes.items():
            section, _, key = dotted.partition(".")
            if not key:
                raise ConfigError(f"{origin}: `{dotted}` is not a section.key name; e.g. `vad.aggressiveness`")
            table.setdefault(section, {})[key] = value
        return _build(table, origin, base=self, source=self.source)


SECTIONS: dict[str, type] = {
    f.name: get_type_hints(Config)[f.name] for f in dataclasses.fields(Config) if f.name != "source"
}


def _describe(meta: Mapping[str, Any]) -> str:
    unit = f" {meta['unit']}" if meta.get("unit") else ""
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    if meta.get("lo") is not None:
        return f"{meta['lo']}..{meta['hi']}{unit}"
    return unit.strip()


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _type_of(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _user_tools(path: str, value: Any, origin: str) -> dict[str, UserToolConfig]:
    """`[tools.custom.NAME]` tables -> UserToolConfig, each key checked like the rest of the file."""
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: `{path}` must be a table of tools, e.g. [{path}.weather], got {value!r}")
    hints = get_type_hints(UserToolConfig)
    fields = {f.name: f for f in dataclasses.fields(UserToolConfig)}
    out = {}
    for name, table in value.items():
        where = f"{path}.{name}"
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{origin}: tool name `{name}` must be letters, digits, `_` or `-`")
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: `{where}` must be a table with kind, description, parameters...")
        updates: dict[str, Any] = {}
        for key, item in table.items():
            if key not in fields:
                raise ConfigError(f"{origin}: unknown key `{where}.{key}`; {_suggest(key, list(fields))}")
            if key == "parameters":
                if not isinstance(item, dict) or item.get("type", "object") != "object":
                    raise ConfigError(
                        f'{origin}: `{where}.parameters` must be a JSON schema table with type = "object", got {item!r}'
                    )
                updates[key] = {"type": "object", "properties": {}, **item}
                _check_parameters(f"{where}.parameters", updates[key], origin)
            elif key == "headers":
                if not isinstance(item, dict) or not all(isinstance(v, str) for v in item.values()):
                    raise ConfigError(f"{origin}: `{where}.headers` must be a table of strings, got {item!r}")
                _check_headers(f"{where}.headers", item, origin)
                updates[key] = dict(item)
            else:
                updates[key] = _check(f"{where}.{key}", item, hints[key], fields[key].metadata, origin)
        tool = UserToolConfig(**updates)
        if not tool.description:
            raise ConfigError(f"{origin}: `{where}.description` is empty; say what the tool does, for the LLM")
        if tool.kind == "command" and not tool.argv:
            raise ConfigError(f'{origin}: `{where}.argv` is empty; e.g. argv = ["/usr/bin/uptime"]')
        if tool.kind == "http" and not tool.url.startswith(("http://", "https://")):
            raise ConfigError(f"{origin}: `{where}.url` must start with http:// or https://, got {tool.url!r}")
        if tool.kind == "http" and (not _host_of(tool.url) or re.search(r"\s", tool.url)):
            raise ConfigError(  # every call would fail with a traceback in the log
                f"{origin}: `{where}.url` {tool.url!r} is not a URL of a host (a name after the scheme, no spaces); "
                'e.g. "https://wttr.in/{city}?format=3"'
            )
        if tool.kind == "command" and shutil.which(tool.argv[0]) is None:
            raise ConfigError(
                f"{origin}: `{where}.argv` runs {tool.argv[0]!r}, which is not an executable file; "
                "give its full path (`which NAME` finds it)"
            )
        used = re.findall(r"\{(\w+)\}", " ".join([*tool.argv, tool.url]) if tool.kind == "command" else tool.url)
        undeclared = sorted(set(used) - set(tool.parameters.get("properties", {})))
        if undeclared:
            raise ConfigError(
                f"{origin}: `{where}` uses {{{undeclared[0]}}}, which `parameters.properties` does not declare; "
                f'add {undeclared[0]} = {{ type = "string" }} to it'
            )
        out[name] = tool
    return out


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


def _check_headers(where: str, headers: Mapping[str, str], origin: str) -> None:
    """HTTP tool headers are sendable: a token as each name, a value without line breaks or other control
    characters that fits Latin-1 (urllib refused them at every call, with a traceback in the log)."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(
                f"{origin}: `{where}` name {name!r} is not an HTTP header name; use letters, digits and `-`, e.g. "
                '"X-Api-Key"'
            )
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 or ord(c) > 255 for c in value):
            raise ConfigError(
                f"{origin}: `{where}.{name}` has a line break, control character or character beyond Latin-1, "
                "which HTTP cannot send; put the value on one line"
            )


def _check_parameters(where: str, schema: dict[str, Any], origin: str) -> None:
    """A tool's JSON schema has a table of property schemas and a `required` list naming some of them (the
    placeholders and the chat template read both)."""
    properties = schema["properties"]
    if not isinstance(properties, dict) or not all(isinstance(v, dict) for v in properties.values()):
        raise ConfigError(
            f'{origin}: `{where}.properties` must be a table of schemas, e.g. {{ city = {{ type = "string" }} }}, '
            f"got {properties!r}"
        )
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) and r in properties for r in required):
        raise ConfigError(
            f"{origin}: `{where}.required` must be a list of names from its properties "
            f"({', '.join(properties) or 'none'}), got {required!r}"
        )


INDEX_KEYS = frozenset({"audio.input_device", "audio.output_device"})  # a name substring or a device index


def _check(path: str, value: Any, typ: Any, meta: Mapping[str, Any], origin: str) -> Any:
    """Return `value` converted to the field type, or raise ConfigError naming key, value and range."""
    if typ == dict[str, UserToolConfig]:
        return _user_tools(path, value, origin)
    allowed = _describe(meta)
    want = "a list of strings" if typ == list[str] else _TYPE_NAMES[typ]
    if path in INDEX_KEYS:
        want = "a device name (or part of it) or an index >= 0 from `assistant devices`"
    bad_type = ConfigError(
        f"{origin}: `{path}` must be {want}{f' ({allowed})' if allowed else ''}, got {value!r} ({_type_of(value)})"
    )
    if typ == list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            # `a,b` or `[a, b]` (a bare string to TOML): show the list it was meant as, in TOML
            words = [str(v) for v in value] if isinstance(value, list) else []
            words = value.strip("[]").split(",") if isinstance(value, str) else words
            example = json.dumps([w.strip().strip("'\"") for w in words if w.strip()] or ["a", "b"])
            raise ConfigError(f"{bad_type}; write a TOML list of quoted strings, e.g. {example}")
        if meta.get("check") and (problem := meta["check"](value)) is not None:
            raise ConfigError(f"{origin}: `{path}` {problem}")
        return list(value)
    if typ is bool and not isinstance(value, bool):
        raise bad_type
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad_type
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_type
        value = float(value)
    if path in INDEX_KEYS and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)  # `input_device = 3`: an index from `assistant devices`, as config.toml documents
    if typ is str and not isinstance(value, str):
        if isinstance(value, bool | int | float) and path not in INDEX_KEYS:  # TOML read a bare word as a number
            text = json.dumps(str(value).lower() if isinstance(value, bool) else str(value))
            raise ConfigError(f"{bad_type}; write it in quotes: {path.rpartition('.')[2]} = {text}")
        raise bad_type
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{origin}: `{path}` = {value!r} is not allowed; use {allowed}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and not (lo <= value <= hi):
        raise ConfigError(f"{origin}: `{path}` = {value!r} is out of range; allowed {allowed}")
    if meta.get("check") and (problem := meta["check"](value)) is not None:
        raise ConfigError(f"{origin}: `{path}` {problem}")
    return value


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"did you mean `{close[0]}`?" if close else "valid keys: " + ", ".join(f"`{v}`" for v in valid)


def _build(table: Mapping[str, Any], origin: str, base: Config | None = None, source: str = "defaults") -> Config:
    base = base or Config()
    sections: dict[str, Any] = {}
    for name, value in table.items():
        if name not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section `[{name}]`; {_suggest(name, list(SECTIONS))}")
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: `{name}` must be a table (`[{name}]`), got {value!r}")
        cls = SECTIONS[name]
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        updates = {}
        for key, item in value.items():
            path = f"{name}.{key}"
            if key not in fields:
                valid = [f"{name}.{k}" for k in fields]
                raise ConfigError(f"{origin}: unknown key `{path}`; {_suggest(path, valid)}")
            updates[key] = _check(path, item, hints[key], fields[key].metadata, origin)
        sections[name] = dataclasses.replace(getattr(base, name), **updates)
    return dataclasses.replace(base, **sections, source=source)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `--set section.key=value`; the value is a TOML literal, or a bare string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"--set expects section.key=value, got {text!r}; e.g. --set vad.hangover_ms=600")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    if not isinstance(value, str) and key not in INDEX_KEYS and _is_text_key(key):  # `--set server.token=1234`
        value = raw.strip()
    return key, value


def _is_text_key(dotted: str) -> bool:
    try:
        return bool(field_info(dotted)[0] is str)
    except ConfigError:  # an unknown key: load() names it with a suggestion
        return False


def find_config_file(cli_path: str | None, env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """The config file to read and how it was chosen: --config, ASSISTANT_CONFIG, user file, packaged default."""
    env = os.environ if env is None else env
    if cli_path is not None and not cli_path.strip():  # `--config "$CFG"` with CFG unset read another file unsaid
        raise ConfigError(
            "--config is empty (an unset shell variable?); give the path of a config.toml, or leave it out"
        )
    for given, how in ((cli_path, "--config"), (env.get("ASSISTANT_CONFIG"), "ASSISTANT_CONFIG")):
        if given:
            path = Path(given).expanduser()
            if path.is_dir():
                raise ConfigError(f"{path} (from {how}) is a folder; give the path of a config.toml file")
            if not path.exists():  # a pipe is fine: `--config <(cat base.toml local.toml)`
                raise ConfigError(
                    f"config file not found: {path} (from {how}); check the path, or leave {how} unset to use "
                    f"{user_config_path(env)} or the packaged default"
                )
            return path, how
    user = user_config_path(env)
    if user.is_file():
        return user, "user config"
    if user.is_symlink() or user.exists():  # the user's own file, unusable: the default would hide that
        what = "not a file" if user.exists() else f"a link to {os.readlink(user)}, which is missing"
        raise ConfigError(
            f"the user config {user} is {what}; make it a config.toml file, or remove it to use the packaged default"
        )
    return PACKAGED_CONFIG, "packaged default"


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "assistant" / "config.toml"


def load(cli_path: str | None = None, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Config:
    """Find, read and validate the configuration, then apply `--set` overrides. Raises ConfigError."""
    path, _how = find_config_file(cli_path, env)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # bounded: the path may be a device or a pipe that never ends
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES // 1024} KiB, too long for a config; check the path")
        table = tomllib.loads(data.decode("utf-8-sig"))  # -sig: a BOM (Windows editors) is not TOML
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}; fix the line it names") from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save it as UTF-8 TOML"
        ) from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror}; check its permissions") from e
    config = _build(table, str(path), source=str(path))
    for text in overrides:
        key, value = parse_override(text)
        config = config.replace({key: value}, origin=f"--set {text}")
    return config


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The settings as plain `{section: {key: value}}` (for `config.get` and `doctor`)."""
    return {name: dataclasses.asdict(getattr(config, name)) for name in SECTIONS}


def field_info(dotted: str) -> tuple[Any, Mapping[str, Any]]:
    """The type and metadata of `section.key` (raises ConfigError with a suggestion when unknown)."""
    section, _, key = dotted.partition(".")
    if section not in SECTIONS:
        raise ConfigError(f"unknown section `[{section}]`; {_suggest(section, list(SECTIONS))}")
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    if key not in fields:
        raise ConfigError(f"unknown key `{dotted}`; {_suggest(dotted, [f'{section}.{k}' for k in fields])}")
    return get_type_hints(SECTIONS[section])[key], fields[key].metadata
