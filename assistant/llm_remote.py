"""The thinking step on another machine: a chat with any OpenAI-compatible server, streamed over HTTP.

`RemoteChat` has the chat surface of `assistant.llm.Chat` (respond / finish_turn / reset / set_system_prompt /
history, and the tool and memory operations set_tools / continue_with_results / last_turn / restore), so the
conversation does not know which backend it has. It keeps the history here and sends it whole
each turn (the server's own prompt cache reuses the prefix), trimmed to `llm.history_tokens` by a token estimate.
The answer streams from `POST {base_url}/chat/completions` with `stream: true` (server-sent events) through the
chat's own pooled `httpx2.Client`. Closing the answer's generator, or `cancel()` from any thread, ends the HTTP
stream at once: cancel() shuts down the socket of the request in flight, which wakes a read blocked in any phase
(also before the response's headers) and tells the server at once, so it stops generating. Tool calls use the
OpenAI `tools` format: the server parses them, so the text deltas are speech only (`tool_format` is None: no call
detector is needed) and the calls of an answer are in `tool_calls` (the tools' `ToolCall` values) once its stream
has ended.

A server that is down, slow or answers garbage raises `ModelError` with a one-line message naming the server and
the fix; nothing is kept of that turn but the user's message, and the next `respond()` simply tries again.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2

from assistant.config import LlmConfig
from assistant.errors import ConfigError, InputError, ModelError
from assistant.llm import TRUNCATE_TO, History, Message, close_answer
from assistant.tools.calls import AUTO, ToolCall, ToolChoice

log = logging.getLogger("assistant.llm_remote")

# Token estimate for trimming: ~4 characters per token for English BPE vocabularies, plus the chat template's
# per-message framing (role markers, separators). Overestimating only trims a little early.
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
ERROR_BODY_CHARS = 200  # how much of a failed response's body goes into the one-line error


@dataclass
class RemoteStats:
    """What the last turn cost, as far as the client can tell."""

    prompt_tokens_estimate: int = 0
    dropped_messages: int = 0
    first_token_s: float | None = None  # request sent -> first text or tool-call delta (the remote TTFT)
    total_s: float | None = None
    deltas: int = 0
    server_prompt_tokens: int | None = None  # from the server's usage report, when it sends one
    server_completion_tokens: int | None = None


def estimate_tokens(text: str) -> int:
    """A server-independent token estimate of `text` in a chat message."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS


def read_api_key(cfg: LlmConfig, env: Mapping[str, str]) -> str | None:
    """The API key from `llm.api_key_env` or `llm.api_key_file`; None when neither is set. Raises ConfigError."""
    if cfg.api_key_env:
        key = env.get(cfg.api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"llm.api_key_env names ${cfg.api_key_env}, which is not set; export it or clear llm.api_key_env"
            )
        return key
    if cfg.api_key_file:
        path = Path(cfg.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"llm.api_key_file {path} cannot be read ({e.strerror}); check the path") from e
        except UnicodeDecodeError as e:  # was a traceback
            raise ConfigError(f"llm.api_key_file {path} is not UTF-8 text; put the key in it as plain text") from e
        if not key:
            raise ConfigError(f"llm.api_key_file {path} is empty; put the key in it or clear llm.api_key_file")
        return key
    return None


def _has_host(url: str) -> bool:
    """`url` names a host and, if any, a port in range ("http://" or "http://host:80a" failed only at a turn)."""
    try:
        parts = urlsplit(url)
        return bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a port out of range or not a number, an unclosed IPv6 bracket
        return False


