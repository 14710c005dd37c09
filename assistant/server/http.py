"""Plain HTTP on the WebSocket port: health, the model list, OpenAI-style speech and transcription, the page.

server/ws.py hands every connection whose request is not a WebSocket upgrade to `serve` (asyncio streams). Each
request passes the WebSockets' own checks (server/auth.py: one token, one Origin rule), gets one response, and
the connection closes. Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a
message naming the problem and the fix. Model work runs through the `AudioService` at background priority.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import email.message
import email.parser
import email.policy
import importlib.resources
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from assistant import compute
from assistant.audio.files import decode_audio, encode_audio
from assistant.audio.format import CAPTURE_RATE, float32_to_int16, resample
from assistant.audio.tempo import MAX_RATE, MIN_RATE, TimeStretch
from assistant.config import ServerConfig
from assistant.errors import AssistantError, ConfigError
from assistant.server import auth
from assistant.server.controller import AudioService, Controller
from assistant.server.protocol import brief, lone_surrogate

log = logging.getLogger("assistant.server")

MAX_HEAD_BYTES = 16 * 1024  # request line and headers
HEAD_TOO_LARGE = f"the request head is over {MAX_HEAD_BYTES} bytes; send fewer or shorter headers"
MAX_BODY_BYTES = 25 * 1024 * 1024  # OpenAI's upload limit for transcriptions
MAX_JSON_BYTES = 64 * 1024  # a speech request: 4,096 characters of input (6 bytes each as \uXXXX) and a few fields
MAX_FORM_PARTS = 32  # a transcription form has a file and a few fields; parsing time grows with the parts
HEAD_TIMEOUT_S = 10.0  # a client gets this long to send its request head, and again for each MiB of body
# A client that takes none of the answer for this long is dropped: each one held a request slot (MAX_HTTP_REQUESTS)
# for good, and a paused player resumes well within it
SEND_TIMEOUT_S = 60.0
MAX_INPUT_CHARS = 4096  # OpenAI's limit for /v1/audio/speech input
PCM_RATE = 24_000  # OpenAI's `pcm` and the Realtime audio: 16-bit little-endian mono at 24 kHz
SPEECH_FIELDS = ("model", "input", "voice", "instructions", "response_format", "speed", "stream_format")
SPEECH_FORMATS = ("pcm", "wav", "mp3", "opus", "flac", "aac")
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
CONTENT_TYPES = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
PAGE_FILES = ("index.html", "app.js", "style.css")
MAX_CORS_HEADERS = 32  # header names a preflight may ask for
MAX_JSON_DEPTH = 8  # a speech request is an object holding values and `{"id": ...}`: 2 levels
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")  # RFC 9110
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}
REASONS |= {404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required"}
REASONS |= {413: "Content Too Large", 415: "Unsupported Media Type", 426: "Upgrade Required"}
REASONS |= {431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class HttpError(Exception):
    """A request the server refuses: status, a one-line message with the fix, the offending parameter."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}  # what the status requires beside the body (Allow, WWW-Authenticate)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    peer: str | None = None

    def get_all(self, name: str) -> list[str]:
        lower = name.lower()
        return [v for k, v in self.headers if k.lower() == lower]

    def header(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    stream: AsyncIterator[bytes] | None = None  # sent chunked after the head, when set
    headers: dict[str, str] = field(default_factory=dict)


def parse_head(head: bytes) -> Request:
    """The request line and headers (up to the blank line); HttpError 400 for anything malformed."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as e:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "the request head is not text") from e
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}; send `METHOD /path HTTP/1.1`")
    method, target, _ = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    if target[:8].lower().startswith(("http://", "https://")):  # absolute-form, which RFC 9112 3.2.2 says to accept
        url = urlsplit(target)
        target = f"{url.path or '/'}?{url.query}" if url.query else url.path or "/"
    path, _, query = target.partition("?")
    return Request(method.upper(), unquote(path), query, headers)


def _allowed_headers(requested: str | None) -> list[str]:
    """The request headers a preflight allows: Authorization, Content-Type and those the page asks for (an allowed
    origin's client library sends its own, e.g. the openai SDK's x-stainless-*; a header grants no access here)."""
    asked = [h.strip() for h in (requested or "").split(",")[:MAX_CORS_HEADERS]]
    named = [h for h in asked if h and len(h) <= 64 and set(h) <= _TOKEN_CHARS]
    return list(dict.fromkeys(["Authorization", "Content-Type", *named]))


def error_body(e: HttpError) -> bytes:
    kind = "invalid_request_error" if e.status < 500 else "server_error"
    detail = {"message": e.message, "type": kind, "param": e.param, "code": e.code}
    return json.dumps({"error": detail}).encode()


def refusal(status: int, message: str, extra: str = "") -> bytes:
    """A whole error answer that closes the connection, for a request refused before it is parsed."""
    body = error_body(HttpError(status, message))
    head = f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + f"Connection: close\r\n{extra}\r\n").encode() + body


def busy_response() -> bytes:
    """A whole 503 answer, for a connection refused before it is read."""
    return refusal(503, "too many HTTP requests at once; try again in a moment", "Retry-After: 1\r\n")


def head_too_large_response() -> bytes:
    """A whole 431 answer, for a request head over MAX_HEAD_BYTES."""
    return refusal(431, HEAD_TOO_LARGE)


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value).encode())


class HttpApp:
    """Routes one parsed request to its answer. Pure of sockets: `handle(request) -> Response`."""

    def __init__(
        self,
        cfg: ServerConfig,
        token: str,
        tls: bool,
        controller: Controller | None,
        audio: AudioService | None,
        started: float,
        realtime: Callable[[], dict[str, int]],
    ) -> None:
        self.cfg, self.token, self.tls = cfg, token, tls
        self.controller, self.audio = controller, audio
        self.started = started
        self.realtime = realtime

    async def handle(self, req: Request) -> Response:
        try:
            resp = await self._route(req)
        except HttpError as e:
            resp = Response(e.status, error_body(e), headers=dict(e.headers))
        origin = req.header("Origin")
        if origin is not None and auth.origin_allowed(origin, self.cfg.allowed_origins):
            resp.headers["Access-Control-Allow-Origin"] = origin  # an allowlisted page may read the answer
            resp.headers["Vary"] = "Origin"
        return resp

    def _check(self, req: Request, page: bool = False) -> None:
        refused = auth.refusal(self.cfg, self.token, req.get_all, req.query, req.peer, self.tls)
        if refused is not None and not (page and refused[0] == 401 and auth.is_loopback(req.peer)):
            # the page holds no secret, so this machine gets it without a token; it asks for one to connect
            if refused[0] == 401:  # RFC 9110 15.5.2: a 401 names the scheme that would be accepted
                raise HttpError(401, refused[1], code="unauthorized", headers={"WWW-Authenticate": "Bearer"})
            raise HttpError(refused[0], refused[1])

    async def _route(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        if req.method == "OPTIONS":
            return self._preflight(req)
        page = path.lstrip("/") or "index.html"
        if page in PAGE_FILES:
            self._method(req, "GET")
            self._check(req, page=True)
            return self._page(page)
        gets: dict[str, Callable[[], Response]] = {"/health": self._health, "/v1/models": self._models}
        if path in gets:
            self._method(req, "GET")
            self._check(req)
            return gets[path]()
        if path.startswith("/v1/models/"):
            self._method(req, "GET")
            self._check(req)
            return self._model(path.removeprefix("/v1/models/"))
        if path in ("/v1/audio/speech", "/v1/audio/transcriptions"):
            self._method(req, "POST")
            self._check(req)
            if self.audio is None:
                raise HttpError(503, "the speech endpoints are not enabled in this daemon; run `assistant run`")
            with compute.lowered(compute.Priority.BACKGROUND):  # the voice loop always goes first
                if path == "/v1/audio/speech":
                    return await self._speech(req, self.audio)
                return await self._transcription(req, self.audio)
        if path in ("/v1/control", "/v1/realtime"):
            raise HttpError(426, f"{path} is a WebSocket endpoint; connect with a WebSocket client")
        raise HttpError(
            404,
            f"unknown path {path[:100]}; see /health, /v1/models, /v1/audio/speech, /v1/audio/transcriptions, "
            "/ (the page), or the WebSockets /v1/control and /v1/realtime",
        )

    @staticmethod
    def _method(req: Request, allowed: str) -> None:
        if req.method != allowed and not (allowed == "GET" and req.method == "HEAD"):
            methods = "GET, HEAD" if allowed == "GET" else allowed  # RFC 9110 15.5.6: a 405 lists them in Allow
            raise HttpError(405, f"{req.path[:100]} takes {allowed}, not {req.method[:10]}", headers={"Allow": methods})

    def _preflight(self, req: Request) -> Response:
        origin = req.header("Origin")
        if origin is None:
            raise HttpError(
                403, "a CORS preflight (OPTIONS) needs an Origin header; programs can skip it and send the request"
            )
        if not auth.origin_allowed(origin, self.cfg.allowed_origins):
            raise HttpError(403, f"origin {origin[:100]} is not allowed; add it to server.allowed_origins")
        headers = {
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": ", ".join(_allowed_headers(req.header("Access-Control-Request-Headers"))),
            "Access-Control-Max-Age": "600",
        }
        return Response(204, b"", "text/plain", headers=headers)

    def _page(self, name: str) -> Response:
        data = importlib.resources.files("assistant.server").joinpath("web", name).read_bytes()
        ext = name[name.rfind(".") :]
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": "default-src 'self'; connect-src 'self'"}
        return Response(200, data, CONTENT_TYPES[ext], headers=headers)

    def _health(self) -> Response:
        out: dict[str, Any] = {"status": "ok", "uptime_s": round(time.monotonic() - self.started, 3)}
        if self.audio is not None:
            out |= self.audio.health()
            try:
                out["voices"] = self.audio.voices()
            except AssistantError as e:  # the voices folder went away: the daemon still runs, say so (not a 500)
                log.warning("health: %s", e)
                out |= {"status": "degraded", "voices": [], "problem": "the voice profiles cannot be read; see the log"}
        if self.controller is not None:
            status = self.controller.status()
            out["state"] = status.get("state")
            out["devices"] = {**out.get("devices", {}), "ok": status.get("device_ok")}
            if status.get("headless"):  # no sound card: the clients bring the audio
                out["devices"] |= {"input": None, "output": None}
        out["realtime"] = self.realtime()
        return json_response(out)

    def _model_list(self) -> list[dict[str, Any]]:
        if self.audio is None:
            return []
        ids = dict.fromkeys(self.audio.models().values())
        return [{"id": i, "object": "model", "created": int(self.started_wall), "owned_by": "assistant"} for i in ids]

    @property
    def started_wall(self) -> float:
        return time.time() - (time.monotonic() - self.started)

    def _models(self) -> Response:
        return json_response({"object": "list", "data": self._model_list()})

    def _model(self, name: str) -> Response:
        for m in self._model_list():
            if m["id"] == name:
                return json_response(m)
        raise HttpError(404, f"no model {name[:100]!r} here; GET /v1/models lists them", "model", "model_not_found")

    # ---- /v1/audio/speech --------------------------------------------------------------------------------

    async def _speech(self, req: Request, audio: AudioService) -> Response:
        body = _json_body(req)
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise HttpError(400, "`input` must be the text to speak (a non-empty string)", "input")
        if len(text) > MAX_INPUT_CHARS:
            raise HttpError(400, f"`input` has {len(text)} characters, over {MAX_INPUT_CHARS}; split it", "input")
        unknown = sorted(set(body) - set(SPEECH_FIELDS))
        if unknown:
            near = difflib.get_close_matches(unknown[0], SPEECH_FIELDS, 1)
            hint = f"did you mean {near[0]}? " if near else ""
            why = f"unknown field {unknown[0][:60]!r}; {hint}the fields are {', '.join(SPEECH_FIELDS)}"
            raise HttpError(400, why, unknown[0][:60])
        for key in ("model", "instructions"):
            if key in body and not isinstance(body[key], str):
                raise HttpError(400, f"`{key}` must be a string, got {json.dumps(body[key])[:60]}", key)
        if body.get("instructions", "").strip():  # the style is the voice profile's: a request cannot change it
            why = "instructions are not available here: a voice's style is its profile's `instruct`; pick that voice"
            raise HttpError(400, why + " or leave instructions out", "instructions")
        name = self._voice(body.get("voice"), audio)
        try:
            audio.check_voice(name)
        except ConfigError as e:  # a voice the model cannot speak is the voice's fault, not the input text's
            raise HttpError(400, str(e), "voice") from e
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_FORMATS or fmt == "aac":
            supported = ", ".join(f for f in SPEECH_FORMATS if f != "aac")
            why = f"response_format {brief(fmt)} is not available here; use one of {supported}"
            raise HttpError(400, why, "response_format")
        speed = body.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, int | float):
            why = f"speed must be a number from {MIN_RATE:g} to {MAX_RATE:g}, got {json.dumps(speed)[:60]}"
            raise HttpError(400, why, "speed")
        if not MIN_RATE <= speed <= MAX_RATE:
            raise HttpError(400, f"speed {speed!r} is out of range; use {MIN_RATE:g} to {MAX_RATE:g}", "speed")
        stream_format = body.get("stream_format", "audio")
        if stream_format not in ("audio", "sse"):
            raise HttpError(400, f"stream_format {brief(stream_format)} is unknown; use audio or sse", "stream_format")
        chunks = _pcm24k(audio.speak(text, name), audio.sample_rate, float(speed))
        first = await _first(chunks)  # bad input fails here, before the 200 goes out
        if stream_format == "sse":
            return Response(200, content_type="text/event-stream", stream=_sse(first, chunks, len(text)))
        if fmt == "pcm":
            return Response(200, content_type=CONTENT_TYPES["pcm"], stream=_bytes(first, chunks))
        if fmt == "wav":
            return Response(200, content_type=CONTENT_TYPES["wav"], stream=_wav(first, chunks))
        parts = [first] + [c async for c in chunks]
        whole = np.concatenate(parts)
        encoded = await asyncio.to_thread(encode_audio, whole, PCM_RATE, fmt)
        return Response(200, encoded, CONTENT_TYPES[fmt])

    @staticmethod
    def _voice(voice: Any, audio: AudioService) -> str | None:
        """The voice name asked for: a string (any unknown name is the default voice, as OpenAI clients send
        alloy and the like), or `{"id": ...}`, a custom voice that must exist here."""
        if voice is None or isinstance(voice, str):
            return voice
        voices = ", ".join(audio.voices())
        if not isinstance(voice, dict) or not isinstance(voice.get("id"), str):
            why = f'`voice` must be a voice name or {{"id": NAME}}, got {json.dumps(voice)[:60]}; voices: {voices}'
            raise HttpError(400, why, "voice")
        if not audio.known_voice(voice["id"]):
            why = f"unknown voice id {voice['id'][:60]!r}; use one of {voices} (or an alias from server.voice_aliases)"
            raise HttpError(400, why, "voice")
        return str(voice["id"])

    # ---- /v1/audio/transcriptions ------------------------------------------------------------------------

    async def _transcription(self, req: Request, audio: AudioService) -> Response:
        form = await asyncio.to_thread(_multipart, req)  # a 25 MiB body takes the parser ~0.5 s: not on the loop
        upload = form.get("file")
        if not isinstance(upload, tuple):
            raise HttpError(400, "no `file` part; send the audio as multipart/form-data field `file`", "file")
        fmt = form.get("response_format", "json")
        if fmt not in TRANSCRIPT_FORMATS:
            raise HttpError(
                400,
                f"response_format {brief(fmt)} is unknown; use one of {', '.join(TRANSCRIPT_FORMATS)}",
                "response_format",
            )
        temperature = form.get("temperature", "0")
        try:
            number = float(temperature) if isinstance(temperature, str) else None
        except ValueError:
            number = None
        if number is None or not 0.0 <= number <= 1.0:
            shown = temperature[:60] if isinstance(temperature, str) else "a file"
            raise HttpError(400, f"temperature must be a number from 0 to 1, got {shown!r}", "temperature")
        if form.get("stream") == "true":
            raise HttpError(400, "stream=true is not available for transcriptions here; leave it out", "stream")
        granularities = str(form.get("timestamp_granularities[]", "")).split(",")
        if "word" in granularities:
            why = "word timestamps are not available here; leave timestamp_granularities[] out (or ask for segment)"
            raise HttpError(400, why, "timestamp_granularities[]")
        if form.get("include[]"):
            why = f"include[] {str(form['include[]'])[:60]!r} is not available here (no token logprobs); leave it out"
            raise HttpError(400, why, "include[]")
        filename, data = upload
        try:
            shown = filename if len(filename) <= 60 else f"{filename[:57]}..."  # the message quotes it
            samples, rate = await asyncio.to_thread(decode_audio, data, shown or "file")
        except AssistantError as e:
            raise HttpError(400, str(e), "file") from e
        samples = await asyncio.to_thread(resample, samples, rate, CAPTURE_RATE)
        duration = len(samples) / CAPTURE_RATE
        text, language = await audio.transcribe(samples)
        language = language or str(form.get("language") or "")
        usage = {"type": "duration", "seconds": round(duration, 3)}
        if fmt == "text":
            return Response(200, (text + "\n").encode(), "text/plain; charset=utf-8")
        if fmt in ("srt", "vtt"):
            return Response(200, _subtitles(text, duration, fmt).encode(), "text/plain; charset=utf-8")
        if fmt == "verbose_json":
            segment = {
                "id": 0, "seek": 0, "start": 0.0, "end": round(duration, 3), "text": text, "tokens": [],
                "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0,
            }  # fmt: skip
            out = {"task": "transcribe", "language": language, "duration": round(duration, 3), "text": text}
            return json_response(out | {"segments": [segment] if text else [], "usage": usage})
        return json_response({"text": text, "usage": usage})


def _json_body(req: Request) -> dict[str, Any]:
    kind = (req.header("Content-Type") or "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HttpError(415, _wrong_type("the request as application/json", kind))
    if len(req.body) > MAX_JSON_BYTES:  # decoding and walking 25 MiB of JSON held the event loop for seconds
        why = f"the body is {len(req.body)} bytes, over the {MAX_JSON_BYTES} a speech request needs; send less"
        raise HttpError(413, why)
    too_deep = f"the body is nested more than {MAX_JSON_DEPTH} levels deep; send a flat JSON object"
    try:
        body = json.loads(req.body)
    except RecursionError as e:
        raise HttpError(400, too_deep) from e
    except (ValueError, UnicodeDecodeError) as e:
        raise HttpError(400, f"the body is not valid JSON ({e}); send a JSON object") from e
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    if _depth(body) > MAX_JSON_DEPTH:  # the messages quoting a value would overflow the stack repr-ing it
        raise HttpError(400, too_deep)
    bad = lone_surrogate(body)
    if bad is not None:
        why = f"the body has a lone UTF-16 surrogate (\\u{ord(bad):04x}) in a string; send valid Unicode text"
        raise HttpError(400, why)
    return body


def _depth(value: Any) -> int:
    """How many lists and objects deep decoded JSON `value` nests (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _wrong_type(want: str, kind: str) -> str:
    if not kind:
        return f"the request has no Content-Type header; send {want}"
    return f"send {want}, not {kind[:100]}"


def _multipart(req: Request) -> dict[str, str | tuple[str, bytes]]:
    """The fields of a multipart/form-data body: text fields as str, files as (filename, bytes)."""
    kind = req.header("Content-Type") or ""
    if not kind.lower().startswith("multipart/form-data"):
        raise HttpError(415, _wrong_type("the audio as multipart/form-data", kind.split(";")[0]))
    head = f"Content-Type: {kind}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    boundary = email.message.Message()
    boundary["Content-Type"] = kind
    delimiter = boundary.get_boundary()
    if delimiter and req.body.count(b"--" + delimiter.encode("latin-1", "replace")) > MAX_FORM_PARTS + 1:
        raise HttpError(400, f"the form has more than {MAX_FORM_PARTS} parts; send the file and a few fields")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + req.body)
    if not message.is_multipart():
        raise HttpError(400, "the multipart body has no parts; check its boundary")
    out: dict[str, str | tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        is_file = filename is not None or name == "file"
        if name in out and not name.endswith("[]"):  # which one counts would be a guess
            raise HttpError(400, f"the form has more than one `{name[:60]}` part; send it once", name[:60])
        if is_file:
            out[name] = (filename or "", data)
        else:
            text, before = data.decode("utf-8", "replace"), out.get(name)
            # a list field (`timestamp_granularities[]`) comes as one part per value: keep them all
            out[name] = f"{before},{text}" if name.endswith("[]") and isinstance(before, str) else text
    return out


async def _pcm24k(chunks: AsyncIterator[np.ndarray], rate: int, speed: float) -> AsyncIterator[np.ndarray]:
    """The service's float32 chunks at `rate` as float32 at 24 kHz, `speed` times faster at the same pitch."""
    stretch = TimeStretch(speed, rate) if speed != 1.0 else None
    try:
        async for chunk in chunks:
            x = stretch.push(chunk) if stretch is not None else chunk
            if len(x):
                yield resample(x, rate, PCM_RATE) if rate != PCM_RATE else x
        if stretch is not None and len(tail := stretch.flush()):
            yield resample(tail, rate, PCM_RATE) if rate != PCM_RATE else tail
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _first(chunks: AsyncIterator[np.ndarray]) -> np.ndarray:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return np.zeros(0, np.float32)
    except AssistantError as e:
        raise HttpError(400, str(e), "input") from e


def _int16(x: np.ndarray) -> bytes:
    return float32_to_int16(x).astype("<i2").tobytes()


async def _bytes(first: np.ndarray, rest: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
    yield _int16(first)
    async for chunk in rest:
        yield _int16(chunk)


async def _wav(first: np.ndarray, rest: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
    """A WAV stream: a header whose sizes say "unknown" (0xFFFFFFFF, as streaming encoders write), then PCM."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, PCM_RATE, PCM_RATE * 2, 2, 16)
    yield b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data"
    yield struct.pack("<I", unknown)
    async for data in _bytes(first, rest):
        yield data


async def _sse(first: np.ndarray, rest: AsyncIterator[np.ndarray], chars: int) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE stream: speech.audio.delta events (base64 pcm), then speech.audio.done with usage."""
    samples = 0
    async for data in _bytes(first, rest):
        samples += len(data) // 2
        yield b"data: " + json.dumps({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}).encode()
        yield b"\n\n"
    # our "tokens": input characters and 12.5 Hz codec frames, what the models actually consumed and produced
    out_tokens = round(samples / PCM_RATE * 12.5)
    usage = {"input_tokens": chars, "output_tokens": out_tokens, "total_tokens": chars + out_tokens}
    yield b"data: " + json.dumps({"type": "speech.audio.done", "usage": usage}).encode() + b"\n\n"


def _subtitles(text: str, duration: float, fmt: str) -> str:
    def stamp(s: float) -> str:
        ms = round(s * 1000)
        sep = "," if fmt == "srt" else "."
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"

    cue = f"{stamp(0.0)} --> {stamp(duration)}\n{text}\n"
    return f"1\n{cue}" if fmt == "srt" else f"WEBVTT\n\n{cue}"


# ---- the connection ------------------------------------------------------------------------------------------


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, app: HttpApp) -> None:
    """Read one request, answer it, close. Never raises: a failure is logged and the socket dropped."""
    peername = writer.get_extra_info("peername")
    peer = peername[0] if isinstance(peername, tuple) else None
    try:
        try:
            req = await _read(reader, peer, writer)
        except HttpError as e:
            await _send(writer, Response(e.status, error_body(e)), head_only=False)
            return
        resp = await app.handle(req)
        await _send(writer, resp, head_only=req.method == "HEAD")
    except _Stalled:
        log.info("dropped an HTTP client that read none of its answer for %g s", SEND_TIMEOUT_S)
        writer.transport.abort()  # a close would wait for it to read what is queued
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client went away; nothing to answer
    except Exception:
        log.exception("internal error answering an HTTP request")
        with contextlib.suppress(Exception):
            await _send(writer, Response(500, error_body(HttpError(500, "internal error; see the daemon log"))))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SEND_TIMEOUT_S):  # the close flushes what is queued: not forever
                await writer.wait_closed()
        writer.transport.abort()  # a no-op once closed


async def _read(reader: asyncio.StreamReader, peer: str | None, writer: asyncio.StreamWriter) -> Request:
    try:
        async with asyncio.timeout(HEAD_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as e:
        raise HttpError(431, HEAD_TOO_LARGE) from e
    except TimeoutError as e:
        raise HttpError(408, f"no complete request head within {HEAD_TIMEOUT_S:g} s") from e
    req = parse_head(head[:-4])
    coding = req.header("Transfer-Encoding")
    if coding is not None:
        if coding.strip().lower() != "chunked":
            raise HttpError(400, f"Transfer-Encoding {coding[:40]!r} is not supported; send chunked or Content-Length")
        if req.header("Content-Length") is not None:  # which one frames the body would be a guess
            raise HttpError(400, "the request has both Transfer-Encoding and Content-Length; send one")
        _continue(req, writer)
        body = await _read_chunked(reader)
        return Request(req.method, req.path, req.query, req.headers, body, peer)
    lengths = req.get_all("Content-Length")
    if len(set(lengths)) > 1:  # which one frames the body would be a guess (RFC 9112 6.3)
        raise HttpError(400, "the request has Content-Length headers that differ; send one")
    length_text = lengths[0] if lengths else "0"
    if not (length_text.isascii() and length_text.isdigit()):  # str.isdigit also takes "²", which int() refuses
        raise HttpError(400, f"Content-Length {length_text[:20]!r} is not a number; send the body's size in bytes")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, f"the body is {length} bytes, over {MAX_BODY_BYTES}; send a shorter file")
    body = b""
    if length:
        _continue(req, writer)
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S * (1 + length / 1_048_576)):
                body = await reader.readexactly(length)
        except TimeoutError as e:
            raise HttpError(408, "the request body arrived too slowly; send it again") from e
    return Request(req.method, req.path, req.query, req.headers, body, peer)


def _continue(req: Request, writer: asyncio.StreamWriter) -> None:
    """Answer `Expect: 100-continue`: the client waits for it before it sends the body (curl for uploads over
    1 MiB, and it waits 1 s before giving up)."""
    if (req.header("Expect") or "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A `Transfer-Encoding: chunked` body (extensions and trailers skipped), at most MAX_BODY_BYTES, each chunk
    within HEAD_TIMEOUT_S plus that per MiB; HttpError naming a malformed chunk."""
    parts: list[bytes] = []
    total = 0
    try:
        while True:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                line = await reader.readuntil(b"\r\n")
            size_text = line[:-2].split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                size = -1
            if size < 0 or len(size_text) > 16:
                shown = size_text[:20].decode("latin-1")
                raise HttpError(400, f"chunk size {shown!r} is not a hexadecimal number; send a valid chunked body")
            if size == 0:
                async with asyncio.timeout(HEAD_TIMEOUT_S):
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, unused
                        pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise HttpError(413, f"the body is over {MAX_BODY_BYTES} bytes; send a shorter file")
            async with asyncio.timeout(HEAD_TIMEOUT_S * (1 + size / 1_048_576)):
                data = await reader.readexactly(size + 2)
            if data[-2:] != b"\r\n":
                raise HttpError(400, "a chunk does not end where its size says; send a valid chunked body")
            parts.append(data[:-2])
    except TimeoutError as e:
        raise HttpError(408, "the request body arrived too slowly; send it again") from e
    except asyncio.LimitOverrunError as e:
        raise HttpError(400, "a chunk size line is too long; send a valid chunked body") from e


class _Stalled(ConnectionError):
    """The client took none of the answer for SEND_TIMEOUT_S."""


async def _drain(writer: asyncio.StreamWriter) -> None:
    """Wait until the client has taken what is queued, at most SEND_TIMEOUT_S; _Stalled after that."""
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await writer.drain()
    except TimeoutError as e:
        raise _Stalled from e


async def _send(writer: asyncio.StreamWriter, resp: Response, head_only: bool = False) -> None:
    lines = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}", f"Content-Type: {resp.content_type}"]
    lines += [f"{k}: {v}" for k, v in resp.headers.items()]
    lines += ["Connection: close", "X-Content-Type-Options: nosniff"]
    if resp.stream is None:
        lines.append(f"Content-Length: {len(resp.body)}")
    else:
        lines.append("Transfer-Encoding: chunked")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if head_only:
        await _drain(writer)
        return
    if resp.stream is None:
        writer.write(resp.body)
        await _drain(writer)
        return
    try:
        async for data in resp.stream:
            if data:
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                await _drain(writer)  # a client that stops reading stops the synthesis here
        writer.write(b"0\r\n\r\n")
        await _drain(writer)
    except (ConnectionError, asyncio.IncompleteReadError):
        raise
    except Exception:
        # the 200 went out: the body ends without its last chunk, which clients report as an incomplete body
        log.exception("the answer failed after it began; its body ends unfinished")
        writer.close()  # what was sent still arrives (abort would drop it); the terminating chunk never does
    finally:
        aclose = getattr(resp.stream, "aclose", None)
        if aclose is not None:
            await aclose()
