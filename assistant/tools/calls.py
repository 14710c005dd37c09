"""Tool calls in an LLM's text stream: the formats chat models are trained on, and a streaming splitter.

A chat model calls a tool by writing the call in its own syntax between marker tokens, e.g. Gemma 4's
`<|tool_call>call:get_time{zone:<|"|>Europe/Paris<|"|>}<tool_call|>` or Qwen's and Hermes'
`<tool_call>{"name": "get_time", "arguments": {...}}</tool_call>`. `detect_format` picks the syntax from the
tokenizer's chat template (the template that renders tool calls back into the prompt names the markers);
`CallDetector` splits the streamed answer into speakable text and complete calls as they form, holding back
any text that may be the start of a marker, so no tool-call text ever reaches the TTS. Pure: no I/O, no MLX.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ToolCall:
    """One call the model made. A call that could not be parsed has `error` set (and the raw text in `raw`)."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")
    raw: str = ""
    error: str = ""

    def template_dict(self) -> dict[str, Any]:
        """The call as chat templates expect it in an assistant message's `tool_calls`."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": dict(self.arguments)}}


@dataclass(frozen=True)
class Speech:
    """Text of the answer that is meant to be spoken."""

    text: str


Segment = Speech | ToolCall

Parsed = list[tuple[str, dict[str, Any]]]


# ---- Gemma 4: call:NAME{key:value,...} with <|"|> string delimiters --------------------------------------------

GEMMA_QUOTE = '<|"|>'


class _GemmaValues:
    """A recursive-descent reader of Gemma 4's argument syntax: bare keys, <|"|>strings<|"|>, JSON scalars."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def _skip(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def _expect(self, char: str) -> None:
        self._skip()
        if not self.text.startswith(char, self.i):
            raise ValueError(f"expected `{char}` at {self.i} in {self.text!r}")
        self.i += len(char)

    def value(self) -> Any:
        self._skip()
        rest = self.text[self.i :]
        if rest.startswith(GEMMA_QUOTE):
            end = self.text.find(GEMMA_QUOTE, self.i + len(GEMMA_QUOTE))
            if end < 0:
                raise ValueError('a <|"|> string is not closed')
            out = self.text[self.i + len(GEMMA_QUOTE) : end]
            self.i = end + len(GEMMA_QUOTE)
            return out
        if rest.startswith("{"):
            return self.mapping()
        if rest.startswith("["):
            self.i += 1
            items: list[Any] = []
            self._skip()
            if self.text.startswith("]", self.i):
                self.i += 1
                return items
            while True:
                items.append(self.value())
                self._skip()
                if self.text.startswith("]", self.i):
                    self.i += 1
                    return items
                self._expect(",")
        if rest.startswith('"'):  # models sometimes fall back to JSON strings
            out, end = json.JSONDecoder().raw_decode(self.text, self.i)
            self.i = end
            return out
        match = re.match(r"[^,}\]]+", rest)
        if not match:
            raise ValueError(f"expected a value at {self.i} in {self.text!r}")
        self.i += match.end()
        word = match.group().strip()
        literals = {"true": True, "false": False, "null": None}
        if word in literals:
            return literals[word]
        try:
            return json.loads(word)
        except json.JSONDecodeError:
            return word  # an unquoted word: keep it as the string the model meant

    def mapping(self) -> dict[str, Any]:
        self._expect("{")
        out: dict[str, Any] = {}
        self._skip()
        if self.text.startswith("}", self.i):
            self.i += 1
            return out
        while True:
            self._skip()
            if self.text.startswith(GEMMA_QUOTE, self.i):
                key = self.value()
            elif self.text.startswith('"', self.i):
                key, self.i = json.JSONDecoder().raw_decode(self.text, self.i)
            else:
                match = re.match(r"[\w.-]+", self.text[self.i :])
                if not match:
                    raise ValueError(f"expected a key at {self.i} in {self.text!r}")
                key = match.group()
                self.i += match.end()
            self._expect(":")
            out[str(key)] = self.value()
            self._skip()
            if self.text.startswith("}", self.i):
                self.i += 1
                return out
            self._expect(",")


def parse_gemma4(body: str) -> Parsed:
    """`call:NAME{args}` (one call per marker pair)."""
    match = re.match(r"\s*call:([\w.:-]+?)\s*(?=\{)", body)
    if not match:
        raise ValueError("expected call:NAME{...}")
    reader = _GemmaValues(body)
    reader.i = match.end()
    arguments = reader.mapping()
    if body[reader.i :].strip():
        raise ValueError(f"unexpected text after the arguments: {body[reader.i :]!r}")
    return [(match.group(1), arguments)]


# ---- JSON: {"name": ..., "arguments": {...}} ------------------------------------------------------------------