class RemoteChat:
    """A conversation with an OpenAI-compatible chat server: history, streaming answers, tool calls.

    Not thread-safe except `cancel()`. `respond()` returns a generator whose `next()` blocks until the next text
    delta arrives (or the stream ends); it never touches MLX, so the caller may step it on any one thread.
    """

    blocks_on_network = True  # the conversation steps it in a thread of its own, not on the MLX compute thread

    def __init__(self, cfg: LlmConfig, api_key: str | None = None, tools: Sequence[Mapping[str, Any]] = ()) -> None:
        if not cfg.base_url.startswith(("http://", "https://")) or not _has_host(cfg.base_url):
            raise ConfigError(
                f"llm.base_url = {cfg.base_url!r} is not an http(s) URL with a host (and a numeric port, if any); "
                "e.g. http://127.0.0.1:8080/v1"
            )
        root = cfg.base_url.rstrip("/")
        if root.endswith(("/chat/completions", "/completions")):  # every turn would POST to .../chat/completions twice
            fixed = root.removesuffix("/completions").removesuffix("/chat")
            raise ConfigError(
                f"llm.base_url = {cfg.base_url!r} names the endpoint; give the API root the endpoints hang from, "
                f"e.g. {fixed}"
            )
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._history = History()  # owned here: others read `history` and ask for changes
        self.stats = RemoteStats()
        self.tools: list[dict[str, Any]] = [dict(t) for t in tools]
        self.tool_calls: list[ToolCall] = []  # made by the last answer; answer them with continue_with_results()
        self.tool_choice = AUTO
        self._system = cfg.system_prompt
        self._temperature = cfg.temperature  # a Realtime session may set its own
        self._api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx2.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s)
        # A pool of its own: every connection in it is made by this chat's requests, so _trace sees each socket.
        self._client = httpx2.Client(timeout=timeout, headers=headers)
        self._answer: list[str] | None = None
        self._complete = False
        self._active: Iterator[str] | None = None
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()  # of the pool's connections
        self._lock = threading.Lock()  # guards _sockets, _in_flight, _cancelled (stepping thread vs cancel())
        self._in_flight = False  # a request is on the wire
        self._cancelled = False

    @classmethod
    def load(cls, cfg: LlmConfig, env: Mapping[str, str] | None = None) -> RemoteChat:
        """A chat against `llm.base_url` with the key from the environment or file. Connects lazily."""
        import os

        return cls(cfg, read_api_key(cfg, os.environ if env is None else env))

    def new_conversation(self) -> RemoteChat:
        """A fresh conversation against the same server with the same key (and a connection pool of its own)."""
        return RemoteChat(self.cfg, self._api_key, self.tools)

    def close(self) -> None:
        """End the answer in progress and close the connection pool; safe from any thread (a client hanging up
        while a step runs elsewhere: its generator is left to that step, which ends at once)."""
        self.cancel()
        self._client.close()

    # ---- conversation state --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the conversation."""
        self._cancel()
        self._answer = None
        self.tool_calls = []
        self._history.replace([])

    @property
    def history(self) -> list[Message]:
        """The conversation as recorded (a copy: change it through the methods of this class)."""
        return self._history.messages()

    def set_system_prompt(self, text: str) -> None:
        """Use `text` as the system prompt from the next turn on ("" = none)."""
        self._system = text.strip()

    @property
    def system_prompt(self) -> str:
        return self._system

    def set_temperature(self, value: float) -> None:
        """Ask the server to sample at `value` from the next request on."""
        self._temperature = value

    def set_tools(self, schemas: Sequence[Mapping[str, Any]], choice: ToolChoice = AUTO) -> bool:
        """Offer these tools (OpenAI format: {"type": "function", "function": {name, description, parameters}}) from
        the next request on; [] = none; `choice` is sent as the request's tool_choice. Always True: the server
        decides whether its model can call them."""
        self.tools = [dict(t) for t in schemas]
        self.tool_choice = choice if self.tools else AUTO
        return True

    @property
    def can_call_tools(self) -> bool:
        """True: the server decides whether its model can call the tools offered."""
        return True

    @property
    def tool_format(self) -> None:
        """None: the server parses tool calls, so the deltas never hold call markup (see `tool_calls`)."""
        return None

    def messages(self) -> list[dict[str, Any]]:
        """The wire messages for the current history, system prompt first."""
        out: list[dict[str, Any]] = [{"role": "system", "content": self._system}] if self._system else []
        for m in self._history.messages():
            wire: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                # The OpenAI wire format carries the arguments as JSON text (templates take them parsed).
                wire["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments_text(c)}}
                    for c in m.tool_calls
                ]
            if m.role == "tool":
                wire["tool_call_id"] = m.tool_call_id
            out.append(wire)
        return out

    def _fit_history(self) -> tuple[list[dict[str, Any]], int]:
        """The messages for the history, dropping the oldest exchanges while the estimate exceeds the budget."""
        messages = self.messages()
        if self._estimate(messages) <= self.cfg.history_tokens:
            return messages, 0
        dropped = 0
        target = int(self.cfg.history_tokens * TRUNCATE_TO)
        # Drop whole turns (tool rounds included) so roles keep alternating; the newest turn stays.
        while self._estimate(messages) > target and (n := self._history.drop_oldest_turn()):
            dropped += n
            messages = self.messages()
        log.info("history over ~%d tokens: dropped %d oldest entries", self.cfg.history_tokens, dropped)
        return messages, dropped

    @staticmethod
    def _estimate(messages: list[dict[str, Any]]) -> int:
        return sum(estimate_tokens(json.dumps(m, ensure_ascii=False)) for m in messages)

    # ---- one turn ------------------------------------------------------------------------------------------

    def respond(self, user_text: str) -> Iterator[str]:
        """Start answering `user_text`; the generator yields text deltas as the server streams them.

        An answer still open from the previous turn is recorded whole first. Raises InputError on empty text; the
        generator raises ModelError when the server is down, slow or answers garbage.
        """
        text = user_text.strip()
        if not text:
            raise InputError("the user message is empty; say or type something")
        self._begin()
        self._history.add_user(text)
        return self._start()

    def continue_with_results(self, said: str, results: Sequence[tuple[ToolCall, str]]) -> Iterator[str]:
        """Continue the current answer after a tool round; returns a generator like respond()'s.

        `said` is what the answer said before the calls; `results` pairs each call with its result text. Both are
        recorded in the history (an assistant message with the calls, then one tool message per result).
        Raises InputError when no answer is open (respond() first) or `results` is empty.
        """
        if self._answer is None:
            raise InputError("no answer is open to continue; tool results need a respond() first")
        if not results:
            raise InputError("a tool round needs at least one call and its result")
        self._cancel()
        self._history.add_tool_round(said, results)
        return self._start()

    def token_usage(self) -> dict[str, float]:
        """The last generation's token counts as the server reported them (none when it sent no usage)."""
        s = self.stats
        counts = {"prompt_tokens": s.server_prompt_tokens, "output_tokens": s.server_completion_tokens}
        return {k: float(v) for k, v in counts.items() if v is not None}

    def warmup(self) -> None:
        """Nothing to compile here: the server runs the model (its first answer may still be slow)."""

    def last_turn(self) -> list[Message]:
        """The messages of the newest turn: its user message and everything after it (for the memory store)."""
        return self._history.newest_turn()

    def restore(self, messages: Sequence[Message]) -> int:
        """Start from a stored history: drops the oldest turns beyond `llm.history_tokens` (estimated).

        Returns how many messages were dropped. Any open answer is discarded.
        """
        self._cancel()
        self._answer = None
        self._history.replace(messages)
        return self._history.trim(lambda _: self._estimate(self.messages()) > self.cfg.history_tokens)

    def _begin(self) -> None:
        self._cancel()
        if self._answer is not None:
            self.finish_turn(None)

    def _start(self) -> Iterator[str]:
        messages, dropped = self._fit_history()
        self._answer, self.tool_calls, self._complete = [], [], False
        self.stats = RemoteStats(self._estimate(messages), dropped)
        self._cancelled = False
        self._active = self._stream(messages)
        return self._active

    def _body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        c = self.cfg
        body: dict[str, Any] = {
            "model": c.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": c.max_tokens,
            "temperature": self._temperature,
            "top_p": c.top_p,
        }
        if c.seed >= 0:
            body["seed"] = c.seed
        if self.tools:
            body["tools"] = self.tools
            choice = self.tool_choice
            if choice.mode == "function":
                body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
            elif choice.mode != "auto":
                body["tool_choice"] = choice.mode
        return body

    def _stream(self, messages: list[dict[str, Any]]) -> Iterator[str]:
        answer = self._answer
        assert answer is not None
        where = f"LLM server {self.cfg.base_url}"
        calls: dict[int, dict[str, str]] = {}
        t0 = time.monotonic()
        with self._lock:
            if self._cancelled:
                return  # cancelled before the first step
            self._in_flight = True
        try:
            trace = {"trace": self._trace}
            with self._client.stream("POST", self.url, json=self._body(messages), extensions=trace) as response:
                if response.status_code != 200:
                    body = response.read().decode("utf-8", "replace").replace("\n", " ")[:ERROR_BODY_CHARS]
                    raise ModelError(
                        f"{where} answered HTTP {response.status_code}: {body}; check llm.model "
                        f"({self.cfg.model!r}) and the API key"
                    )
                for data in _sse_data(response.iter_lines()):
                    if data == "[DONE]":
                        break
                    for delta in self._deltas(data, calls, where):
                        if self.stats.first_token_s is None:
                            self.stats.first_token_s = time.monotonic() - t0
                        if delta:
                            self.stats.deltas += 1
                            answer.append(delta)
                            yield delta
                else:
                    if self._cancelled:
                        return  # cancel() shut the connection: the answer is cut, not complete
                    raise ModelError(f"{where} ended the answer without [DONE]; check the server's log")
            self._complete = True
        except (httpx2.TransportError, httpx2.StreamError) as e:
            if self._cancelled:
                return  # cancel() shut the connection under the request: the answer ends here, no error
            raise self._failure(e, where) from e
        finally:
            with self._lock:
                self._in_flight = False
            self.stats.total_s = time.monotonic() - t0
            self.tool_calls = [_tool_call(c) for _, c in sorted(calls.items())]

    def _failure(self, e: Exception, where: str) -> ModelError:
        if isinstance(e, httpx2.ConnectError):
            return ModelError(f"{where} is not reachable ({e}); start it, or fix llm.base_url")
        if isinstance(e, httpx2.TimeoutException):
            return ModelError(
                f"{where} did not answer within {self.cfg.timeout_s:g} s ({type(e).__name__}); it is overloaded "
                "or stuck: raise llm.timeout_s or check the server"
            )
        return ModelError(f"{where} dropped the connection mid-answer ({type(e).__name__}: {e}); retry")

    def _trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's trace hook, on the stepping thread: keep the socket of each new connection (TCP, then TLS)."""
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        sock = info["return_value"].get_extra_info("socket")
        with self._lock:
            self._sockets.add(sock)
            cancelled = self._cancelled
        if cancelled:  # cancel() came while connecting
            _shut(sock)

    def _deltas(self, data: str, calls: dict[int, dict[str, str]], where: str) -> Iterator[str]:
        """The text deltas of one streamed chunk; tool-call fragments are accumulated into `calls` by index."""
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as e:
            raise ModelError(
                f"{where} sent a stream chunk that is not JSON: {data[:80]!r}; is it OpenAI-compatible?"
            ) from e
        if not isinstance(chunk, dict):
            raise ModelError(f"{where} sent a stream chunk that is not an object: {data[:80]!r}")
        if "error" in chunk:
            raise ModelError(f"{where} reported an error mid-answer: {str(chunk['error'])[:ERROR_BODY_CHARS]}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.stats.server_prompt_tokens = usage.get("prompt_tokens")
            self.stats.server_completion_tokens = usage.get("completion_tokens")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise ModelError(f"{where} sent a chunk without `choices`: {data[:80]!r}; is it OpenAI-compatible?")
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            for tc in delta.get("tool_calls") or ():
                _merge_tool_call(calls, tc, where)
                yield ""  # a tool-call fragment counts as the first token, but is no text
            content = delta.get("content")
            if isinstance(content, str) and content:
                yield content

    def cancel(self) -> None:
        """End the answer in progress now; safe from any thread (barge-in, shutdown).

        Shuts down the connection of the request in flight: a read blocked on it returns at once (a socket's
        close() from another thread would not wake it), the stepping thread ends the answer without an error, and
        the server sees the disconnect.
        """
        with self._lock:
            self._cancelled = True
            sockets = list(self._sockets) if self._in_flight else []
        for sock in sockets:
            _shut(sock)

    def _cancel(self) -> None:
        if self._active is not None:
            self.cancel()
            close_answer(self._active)
            self._active = None

    @property
    def answer(self) -> str:
        """The text of the current answer so far ("" once recorded by finish_turn())."""
        return "".join(self._answer or [])

    def finish_turn(self, heard_text: str | None) -> None:
        """Record the answer: None = all of it; a string = only what the user heard before interrupting.

        Closes the stream if still open. Unanswered tool calls are dropped (the spoken text is what counts).
        """
        self._cancel()
        if self._answer is None:
            return
        full = "".join(self._answer).strip()
        self._answer, self.tool_calls = None, []
        self._history.add_answer(full, heard_text, self._complete)

    def discard_answer(self) -> None:
        """Drop the answer in progress and the user message it answers (with any tool rounds), as if neither
        happened (a speculative reply that was not needed)."""
        self._cancel()
        if self._answer is None:
            return
        self._answer, self.tool_calls = None, []
        self._history.drop_newest_turn()

    def revise_answer(self, recorded: str, heard: str) -> bool:
        """The listener heard only `heard` of the latest answer recorded as `recorded`; True when one was changed."""
        return self._history.revise(recorded, heard)


def _shut(sock: socket.socket) -> None:
    """Shut the connection down both ways (a socket already closed or detached by TLS is left as it is)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _arguments_text(call: ToolCall) -> str:
    return call.raw if call.error else json.dumps(dict(call.arguments), ensure_ascii=False)


def _tool_call(fragments: dict[str, str]) -> ToolCall:
    """The streamed call as a ToolCall; arguments that are not a JSON object give a call with `error` set."""
    text = fragments["arguments"] or "{}"
    try:
        args = json.loads(text)
    except json.JSONDecodeError as e:
        return ToolCall(fragments["name"], {}, fragments["id"], raw=text, error=f"arguments are not JSON ({e})")
    if not isinstance(args, dict):
        return ToolCall(fragments["name"], {}, fragments["id"], raw=text, error="arguments are not a JSON object")
    return ToolCall(fragments["name"], args, fragments["id"], raw=text)


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data:` payloads of a server-sent-event stream (comments such as `: keepalive` are skipped)."""
    parts: list[str] = []
    for line in lines:
        if not line:
            if parts:
                yield "\n".join(parts)
                parts = []
        elif line.startswith("data:"):
            parts.append(line[5:].lstrip(" "))
    if parts:
        yield "\n".join(parts)


def _merge_tool_call(calls: dict[int, dict[str, str]], tc: Any, where: str) -> None:
    """Add one streamed tool-call fragment: the first carries id and name, later ones more argument text."""
    if not isinstance(tc, dict):
        raise ModelError(f"{where} sent a tool call that is not an object: {str(tc)[:80]!r}")
    index = tc.get("index", len(calls))
    if not isinstance(index, int):
        raise ModelError(f"{where} sent a tool call with index {index!r}; expected an integer")
    fn = tc.get("function") or {}
    call = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
    if tc.get("id"):
        call["id"] = str(tc["id"])
    if isinstance(fn, dict):
        if fn.get("name"):
            call["name"] = str(fn["name"])
        args = fn.get("arguments")
        if isinstance(args, str):
            call["arguments"] += args
        elif isinstance(args, dict):  # some servers send the arguments parsed
            call["arguments"] += json.dumps(args)
    if not call["id"]:
        call["id"] = f"call_{index}"


__all__ = ["RemoteChat", "RemoteStats", "estimate_tokens", "read_api_key"]
