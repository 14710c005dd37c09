"""The OpenAI Realtime-compatible subset (GA event names; old beta shapes accepted): JSON <-> dataclasses, pure.

Client events are decoded into frozen dataclasses by `decode_client_event` (WireError naming the problem);
server events are frozen dataclasses too (`ServerEvent`), encoded only by `encode_server_event`, which for clients
that connect with `OpenAI-Beta: realtime=v1` uses the beta names where they differ (BETA_NAMES).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import numpy as np

from assistant.server.protocol import DEFAULT_LIMITS, Limits, WireError, clip, parse_json

MAX_ID_CHARS = 128  # event, item and response ids and voice names a client may send
RATE = 24_000  # the only audio format: pcm16 mono 24 kHz, little-endian ("audio/pcm" rate 24000, beta "pcm16")
SAMPLE_BYTES = 2


@dataclass(frozen=True)
class TurnDetection:
    """server_vad settings; the other fields of the OpenAI object are accepted and ignored."""

    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True


@dataclass(frozen=True)
class SessionUpdate:
    """Only the fields present change; `turn_detection_given` tells a null turn_detection from an absent one."""

    instructions: str | None = None
    voice: str | None = None
    turn_detection_given: bool = False
    turn_detection: TurnDetection | None = None
    audio_output: bool | None = None  # output_modalities ["audio"] (True) or ["text"] (False)
    type: Literal["session.update"] = "session.update"
    event_id: str | None = None


@dataclass(frozen=True)
class AudioAppend:
    audio: np.ndarray = field(compare=False)  # int16 mono at 24 kHz
    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    event_id: str | None = None


@dataclass(frozen=True)
class AudioCommit:
    type: Literal["input_audio_buffer.commit"] = "input_audio_buffer.commit"
    event_id: str | None = None


@dataclass(frozen=True)
class AudioClear:
    type: Literal["input_audio_buffer.clear"] = "input_audio_buffer.clear"
    event_id: str | None = None


@dataclass(frozen=True)
class ItemCreate:
    """A user text message added to the conversation (no reply until response.create)."""

    text: str
    item_id: str | None = None
    type: Literal["conversation.item.create"] = "conversation.item.create"
    event_id: str | None = None


@dataclass(frozen=True)
class ItemTruncate:
    item_id: str
    content_index: int
    audio_end_ms: int
    type: Literal["conversation.item.truncate"] = "conversation.item.truncate"
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseCreate:
    instructions: str | None = None
    type: Literal["response.create"] = "response.create"
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseCancel:
    response_id: str | None = None
    type: Literal["response.cancel"] = "response.cancel"
    event_id: str | None = None


ClientEvent = (
    SessionUpdate | AudioAppend | AudioCommit | AudioClear | ItemCreate | ItemTruncate | ResponseCreate | ResponseCancel
)
CLIENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
)


# ---- decoding ----------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A client value quoted in an error message, cut short (it may be megabytes)."""
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, dict | list):
        return f"{_json_kind(value)} of {len(value)} entries"
    return clip(str(value))


def _json_kind(value: Any) -> str:
    return "an object" if isinstance(value, dict) else "a list"


class _Reader:
    """Typed access to a JSON object with errors that name the full path of a bad field."""

    def __init__(self, obj: dict[str, Any], path: str, event_id: str | None) -> None:
        self.obj, self.path, self.event_id = obj, path, event_id

    def fail(self, name: str, want: str, got: Any = None) -> WireError:
        shown = "missing" if got is None else f"got {_show(got)}"
        return WireError("invalid_value", f"`{self.path}.{name}` must be {want}, {shown}", self.event_id)

    def text(self, name: str, required: bool = False, max_chars: int | None = None) -> str | None:
        value = self.obj.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.fail(name, "a string", value)
        if max_chars is not None and len(value) > max_chars:
            raise WireError(
                "string_above_max_length",
                f"`{self.path}.{name}` has {len(value)} characters, over the {max_chars} allowed; send a shorter text",
                self.event_id,
            )
        return value

    def integer(self, name: str, lo: int = 0) -> int:
        value = self.obj.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(name, f"an integer >= {lo}", value)
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.obj.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, "true or false", value)
        return value

    def sub(self, name: str) -> _Reader | None:
        value = self.obj.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(name, "an object", value)
        return _Reader(value, f"{self.path}.{name}", self.event_id)