def _json_call(item: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ValueError('expected {"name": ..., "arguments": {...}}')
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):  # some templates render the arguments as a JSON string
        arguments = json.loads(arguments) if arguments.strip() else {}
    if not isinstance(arguments, dict):
        raise ValueError("the arguments must be a JSON object")
    return item["name"], arguments


def parse_json(body: str) -> Parsed:
    """One JSON object (Qwen, Hermes) or a list of them."""
    data = json.loads(body)
    return [_json_call(item) for item in (data if isinstance(data, list) else [data])]


def parse_xml(body: str) -> Parsed:
    """`<function=NAME><parameter=KEY>value</parameter>...</function>` (Qwen 3 Coder, Qwen 3.5): a value is
    JSON when it parses as JSON, else the text itself."""
    calls: Parsed = []
    for fn in re.finditer(r"<function=([\w.-]+)>(.*?)</function>", body, re.S):
        arguments: dict[str, Any] = {}
        for param in re.finditer(r"<parameter=([\w.-]+)>\n?(.*?)\n?</parameter>", fn.group(2), re.S):
            try:
                arguments[param.group(1)] = json.loads(param.group(2))
            except json.JSONDecodeError:
                arguments[param.group(1)] = param.group(2)
        calls.append((fn.group(1), arguments))
    if not calls:
        raise ValueError("expected <function=NAME>...</function>")
    return calls


def parse_mistral(body: str) -> Parsed:
    """`[{"name": ..., "arguments": ...}, ...]` or the newer `name[ARGS]{...}`, repeated."""
    text = body.strip()
    if text.startswith("["):
        return parse_json(text)
    calls: Parsed = []
    decoder = json.JSONDecoder()
    pos = 0
    while match := re.compile(r"\s*([\w.-]+)\s*\[ARGS\]\s*").match(text, pos):
        arguments, pos = decoder.raw_decode(text, match.end())
        if not isinstance(arguments, dict):
            raise ValueError("the arguments must be a JSON object")
        calls.append((match.group(1), arguments))
    if not calls or text[pos:].strip():
        raise ValueError("expected name[ARGS]{...}")
    return calls


def parse_pythonic(body: str) -> Parsed:
    """`[name(key=value, ...), ...]` (LFM2): Python literals, or JSON's true/false/null."""
    tree = ast.parse(body.strip(), mode="eval").body
    if not isinstance(tree, ast.List):
        raise ValueError("expected [name(key=value, ...)]")
    names = {"true": True, "false": False, "null": None}
    calls: Parsed = []
    for node in tree.elts:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            raise ValueError("expected name(key=value, ...) with keyword arguments only")
        arguments = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise ValueError("**arguments are not allowed")
            value = kw.value
            if isinstance(value, ast.Name) and value.id in names:
                arguments[kw.arg] = names[value.id]
            else:
                arguments[kw.arg] = ast.literal_eval(value)
        calls.append((node.func.id, arguments))
    return calls


# ---- formats ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallFormat:
    """How one family of models writes tool calls: between `start` and `end` (None = to the end of the answer)."""

    name: str
    start: str
    end: str | None
    parse: Callable[[str], Parsed]
    example: str  # one well-formed call, quoted back to the model when it writes a malformed one
    named: str = ""  # how a call of NAME begins, up to its arguments (forcing that call: tool_choice)

    def forced(self, choice: ToolChoice) -> str:
        """The text an answer must begin with under `choice` ("" when the model chooses)."""
        if choice.mode == "required":
            return self.start
        if choice.mode == "function":
            return self.named.replace("NAME", choice.name) if self.named else self.start
        return ""


@dataclass(frozen=True)
class ToolChoice:
    """How the model chooses tools (OpenAI's tool_choice): "auto", "none" (no tools offered), "required" (the
    answer begins with a call) or "function" (the answer begins with a call of `name`)."""

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str = ""


AUTO = ToolChoice()

GEMMA4 = CallFormat(
    "gemma4",
    "<|tool_call>",
    "<tool_call|>",
    parse_gemma4,
    '<|tool_call>call:NAME{key:<|"|>text<|"|>}<tool_call|>',
    "<|tool_call>call:NAME{",
)
HERMES = CallFormat(
    "json",
    "<tool_call>",
    "</tool_call>",
    parse_json,
    '<tool_call>{"name": "NAME", "arguments": {}}</tool_call>',
    '<tool_call>\n{"name": "NAME", "arguments": ',
)
QWEN_XML = CallFormat(
    "xml",
    "<tool_call>",
    "</tool_call>",
    parse_xml,
    "<tool_call><function=NAME><parameter=KEY>value</parameter></function></tool_call>",
    "<tool_call>\n<function=NAME>\n",
)
MISTRAL = CallFormat(
    "mistral",
    "[TOOL_CALLS]",
    None,
    parse_mistral,
    '[TOOL_CALLS][{"name": "NAME", "arguments": {}}]',
    '[TOOL_CALLS][{"name": "NAME", "arguments": ',
)
PYTHONIC = CallFormat(
    "pythonic",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    parse_pythonic,
    "<|tool_call_start|>[NAME()]<|tool_call_end|>",
    "<|tool_call_start|>[NAME(",
)
FORMATS = (GEMMA4, HERMES, QWEN_XML, MISTRAL, PYTHONIC)


