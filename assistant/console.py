"""The terminal interface of `assistant run`: log lines scroll above one status line that is redrawn under them.

Only when stderr is a terminal (and not with --log-json): everything that reaches stderr, our log records and
what C libraries write to file descriptor 2 (ALSA, PortAudio), goes through one `Console` as whole lines, so a
message is never glued onto the status line. The status line is cut to the terminal's width (a wrapped line
could not be erased and would leave stale copies on a narrow terminal). Without a terminal nothing here runs:
the log stays plain `key=value` or JSON lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import unicodedata
from collections.abc import Iterator
from typing import Any, TextIO

from assistant.events import (
    BargeIn,
    DeviceStatus,
    ErrorEvent,
    Event,
    FinalTranscript,
    LatencyTrace,
    MuteChanged,
    PartialTranscript,
    PushToTalk,
    ResponseDone,
    StateChanged,
    TurnState,
)
from assistant.logs import _fields, _quote

CLEAR_LINE = "\r\x1b[K"  # to column 0, erase to the end of the line


def cell_width(text: str) -> int:
    """Terminal columns `text` takes: wide East Asian characters take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
        if c.isprintable()
    )


def fit(text: str, width: int) -> str:
    """`text` on one line of at most `width` columns, cut with an ellipsis when longer."""
    text = " ".join(text.split())  # no newlines or tabs: one row
    if cell_width(text) <= width:
        return text
    out, used = [], 0
    for c in text:
        w = cell_width(c)
        if used + w > width - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


class Console:
    """Whole lines above, one status line below, on one terminal stream; safe to call from any thread."""

    def __init__(self, out: TextIO, columns: int | None = None) -> None:
        self.out = out
        self.columns = columns  # fixed width (tests); None = ask the terminal at each draw
        self._status = ""
        self._lock = threading.Lock()

    def width(self) -> int:
        if self.columns is not None:
            return self.columns
        try:
            return os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError):
            return 80

    def line(self, text: str) -> None:
        """A permanent line (a log record, a transcript): printed above the status line, which is redrawn.
        Control characters (a model's stray escape or carriage return) print as spaces: they could move the cursor."""
        text = "".join(c if c.isprintable() else " " for c in text.rstrip("\n"))
        with self._lock:
            self.out.write(CLEAR_LINE + text + "\n" + self._render())
            self.out.flush()

    def status(self, text: str) -> None:
        """Replace the status line."""
        with self._lock:
            self._status = text
            self.out.write(CLEAR_LINE + self._render())
            self.out.flush()

    def close(self) -> None:
        """Erase the status line, leaving the cursor at the start of an empty line."""
        with self._lock:
            self._status = ""
            self.out.write(CLEAR_LINE)
            self.out.flush()

    def _render(self) -> str:
        # one column spare: a line that fills the last column wraps on some terminals
        return fit(self._status, max(self.width() - 1, 1)) if self._status else ""


class ConsoleFormatter(logging.Formatter):
    """Compact log lines for a person at a terminal: time, level, message, then the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={_quote(v)}" for k, v in _fields(record).items())
        text = f"{stamp} {record.levelname.lower():<7} {record.getMessage()}" + (f"  {fields}" if fields else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ConsoleHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(ConsoleFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            for text in self.format(record).splitlines():
                self.console.line(text)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def terminal() -> Iterator[Console]:
    """Route stderr through a Console for the duration: the `assistant` loggers, Python's sys.stderr and file
    descriptor 2 (what C libraries print) all arrive as whole lines above the status line."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    out = os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace")
    console = Console(out)
    reader = threading.Thread(target=_forward, args=(read_fd, console), name="stderr-lines", daemon=True)
    reader.start()
    root = logging.getLogger("assistant")
    handlers = root.handlers[:]
    root.handlers[:] = [ConsoleHandler(console)]
    try:
        yield console
    finally:
        root.handlers[:] = handlers
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF after the lines in flight
        reader.join(timeout=1.0)
        console.close()
        out.close()


def _forward(fd: int, console: Console) -> None:
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as lines:
        for text in lines:
            console.line(text)


# ---- what the status line and the transcript lines say ----------------------------------------------------

STATE_TEXT = {
    TurnState.IDLE: "listening",
    TurnState.USER_SPEAKING: "hearing you",
    TurnState.THINKING: "thinking",
    TurnState.ASSISTANT_SPEAKING: "speaking",
}


class View:
    """Pure: events in, permanent lines and the current status text out."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.state = TurnState.IDLE
        self.heard = ""
        self.latency = ""
        self.note = ""
        self.turns = 0

    def apply(self, ev: Event) -> list[str]:
        """Lines to print for `ev` (often none); updates the status."""
        if isinstance(ev, StateChanged):
            self.state = ev.new
            if ev.new == TurnState.IDLE:
                self.heard = ""
        elif isinstance(ev, PartialTranscript):
            self.heard = ev.text
        elif isinstance(ev, FinalTranscript):
            self.heard = ""
            return [f"you: {ev.text}"] if ev.text.strip() else []
        elif isinstance(ev, ResponseDone):
            self.turns += 1
            text = ev.text.strip() or "(nothing)"
            return [f"assistant: {text}" + (" [interrupted]" if ev.interrupted else "")]
        elif isinstance(ev, LatencyTrace):
            self.latency = compact_latency(ev)
            return [f"  turn {ev.turn}: {self.latency}"] if self.latency else []
        elif isinstance(ev, BargeIn):
            self.note = "interrupted"
        elif isinstance(ev, PushToTalk):
            self.note = "talk key down" if ev.pressed else ""
        elif isinstance(ev, MuteChanged):
            self.note = "muted" if ev.muted else ""
        elif isinstance(ev, DeviceStatus):
            self.note = "" if ev.ok else ev.message
            return [f"{ev.kind} device: {ev.message}"]
        elif isinstance(ev, ErrorEvent):
            return [f"error: {ev.message}"]
        return []

    def text(self) -> str:
        state = STATE_TEXT[self.state]
        if self.state == TurnState.IDLE and not self.note:
            hint = "speak" if self.mode != "push_to_talk" else "hold the talk key"
            head = f"● {state}: {hint}; Ctrl-C quits"
        else:
            head = f"● {state}"
        heard = f"“{self.heard}”" if self.heard else ""
        parts = [head, heard, self.note, f"last: {self.latency}" if self.latency else ""]
        return "  ".join(p for p in parts if p)


def compact_latency(ev: LatencyTrace) -> str:
    """'stt 120 · llm 340 · audio 510 · played 600 ms': each stage's time from the end of speech."""
    stages = (
        ("stt", ev.stt_final_ms),
        ("llm", ev.llm_first_token_ms),
        ("audio", ev.tts_first_audio_ms),
        ("played", ev.first_sample_played_ms),
    )
    shown = [f"{name} {ms:.0f}" for name, ms in stages if ms is not None]
    return " · ".join(shown) + " ms" if shown else ""


class StatusLine:
    """Follows a conversation's events: transcript and reply lines above, the live status below."""

    def __init__(self, source: Any, console: Console) -> None:
        self.source = source  # anything with .subscribe(n) -> async iterator of events, .core.state and .cfg
        self.console = console
        self.view = View(source.cfg.pipeline.mode)
        self.view.state = source.core.state

    async def run(self) -> None:
        sub = self.source.subscribe(256)
        self.console.status(self.view.text())
        try:
            async for ev in sub:
                for text in self.view.apply(ev):
                    self.console.line(text)
                self.console.status(self.view.text())
        finally:
            sub.close()
            self.console.close()