def decode_client_event(data: str | bytes, max_bytes: int = 1 << 20, limits: Limits = DEFAULT_LIMITS) -> ClientEvent:
    """Parse and validate one Realtime client event (raises WireError naming the problem and the fix).

    Text that reaches the model is bounded here: item text by `limits.text_chars`, instructions by
    `limits.instructions_chars` (error code `string_above_max_length`, as OpenAI names it).
    """
    obj = parse_json(data, max_bytes)
    event_id = obj.get("event_id")
    if event_id is not None and (not isinstance(event_id, str) or len(event_id) > MAX_ID_CHARS):
        raise WireError(
            "invalid_value", f"`event_id` must be a string of at most {MAX_ID_CHARS} characters, got {_show(event_id)}"
        )
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise WireError(
            "unknown_type",
            f"unsupported event type {_show(kind)}; this server accepts {', '.join(CLIENT_TYPES)}",
            event_id,
        )
    r = _Reader(obj, kind, event_id)
    if kind == "session.update":
        session = r.sub("session")
        if session is None:
            raise r.fail("session", "an object")
        return _session_update(session, event_id, limits)
    if kind == "input_audio_buffer.append":
        return AudioAppend(decode_audio(r.text("audio", required=True) or "", event_id), event_id=event_id)
    if kind == "input_audio_buffer.commit":
        return AudioCommit(event_id=event_id)
    if kind == "input_audio_buffer.clear":
        return AudioClear(event_id=event_id)
    if kind == "conversation.item.create":
        item = r.sub("item")
        if item is None:
            raise r.fail("item", "an object")
        return _item_create(item, event_id, limits)
    if kind == "conversation.item.truncate":
        return ItemTruncate(
            r.text("item_id", required=True) or "",
            r.integer("content_index"),
            r.integer("audio_end_ms"),
            event_id=event_id,
        )
    if kind == "response.create":
        response = r.sub("response")
        instructions = response.text("instructions", max_chars=limits.instructions_chars) if response else None
        if response is not None:
            _check_modalities(response)
        return ResponseCreate(instructions, event_id=event_id)
    return ResponseCancel(r.text("response_id"), event_id=event_id)


