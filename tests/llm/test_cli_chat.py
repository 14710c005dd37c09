"""`assistant chat`: a text REPL over the same Chat engine."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from assistant import cli
from assistant.config import LlmConfig
from assistant.llm import Chat
from tests.llm.tiny import make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("gemma3"), "gemma3", seed=3)


def greedy_answers(folder: Path, questions: list[str], reset_after: int) -> list[str]:
    chat = Chat.load(LlmConfig(model=str(folder), temperature=0.0, max_tokens=8))
    out = []
    for i, q in enumerate(questions):
        if i == reset_after:
            chat.reset()
        out.append("".join(chat.respond(q)))
        chat.finish_turn(None)
    return out


@pytest.mark.parametrize("stream", [False, True])
def test_chat_repl(
    stream: bool, tiny: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The REPL prints the engine's answers (streamed by default, or whole), /reset clears the history and /exit
    quits."""
    expected = greedy_answers(tiny, ["hello there", "what is 3.14?", "again"], reset_after=2)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello there\n\nwhat is 3.14?\n/reset\nagain\n/exit\nnever\n"))
    args = ["chat", "--set", f"llm.model={tiny}", "--set", "llm.temperature=0", "--set", "llm.max_tokens=8"]
    assert cli.main(args + ([] if stream else ["--no-stream"])) == 0
    a1, a2, a3 = (a if stream else a.strip() for a in expected)
    # input() writes its "> " prompt to stdout too; the empty line is skipped.
    assert capsys.readouterr().out == f"> {a1}\n> > {a2}\n> (history cleared)\n> {a3}\n> "


def test_chat_eof_and_unknown_command(
    tiny: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown slash command is answered with the help line; end of input quits with status 0."""
    monkeypatch.setattr("sys.stdin", io.StringIO("/bogus\n"))
    assert cli.main(["chat", "--set", f"llm.model={tiny}"]) == 0
    assert "unknown command /bogus" in capsys.readouterr().out


def test_chat_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(
    tiny: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line of Latin-1 bytes gets one error line naming UTF-8 and the next line is answered (it failed in the chat
    template, and every later line failed too)."""
    [answer] = greedy_answers(tiny, ["hello there"], reset_after=9)
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9\nhello there\n"), errors="surrogateescape")
    monkeypatch.setattr("sys.stdin", stdin)
    args = ["chat", "--no-stream", "--set", f"llm.model={tiny}", "--set", "llm.temperature=0"]
    assert cli.main([*args, "--set", "llm.max_tokens=8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("> [error: the line is not UTF-8 text; set the terminal to UTF-8")
    assert f"> {answer.strip()}\n" in out


def test_chat_missing_model_is_one_line_error(
    tmp_path: Path, isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model folder that does not exist fails with exit code 2 and one line naming the fix."""
    assert cli.main(["chat", "--set", f"llm.model={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "folder not found" in err[0]


def test_chat_help_and_per_turn_figures(
    tiny: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """/help prints the commands; each answer is followed by its token count, tokens/s and cached prompt tokens,
    and the second turn reuses the first turn's prompt from the cache."""
    monkeypatch.setattr("sys.stdin", io.StringIO("/help\nhello there\nand again\n"))
    args = ["chat", "--set", f"llm.model={tiny}", "--set", "llm.temperature=0", "--set", "llm.max_tokens=8"]
    assert cli.main(args) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"> {cli.CHAT_HELP}\n")
    figures = [ln for ln in out.err.splitlines() if ln.startswith("[")]
    assert len(figures) == 2
    pattern = r"^\[(\d+) tokens, [\d.]+ tokens/s, first after [\d.]+ s; prompt (\d+) tokens, (\d+) cached\]$"
    (g1, p1, c1), (g2, p2, c2) = (map(int, re.match(pattern, f).groups()) for f in figures)  # type: ignore[union-attr]
    assert 0 < g1 <= 8 and 0 < g2 <= 8
    assert c1 == 0 and 0 < c2 < p2 and p2 > p1


def test_chat_input_history_persists_in_the_state_folder(isolated_env: Path) -> None:
    """The REPL's readline history is saved in the user's state folder and read back by the next session."""
    import readline

    from assistant.paths import state_dir

    readline.clear_history()
    path = cli._chat_history()
    assert path == state_dir() / "chat_history" and str(isolated_env) in str(path)
    readline.add_history("what time is it?")
    cli._save_history(path)
    readline.clear_history()
    cli._chat_history()
    assert readline.get_history_item(readline.get_current_history_length()) == "what time is it?"
