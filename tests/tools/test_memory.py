"""The SQLite memory: turns stored whole and loaded back, trimmed, erased, off the record; a process killed
with SIGKILL while writing leaves every completed turn and nothing half-written."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from assistant.errors import ConfigError
from assistant.llm import Message
from assistant.memory import Memory, default_path
from assistant.tools.calls import ToolCall


def tool_turn(i: int) -> list[Message]:
    call = ToolCall("get_time", {"zone": "Europe/Paris"}, id=f"call_{i}")
    return [
        Message("user", f"question {i}"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", '{"time": "14:05"}', tool_call_id=call.id, name="get_time"),
        Message("assistant", f"answer {i}", interrupted=i % 2 == 1),
    ]


def test_turns_round_trip_across_reopen(tmp_path: Path) -> None:
    """Turns with tool calls, results and interrupted answers come back equal after the database is reopened."""
    path = tmp_path / "sub" / "memory.sqlite3"
    memory = Memory(path)
    turns = [tool_turn(i) for i in range(3)]
    for turn in turns:
        memory.add_turn(turn)
    memory.close()
    again = Memory(path)
    assert again.turns() == turns
    assert again.history() == [m for t in turns for m in t]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_keep_newest_and_reset(tmp_path: Path) -> None:
    """keep_newest() deletes the oldest whole turns beyond a message count; reset_history() erases all turns
    and leaves the reminders."""
    memory = Memory(tmp_path / "m.sqlite3")
    for i in range(5):
        memory.add_turn([Message("user", f"q{i}"), Message("assistant", f"a{i}")])
    memory.add_reminder(100.0, "call Anna", now=0.0)
    assert memory.keep_newest(5) == 3  # 2 whole turns fit in 5 messages
    assert [t[0].content for t in memory.turns()] == ["q3", "q4"]
    assert memory.keep_newest(10) == 0
    assert memory.reset_history() == 2
    assert memory.turns() == []
    assert [r.text for r in memory.pending_reminders()] == ["call Anna"]


def test_off_the_record_reads_and_writes_no_history(tmp_path: Path) -> None:
    """Off the record, turns are neither written nor loaded; reminders are still kept."""
    path = tmp_path / "m.sqlite3"
    Memory(path).add_turn([Message("user", "old"), Message("assistant", "kept")])
    secret = Memory(path, off_the_record=True)
    secret.add_turn([Message("user", "secret"), Message("assistant", "not stored")])
    secret.add_reminder(5.0, "stretch", now=0.0)
    assert secret.turns() == []
    assert [t[1].content for t in Memory(path).turns()] == ["kept"]
    assert [r.text for r in Memory(path).pending_reminders()] == ["stretch"]


def test_unwritable_path_names_the_key(tmp_path: Path) -> None:
    """A database that cannot be created fails with one line naming memory.path."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"memory.path"):
        Memory(blocker / "memory.sqlite3")


def test_only_a_damaged_database_is_to_be_moved_aside_and_never_deleted(tmp_path: Path) -> None:
    """A database that does not open is never answered with "delete it": a file that is no database is to be moved
    aside (its old contents kept), an unusable folder is named; the old message told the user to delete the
    database, losing the history, even when only its folder was wrong."""
    damaged = tmp_path / "memory.sqlite3"
    damaged.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError) as e:
        Memory(damaged)
    assert f"move it aside (`mv '{damaged}' '{damaged}.bad'`" in str(e.value) and "delete" not in str(e.value)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as e:
        Memory(blocker / "memory.sqlite3")
    assert f"make {blocker} a folder you can write, or set `memory.path`" in str(e.value)
    assert "delete" not in str(e.value) and "move it aside" not in str(e.value)