def decode_audio(text: str, event_id: str | None = None) -> np.ndarray:
    """Base64 pcm16 little-endian mono -> int16 samples (WireError for bad base64, odd length or nothing)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError(
            "invalid_audio", f"`audio` is not valid base64 ({e}); send base64 of pcm16 bytes", event_id
        ) from e
    if len(raw) == 0:
        raise WireError("invalid_audio", "`audio` is empty; append at least one pcm16 sample", event_id)
    if len(raw) % SAMPLE_BYTES:
        raise WireError(
            "invalid_audio",
            f"`audio` has {len(raw)} bytes, not a whole number of 16-bit samples; send pcm16 mono at 24 kHz",
            event_id,
        )
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def encode_audio(samples: np.ndarray) -> str:
    """float32 [-1, 1] or int16 samples -> base64 pcm16 little-endian."""
    if samples.dtype != np.int16:
        samples = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    return base64.b64encode(samples.astype("<i2").tobytes()).decode("ascii")


def _check_format(fmt: Any, path: str, event_id: str | None) -> None:
    ok = fmt in (None, "pcm16") or (
        isinstance(fmt, dict) and fmt.get("type") in ("audio/pcm", None) and fmt.get("rate", RATE) == RATE
    )
    if not ok:
        raise WireError(
            "invalid_value",
            f'`{path}` = {_show(fmt)} is not supported; use {{"type": "audio/pcm", "rate": 24000}} (beta: "pcm16")',
            event_id,
        )


def _check_modalities(r: _Reader) -> bool | None:
    for name in ("output_modalities", "modalities"):  # GA, beta
        value = r.obj.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not value or not set(value) <= {"audio", "text"}:
            raise r.fail(name, 'a list of "audio" and/or "text"', value)
        return "audio" in value
    return None


def _turn_detection(value: Any, path: str, event_id: str | None) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type", "server_vad") != "server_vad":
        raise WireError(
            "invalid_value",
            f'`{path}` = {_show(value)} is not supported; use {{"type": "server_vad"}} or null',
            event_id,
        )
    r = _Reader(value, path, event_id)
    silence = r.integer("silence_duration_ms") if "silence_duration_ms" in value else TurnDetection.silence_duration_ms
    return TurnDetection(silence, r.flag("create_response", True), r.flag("interrupt_response", True))


def _session_update(s: _Reader, event_id: str | None, limits: Limits) -> SessionUpdate:
    kind = s.obj.get("type", "realtime")
    if kind != "realtime":
        raise WireError(
            "invalid_value",
            f'`session.update.session.type` = {_show(kind)} is not supported; use "realtime"',
            event_id,
        )
    audio = s.sub("audio")
    inp = audio.sub("input") if audio else None
    out = audio.sub("output") if audio else None
    # GA nests formats, voice and turn detection under audio.input/output; beta has them flat on the session.
    _check_format(inp.obj.get("format") if inp else None, "session.audio.input.format", event_id)
    _check_format(out.obj.get("format") if out else None, "session.audio.output.format", event_id)
    _check_format(s.obj.get("input_audio_format"), "session.input_audio_format", event_id)
    _check_format(s.obj.get("output_audio_format"), "session.output_audio_format", event_id)
    voice = (out.text("voice", max_chars=MAX_ID_CHARS) if out else None) or s.text("voice", max_chars=MAX_ID_CHARS)
    given, detection = False, None
    for holder, path in ((inp, "session.audio.input.turn_detection"), (s, "session.turn_detection")):
        if holder is not None and "turn_detection" in holder.obj:
            given, detection = True, _turn_detection(holder.obj["turn_detection"], path, event_id)
    instructions = s.text("instructions", max_chars=limits.instructions_chars)
    return SessionUpdate(instructions, voice, given, detection, _check_modalities(s), event_id=event_id)


def _item_create(item: _Reader, event_id: str | None, limits: Limits) -> ItemCreate:
    if item.obj.get("type", "message") != "message" or item.obj.get("role") != "user":
        raise WireError(
            "invalid_value",
            'only user text messages can be created: {"type": "message", "role": "user", "content": '
            '[{"type": "input_text", "text": "..."}]}',
            event_id,
        )
    content = item.obj.get("content")
    if not isinstance(content, list) or not content:
        raise item.fail("content", 'a non-empty list of {"type": "input_text", "text": ...}', content)
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "text"):
            raise item.fail(f"content[{i}]", '{"type": "input_text", "text": ...}', part)
        text = _Reader(part, f"{item.path}.content[{i}]", event_id).text("text", required=True)
        texts.append(text or "")
    text = " ".join(texts)
    if len(text) > limits.text_chars:
        raise WireError(
            "string_above_max_length",
            f"`{item.path}.content` has {len(text)} characters of text, over the {limits.text_chars} allowed; "
            "send a shorter message",
            event_id,
        )
    return ItemCreate(text, item.text("id", max_chars=MAX_ID_CHARS), event_id=event_id)


# ---- server events ---------------------------------------------------------------------------------------
# One frozen dataclass per server event; `encode_server_event` is the only place they become JSON.


@dataclass(frozen=True)
class SessionCreated:
    session: dict[str, Any]
    type: Literal["session.created"] = "session.created"


@dataclass(frozen=True)
class SessionUpdated:
    session: dict[str, Any]
    type: Literal["session.updated"] = "session.updated"


@dataclass(frozen=True)
class BufferCommitted:
    previous_item_id: str | None
    item_id: str
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"


@dataclass(frozen=True)
class BufferCleared:
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"


@dataclass(frozen=True)
class ItemAdded:
    previous_item_id: str | None
    item: dict[str, Any]
    type: Literal["conversation.item.added"] = "conversation.item.added"


@dataclass(frozen=True)
class ItemDone:
    previous_item_id: str | None
    item: dict[str, Any]
    type: Literal["conversation.item.done"] = "conversation.item.done"


@dataclass(frozen=True)
class ItemTruncated:
    item_id: str
    content_index: int
    audio_end_ms: int
    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"


@dataclass(frozen=True)
class TranscriptionDelta:
    """Droppable: the `completed` event that follows carries the whole transcript."""

    item_id: str
    content_index: int
    delta: str
    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta"
    )


@dataclass(frozen=True)
class TranscriptionCompleted:
    item_id: str
    content_index: int
    transcript: str
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )


@dataclass(frozen=True)
class ResponseCreated:
    response: dict[str, Any]
    type: Literal["response.created"] = "response.created"


@dataclass(frozen=True)
class OutputItemAdded:
    response_id: str
    output_index: int
    item: dict[str, Any]
    type: Literal["response.output_item.added"] = "response.output_item.added"


@dataclass(frozen=True)
class OutputItemDone:
    response_id: str
    output_index: int
    item: dict[str, Any]
    type: Literal["response.output_item.done"] = "response.output_item.done"


@dataclass(frozen=True)
class ContentPartAdded:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: dict[str, Any]
    type: Literal["response.content_part.added"] = "response.content_part.added"


@dataclass(frozen=True)
class ContentPartDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: dict[str, Any]
    type: Literal["response.content_part.done"] = "response.content_part.done"


@dataclass(frozen=True)
class AudioTranscriptDelta:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str
    type: Literal["response.output_audio_transcript.delta"] = "response.output_audio_transcript.delta"


@dataclass(frozen=True)
class AudioTranscriptDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    transcript: str
    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"


@dataclass(frozen=True)
class TextDelta:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str
    type: Literal["response.output_text.delta"] = "response.output_text.delta"


@dataclass(frozen=True)
class TextDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    text: str
    type: Literal["response.output_text.done"] = "response.output_text.done"


@dataclass(frozen=True)
class AudioDelta:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str  # base64 pcm16 24 kHz
    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"


@dataclass(frozen=True)
class AudioDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    type: Literal["response.output_audio.done"] = "response.output_audio.done"


@dataclass(frozen=True)
class ResponseDoneEvent:
    response: dict[str, Any]
    type: Literal["response.done"] = "response.done"


@dataclass(frozen=True)
class ErrorDetail:
    """The `error` object of an error event; `message` is for people and never repeats unbounded input."""

    code: str
    message: str
    event_id: str | None = None
    type: str = "invalid_request_error"  # or "server_error"
    param: None = None


@dataclass(frozen=True)
class Error:
    error: ErrorDetail
    type: Literal["error"] = "error"


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | BufferCommitted
    | BufferCleared
    | SpeechStarted
    | SpeechStopped
    | ItemAdded
    | ItemDone
    | ItemTruncated
    | TranscriptionDelta
    | TranscriptionCompleted
    | ResponseCreated
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | AudioTranscriptDelta
    | AudioTranscriptDone
    | TextDelta
    | TextDone
    | AudioDelta
    | AudioDone
    | ResponseDoneEvent
    | Error
)
SERVER_EVENTS: tuple[type, ...] = get_args(ServerEvent)
DROPPABLE = (TranscriptionDelta,)  # a slow client may lose these (the completed event repeats their text)

# Beta names of the server events whose GA names differ.
BETA_NAMES = {
    "conversation.item.added": "conversation.item.created",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}


def server_event_dict(ev: ServerEvent, event_id: str, beta: bool = False) -> dict[str, Any]:
    """The JSON object of a server event: `type` (beta name if asked), `event_id`, then its fields in order."""
    body = {f.name: getattr(ev, f.name) for f in fields(ev) if f.name != "type"}
    if isinstance(ev, Error):
        d = ev.error
        body["error"] = {"type": d.type, "code": d.code, "message": d.message, "param": d.param, "event_id": d.event_id}
    name = BETA_NAMES.get(ev.type, ev.type) if beta else ev.type
    return {"type": name, "event_id": event_id, **body}


def encode_server_event(ev: ServerEvent, event_id: str, beta: bool = False) -> str:
    """One JSON text frame."""
    return json.dumps(server_event_dict(ev, event_id, beta), separators=(",", ":"))


@dataclass
class ServerEvents:
    """Numbers server events (`event_N`) and encodes them for one connection (beta names if `beta`)."""

    beta: bool = False
    count: int = 0

    def encode(self, ev: ServerEvent) -> str:
        self.count += 1
        return encode_server_event(ev, f"event_{self.count}", self.beta)

    def error(self, code: str, message: str, event_id: str | None = None, kind: str = "invalid_request_error") -> str:
        return self.encode(Error(ErrorDetail(code, message, event_id, kind)))


def session_object(
    session_id: str, instructions: str, voice: str, detection: TurnDetection | None, audio_output: bool
) -> dict[str, Any]:
    """The effective session as session.created/updated report it (GA shape)."""
    fmt = {"type": "audio/pcm", "rate": RATE}
    turn = (
        None
        if detection is None
        else {
            "type": "server_vad",
            "silence_duration_ms": detection.silence_duration_ms,
            "create_response": detection.create_response,
            "interrupt_response": detection.interrupt_response,
        }
    )
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": "assistant",
        "output_modalities": ["audio"] if audio_output else ["text"],
        "instructions": instructions,
        "audio": {
            "input": {"format": fmt, "turn_detection": turn, "transcription": None, "noise_reduction": None},
            "output": {"format": fmt, "voice": voice, "speed": 1.0},
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
    }


def message_item(item_id: str, role: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": role,
        "status": status,
        "content": content,
    }


def response_object(
    response_id: str, status: str, output: list[dict[str, Any]], audio: bool = True, reason: str | None = None
) -> dict[str, Any]:
    details = None if reason is None else {"type": status, "reason": reason}
    return {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": details,
        "output": output,
        "conversation_id": "conv_1",
        "output_modalities": ["audio"] if audio else ["text"],
        "usage": None,
    }
