"""Memory across restarts: the conversation history and the reminders in one small SQLite database.

Each completed turn is one row (its messages as JSON), inserted in its own transaction: after a crash or
`kill -9` the database holds every turn that completed and nothing half-written. Reminders are rows with a due
time (Unix seconds) and a fired time once spoken. Off the record, the history is neither read nor written;
reminders are still kept, since a reminder must survive a restart to be any use. Pure stdlib: no asyncio.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant import paths
from assistant.errors import ConfigError
from assistant.llm import Message
from assistant.tools.calls import ToolCall

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, messages TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reminders (
    id INTEGER PRIMARY KEY AUTOINCREMENT, due REAL NOT NULL, text TEXT NOT NULL, created REAL NOT NULL, fired REAL
);
CREATE INDEX IF NOT EXISTS reminders_pending ON reminders (fired, due);
"""


def default_path() -> Path:
    """memory.sqlite3 in the user's data folder (~/.local/share/assistant, $XDG_DATA_HOME; macOS:
    ~/Library/Application Support/assistant)."""
    return paths.data_dir() / "memory.sqlite3"


@dataclass(frozen=True)
class Reminder:
    id: int
    due: float  # Unix time, s
    text: str  # what to say; "" for a plain timer
    created: float


def _encode(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.interrupted:
        out["interrupted"] = True
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": dict(c.arguments)} for c in m.tool_calls]
    if m.role == "tool":
        out.update(tool_call_id=m.tool_call_id, name=m.name)
    return out


def _decode(d: Mapping[str, Any]) -> Message:
    calls = tuple(ToolCall(c["name"], c.get("arguments", {}), id=c["id"]) for c in d.get("tool_calls", ()))
    return Message(
        d["role"],
        d["content"],
        interrupted=bool(d.get("interrupted", False)),
        tool_calls=calls,
        tool_call_id=d.get("tool_call_id", ""),
        name=d.get("name", ""),
    )


def _open_fix(e: BaseException, path: Path) -> str:
    """The fix for a database that does not open; only a file that is no database is to be moved aside, never
    deleted (the advice to delete it was given for a missing folder or a lock too, and lost the history)."""
    if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError):
        return (
            f"it is damaged or not a database: move it aside (`mv '{path}' '{path}.bad'`; a new one is made at the "
            "next start), or set `memory.path` to another file"
        )
    if isinstance(e, OSError):
        return f"make {path.parent} a folder you can write, or set `memory.path` to a file in one"
    if path.is_dir():  # sqlite says only "unable to open database file"
        return f"it is a folder; set `memory.path` to a file, e.g. {path / 'memory.sqlite3'}"
    return "close the program that holds it, or check the file's permissions, or set `memory.path` to another file"


class Memory:
    """The database of one daemon. Not thread-safe: use it from one thread (the event loop's)."""

    def __init__(self, path: Path, off_the_record: bool = False) -> None:
        self.path = path
        self.off_the_record = off_the_record
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: transactions are explicit
            # WAL + FULL: a committed turn survives a crash of the process or the machine; secure_delete
            # overwrites erased history instead of leaving it in free pages.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as e:
            raise ConfigError(f"memory database {path} cannot be opened: {e}; {_open_fix(e, path)}") from e
        os.chmod(path, 0o600)

    def close(self) -> None:
        self._db.close()

    # ---- history --------------------------------------------------------------------------------------------

    def add_turn(self, messages: Sequence[Message]) -> None:
        """Store one completed turn (its user message and all that followed), atomically. No-op off the record."""
        if self.off_the_record or not messages:
            return
        blob = json.dumps([_encode(m) for m in messages], ensure_ascii=False)
        with self._db:  # one transaction: the turn is stored whole or not at all
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO turns (at, messages) VALUES (?, ?)", (time.time(), blob))

    def turns(self) -> list[list[Message]]:
        """Every stored turn, oldest first ([] off the record)."""
        if self.off_the_record:
            return []
        rows = self._db.execute("SELECT messages FROM turns ORDER BY id").fetchall()
        return [[_decode(d) for d in json.loads(blob)] for (blob,) in rows]

    def history(self) -> list[Message]:
        """The stored history as one message list, oldest first."""
        return [m for turn in self.turns() for m in turn]

    def keep_newest(self, messages: int) -> int:
        """Delete the oldest turns not among the newest `messages` messages (after the history was trimmed to
        the token budget at load); returns how many turns were deleted."""
        rows = self._db.execute("SELECT id, json_array_length(messages) FROM turns ORDER BY id DESC").fetchall()
        kept = 0
        for turn_id, count in rows:
            if kept + count > messages:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    n = self._db.execute("DELETE FROM turns WHERE id <= ?", (turn_id,)).rowcount
                return int(n)
            kept += count
        return 0

    def reset_history(self) -> int:
        """Erase the stored history (works off the record too); returns how many turns were erased."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            n = self._db.execute("DELETE FROM turns").rowcount
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no erased turn left in the write-ahead log
        return int(n)

    # ---- reminders --------------------------------------------------------------------------------------------

    def add_reminder(self, due: float, text: str, now: float) -> Reminder:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("INSERT INTO reminders (due, text, created) VALUES (?, ?, ?)", (due, text, now))
        assert cur.lastrowid is not None
        return Reminder(cur.lastrowid, due, text, now)

    def pending_reminders(self) -> list[Reminder]:
        """Reminders not yet fired, soonest first."""
        rows = self._db.execute(
            "SELECT id, due, text, created FROM reminders WHERE fired IS NULL ORDER BY due, id"
        ).fetchall()
        return [Reminder(*row) for row in rows]

    def cancel_reminder(self, reminder_id: int) -> bool:
        """Delete a pending reminder; False when there is none with that id."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            n = self._db.execute("DELETE FROM reminders WHERE id = ? AND fired IS NULL", (reminder_id,)).rowcount
        return bool(n)

    def mark_fired(self, reminder_id: int, at: float) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE reminders SET fired = ? WHERE id = ?", (at, reminder_id))