def detect_format(chat_template: Any, vocab: Collection[str] = ()) -> CallFormat | None:
    """The call format a chat template renders (None: the template knows no tool calls).

    The markers a template writes for past calls are the ones the model was trained to emit.
    """
    template = chat_template if isinstance(chat_template, str) else ""
    if "<|tool_call>" in template and "<tool_call|>" in template:
        return GEMMA4
    if "<|tool_call_start|>" in template or ("<|tool_call_start|>" in vocab and "<|tool_call_end|>" in vocab):
        return PYTHONIC
    if "<tool_call>" in template and "<function=" in template:
        return QWEN_XML
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<tool_call>" in template and "</tool_call>" in template:
        return HERMES
    return None


def parse_body(fmt: CallFormat, body: str) -> list[ToolCall]:
    """The calls in the text between one pair of markers; a malformed body gives one call with `error` set."""
    raw = f"{fmt.start}{body}{fmt.end or ''}"
    try:
        parsed = fmt.parse(body)
    except (ValueError, SyntaxError, TypeError, RecursionError) as e:
        return [ToolCall("", raw=raw, error=f"the tool call could not be parsed ({e}); write it as {fmt.example}")]
    if not parsed:
        return [ToolCall("", raw=raw, error=f"the tool call names no tool; write it as {fmt.example}")]
    return [ToolCall(name, arguments, raw=raw) for name, arguments in parsed]


def _held_back(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker` (it may become the marker)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class CallDetector:
    """Splits a streamed answer into Speech and ToolCall segments as the text arrives.

    `feed(delta)` returns the segments complete so far; text that could still turn into a call marker is held
    back until it is decided. Once a call is complete, text after it is never spoken: the model is waiting for
    the results. `calls_ready` then says generation can stop and the calls can run (the model moved past the
    last call: anything but whitespace or the start of another call). `finish()` flushes at the end of the
    stream; a call still open then (cut off by max_tokens) comes out with `error` set.
    """

    def __init__(self, fmt: CallFormat | None) -> None:
        self.fmt = fmt
        self._pending = ""
        self._inside = False
        self.calls: list[ToolCall] = []
        self.spoken: list[str] = []  # the speech emitted, for the history
        self.calls_ready = False

    def feed(self, delta: str) -> list[Segment]:
        """The segments completed by `delta`."""
        self._pending += delta
        out: list[Segment] = []
        fmt = self.fmt
        while True:
            if fmt is None:
                out += self._speech(self._pending)
                self._pending = ""
                return out
            if self._inside:
                if fmt.end is None:
                    return out  # runs to the end of the stream
                end = self._pending.find(fmt.end)
                if end < 0:
                    return out
                out += self._call(self._pending[:end])
                self._pending = self._pending[end + len(fmt.end) :]
                self._inside = False
                continue
            start = self._pending.find(fmt.start)
            if start >= 0:
                if not self.calls:  # text between calls is never spoken
                    out += self._speech(self._pending[:start])
                self._pending = self._pending[start + len(fmt.start) :]
                self._inside = True
                continue
            keep = _held_back(self._pending, fmt.start)
            if self.calls:
                # After a call: whitespace may precede another call; anything else means the calls are done.
                if self._pending[: len(self._pending) - keep].strip():
                    self.calls_ready = True
                return out
            out += self._speech(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
            return out

    def finish(self) -> list[Segment]:
        """The segments left at the end of the stream."""
        out: list[Segment] = []
        if self._inside and self.fmt is not None:
            if self.fmt.end is None:
                out += self._call(self._pending)
            else:
                error = f"the tool call was cut off; write it whole as {self.fmt.example}"
                cut = ToolCall("", raw=self.fmt.start + self._pending, error=error)
                self.calls.append(cut)
                out.append(cut)
        elif not self.calls:
            out += self._speech(self._pending)
        self._pending = ""
        self._inside = False
        if self.calls:
            self.calls_ready = True
        return out

    def _speech(self, text: str) -> list[Segment]:
        if not text:
            return []
        self.spoken.append(text)
        return [Speech(text)]

    def _call(self, body: str) -> list[Segment]:
        assert self.fmt is not None
        calls = parse_body(self.fmt, body)
        self.calls += calls
        return list(calls)

    @property
    def speech(self) -> str:
        """All speech emitted so far."""
        return "".join(self.spoken)
