"""The terminal console: log lines above one status line, which always fits the terminal's width, and what
the status line and the transcript lines say for each event."""

from __future__ import annotations

import io
import logging
import os

import pytest

from assistant.console import CLEAR_LINE, Console, View, cell_width, compact_latency, fit, terminal
from assistant.events import FinalTranscript, LatencyTrace, PartialTranscript, ResponseDone, StateChanged, TurnState


def screen(raw: str) -> list[str]:
    """The rows a terminal shows for `raw` (CLEAR_LINE erases the current row; no row is wider than asserted)."""
    rows = [""]
    for part in raw.split(CLEAR_LINE):
        rows[-1] = ""
        for ch in part:
            if ch == "\n":
                rows.append("")
            else:
                rows[-1] += ch
    return rows


def test_fit_cuts_to_columns_counting_wide_characters() -> None:
    """fit() keeps a line within the columns, counting CJK as two, and marks the cut with an ellipsis."""
    assert fit("hello  world\nagain", 40) == "hello world again"
    assert fit("abcdefghij", 6) == "abcde…" and cell_width("abcde…") == 6
    cut = fit("你好世界你好世界", 7)
    assert cut == "你好世…" and cell_width(cut) == 7


@pytest.mark.parametrize("columns", [20, 60, 120])
def test_status_stays_one_row_under_the_log_lines(columns: int) -> None:
    """Lines printed while a long status is shown end up above it, whole (control characters blanked); the
    status row never exceeds the width and appears once, at the bottom."""
    out = io.StringIO()
    con = Console(out, columns=columns)
    long_status = "● hearing you  “" + "words " * 40 + "”"
    con.status(long_status)
    con.line("12:00:01 warning ALSA lib pcm.c: underrun occurred")
    con.status("● listening: speak; Ctrl-C quits")
    con.line("you: what is the\x1b[2J weather\r")
    rows = screen(out.getvalue())
    assert rows[:2] == ["12:00:01 warning ALSA lib pcm.c: underrun occurred", "you: what is the [2J weather "]
    assert rows[2] == fit("● listening: speak; Ctrl-C quits", columns - 1) and len(rows) == 3
    assert all(cell_width(r) < columns for r in rows if r.startswith("●"))


def test_view_prints_you_and_assistant_lines_and_compact_latency() -> None:
    """A turn's events give "you:", "assistant:" and a compact latency line; the idle status says what to do."""
    view = View("hands_free")
    assert view.text() == "● listening: speak; Ctrl-C quits"
    assert view.apply(StateChanged(TurnState.IDLE, TurnState.USER_SPEAKING, 0.0)) == []
    view.apply(PartialTranscript("what is", 0.0))
    assert view.text() == "● hearing you  “what is”"
    assert view.apply(FinalTranscript("what is the time", "en", 0.0)) == ["you: what is the time"]
    trace = LatencyTrace(1, 700.0, stt_final_ms=120.0, llm_first_token_ms=340.4, tts_first_audio_ms=510.0)
    assert view.apply(trace) == ["  turn 1: stt 120 · llm 340 · audio 510 ms"]
    assert view.apply(ResponseDone(1, "It is noon.", False, 0.0)) == ["assistant: It is noon."]
    assert view.apply(ResponseDone(2, "Well", True, 0.0)) == ["assistant: Well [interrupted]"]
    view.apply(StateChanged(TurnState.ASSISTANT_SPEAKING, TurnState.IDLE, 0.0))
    assert view.text() == "● listening: speak; Ctrl-C quits  last: stt 120 · llm 340 · audio 510 ms"
    assert compact_latency(LatencyTrace(3, 700.0)) == ""


def test_terminal_routes_native_stderr_and_log_records_as_lines(capfd: pytest.CaptureFixture[str]) -> None:
    """Inside terminal(), what C code writes to fd 2 and the assistant's log records arrive as whole lines
    above the status line, never glued onto it; afterwards fd 2 and the log handlers are as before."""
    log = logging.getLogger("assistant.test")
    handlers = logging.getLogger("assistant").handlers[:]
    with terminal() as con:
        con.status("● listening")
        os.write(2, b"ALSA lib confmisc.c:855: cannot find card '0'\n")
        log.warning("a warning", extra={"fields": {"device": 3}})
        con.line("you: hi")
    assert logging.getLogger("assistant").handlers == handlers
    os.write(2, b"after\n")
    rows = screen(capfd.readouterr().err)
    assert "ALSA lib confmisc.c:855: cannot find card '0'" in rows
    assert any(r.endswith("warning a warning  device=3") for r in rows)
    assert "you: hi" in rows and rows[-2:] == ["after", ""]
    assert not any(r.startswith("●") and len(r) > len("● listening") for r in rows)