def test_default_path_is_in_the_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default database is memory.sqlite3 in $XDG_DATA_HOME/assistant on Linux."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    if sys.platform == "linux":
        assert default_path() == tmp_path / "assistant" / "memory.sqlite3"


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from assistant.llm import Message
    from assistant.memory import Memory
    from assistant.tools.calls import ToolCall

    memory = Memory(Path(sys.argv[1]))
    start = len(memory.turns())
    i = start
    while True:
        call = ToolCall("f", {"n": i, "pad": "x" * 2000}, id=f"c{i}")
        memory.add_turn([Message("user", f"q{i}"), Message("assistant", "", tool_calls=(call,)),
                         Message("tool", "r" * 3000, tool_call_id=call.id, name="f"), Message("assistant", f"a{i}")])
        print(i, flush=True)
        i += 1
    """
)


def test_kill_9_mid_write_keeps_every_completed_turn(tmp_path: Path) -> None:
    """Three times over, a writer process is killed with SIGKILL while it stores turns as fast as it can; the
    database then passes integrity_check and holds every turn reported done, each complete, nothing partial."""
    path = tmp_path / "m.sqlite3"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        done = -1
        for _ in range(40 + 17 * round_):  # an irregular point in the write loop each round
            done = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
        turns = Memory(path).turns()
        assert len(turns) >= done + 1
        for i, turn in enumerate(turns):
            assert [m.role for m in turn] == ["user", "assistant", "tool", "assistant"]
            assert (turn[0].content, turn[3].content, turn[1].tool_calls[0].arguments["n"]) == (f"q{i}", f"a{i}", i)


def test_cli_history_show_and_reset(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`assistant history [show]` prints the stored turns; `assistant history reset` erases them (reminders kept)
    in the database of the user's data folder."""
    from assistant import cli

    monkeypatch.setenv("XDG_DATA_HOME", str(isolated_env / "data"))
    memory = Memory(isolated_env / "data" / "assistant" / "memory.sqlite3")
    memory.add_turn(tool_turn(0))
    memory.add_reminder(10.0, "tea", now=0.0)
    assert cli.main(["history", "show"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "user: question 0",
        "assistant:  [calls get_time]",
        'tool: {"time": "14:05"}',
        "assistant: answer 0",
    ]
    assert cli.main(["history", "reset"]) == 0
    assert capsys.readouterr().out.startswith("erased 1 stored turn from ")
    assert memory.turns() == [] and len(memory.pending_reminders()) == 1
    assert (
        cli.main(["history"]) == 0
    )  # `show` is the default; nothing stored: says so on stderr (it printed nothing at all)
    shown = capsys.readouterr()
    assert shown.out == "" and shown.err == f"no stored turns in {memory.path}\n"


def test_cli_history_off_the_record_still_shows_what_is_on_the_disk(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With memory.off_the_record on, `assistant history` shows the turns stored before it was turned on and says
    the daemon ignores them (it said "no stored turns", while `history reset` then erased them)."""
    from assistant import cli

    monkeypatch.setenv("XDG_DATA_HOME", str(isolated_env / "data"))
    memory = Memory(isolated_env / "data" / "assistant" / "memory.sqlite3")
    memory.add_turn(tool_turn(0))
    assert cli.main(["history", "--set", "memory.off_the_record=true"]) == 0
    shown = capsys.readouterr()
    assert shown.out.splitlines()[0] == "user: question 0"
    assert shown.err.startswith("memory.off_the_record is on: the daemon neither loads nor adds to these turns")


def test_a_memory_path_that_is_a_folder_says_so(tmp_path: Path) -> None:
    """memory.path naming a folder fails in one line saying it is a folder and suggesting a file in it (it said
    "close the program that holds it, or check the file's permissions", neither of which is the problem)."""
    with pytest.raises(ConfigError) as e:
        Memory(tmp_path)
    assert str(e.value).endswith(
        f"; it is a folder; set `memory.path` to a file, e.g. {tmp_path / 'memory.sqlite3'}"
    ), str(e.value)
    assert "permissions" not in str(e.value)
