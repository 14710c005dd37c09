"""The built-in tools: the current date and time, and reminders/timers. Both touch only this machine.

Times are read and spoken in the user's time zone (`tools.timezone`, "" = the system's).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from assistant.errors import ConfigError
from assistant.memory import Memory, Reminder
from assistant.tools.registry import Tool, ToolFailed
from assistant.tools.timers import ReminderScheduler

BUILTIN = ("time", "reminders")  # names for `tools.enabled`
# Longest reminder: a year ahead is already beyond what a voice assistant should promise.
MAX_AHEAD_S = 366 * 24 * 3600


def system_zone() -> tzinfo:
    """The system's time zone with its daylight-saving rules: `$TZ` (a zone name or file), else /etc/localtime
    (macOS and Linux link it into a zoneinfo folder). Today's fixed UTC offset only when neither names a zone."""
    tz = os.environ.get("TZ", "").lstrip(":")
    path = tz if os.path.isabs(tz) else "" if tz else "/etc/localtime"
    key = os.path.realpath(path).partition("zoneinfo/")[2] if path else tz
    if key:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
            return ZoneInfo(key)  # cached by name: the date line asks for it every reply
    if path:
        with contextlib.suppress(OSError, ValueError), open(path, "rb") as f:
            return ZoneInfo.from_file(f)
    # a fixed offset is an hour off after the next DST change (a POSIX TZ rule string lands here too)
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local


def zone(name: str) -> tzinfo:
    """The time zone `name` (IANA, e.g. "Europe/Paris"); "" = the system's (`system_zone`). Raises ConfigError."""
    if not name:
        return system_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(
            f"`tools.timezone` = {name!r} is not a known time zone; use an IANA name such as "
            '"Europe/Paris" or "America/New_York", or "" for the system\'s'
        ) from e


def zone_name(tz: tzinfo, at: datetime) -> str:
    return getattr(tz, "key", None) or at.tzname() or "local time"


def date_line(now: float, tz: tzinfo) -> str:
    """One sentence for the system prompt: today's date and the time zone (changes once a day, so the prompt
    cache stays valid all day)."""
    at = datetime.fromtimestamp(now, tz)
    return f"Today is {at:%A}, {at.day} {at:%B %Y}; the user's time zone is {zone_name(tz, at)}."


def _clock_text(at: datetime) -> str:
    return f"{at:%H:%M}"


def _span(seconds: float) -> str:
    """A duration as words a TTS reads well: "1 hour 5 minutes", "30 seconds"."""
    s = max(0, round(seconds))
    parts = [(s // 86400, "day"), (s % 86400 // 3600, "hour"), (s % 3600 // 60, "minute")]
    words = [f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in parts if n]
    if s < 3600 and s % 60:
        words.append(f"{s % 60} second{'s' if s % 60 != 1 else ''}")
    return " ".join(words) or "now"


def time_tool(tz: tzinfo, clock: Callable[[], float] = time.time) -> Tool:
    async def run(_: Mapping[str, Any]) -> dict[str, Any]:
        at = datetime.fromtimestamp(clock(), tz)
        return {
            "time": _clock_text(at),
            "weekday": f"{at:%A}",
            "date": at.date().isoformat(),
            "timezone": zone_name(tz, at),
            "utc_offset": f"{at:%z}"[:3] + ":" + f"{at:%z}"[3:],
        }

    return Tool(
        "get_time",
        "The current date and time in the user's time zone.",
        {"type": "object", "properties": {}},
        run,
        timeout_s=2.0,
    )


def _describe(r: Reminder, tz: tzinfo, now: float) -> dict[str, Any]:
    at = datetime.fromtimestamp(r.due, tz)
    today = at.date() == datetime.fromtimestamp(now, tz).date()
    when = _clock_text(at) if today else f"{at:%A} {at.day} {at:%B} {_clock_text(at)}"
    return {"id": r.id, "text": r.text, "due": when, "in": _span(r.due - now)}


def _due_at(args: Mapping[str, Any], tz: tzinfo, now: float) -> float:
    units = {"in_seconds": 1, "in_minutes": 60, "in_hours": 3600}
    ahead = sum(float(args.get(key, 0)) * scale for key, scale in units.items())
    at = str(args.get("at", "")).strip()
    if at and ahead:
        raise ToolFailed("give either `at` or in_seconds/in_minutes/in_hours, not both")
    if at:
        base = datetime.fromtimestamp(now, tz)
        try:
            if len(at) <= 5:  # "HH:MM": the next time the clock shows it
                hour, minute = (int(x) for x in at.split(":"))
                due = base.replace(hour=hour, minute=minute, second=0, microsecond=0)
                if due.timestamp() <= now:
                    due += timedelta(days=1)
            else:
                due = datetime.fromisoformat(at)
                due = due if due.tzinfo else due.replace(tzinfo=tz)
        except ValueError as e:
            raise ToolFailed(f'`at` = {at!r} is not a time; use "HH:MM" or "YYYY-MM-DDTHH:MM"') from e
        ahead = due.timestamp() - now
    if not 0 < ahead <= MAX_AHEAD_S:
        raise ToolFailed("the reminder must be between 1 second and a year from now")
    return now + ahead


def reminder_tools(memory: Memory, scheduler: ReminderScheduler, tz: tzinfo) -> list[Tool]:
    """set_reminder, list_reminders and cancel_reminder over the memory database."""
    clock = scheduler.clock

    async def set_reminder(args: Mapping[str, Any]) -> dict[str, Any]:
        now = clock()
        reminder = memory.add_reminder(_due_at(args, tz, now), str(args.get("text", "")).strip(), now)
        scheduler.changed()
        return {"set": _describe(reminder, tz, now)}

    async def list_reminders(_: Mapping[str, Any]) -> dict[str, Any]:
        now = clock()
        return {"reminders": [_describe(r, tz, now) for r in memory.pending_reminders()]}

    async def cancel_reminder(args: Mapping[str, Any]) -> dict[str, Any]:
        pending = memory.pending_reminders()
        if args.get("all"):
            ids = [r.id for r in pending]
        elif "id" in args:
            ids = [int(args["id"])]
        else:
            raise ToolFailed("give the `id` of a reminder (list_reminders shows them) or all=true")
        cancelled = [i for i in ids if memory.cancel_reminder(i)]
        scheduler.changed()
        if not cancelled and ids:
            raise ToolFailed(f"no pending reminder has id {ids[0]}; list_reminders shows them")
        return {"cancelled": cancelled}

    number = {"type": "number"}
    return [
        Tool(
            "set_reminder",
            "Set a timer or a reminder. Give when (`in_minutes`, `in_seconds`, `in_hours`, or a clock time `at` "
            "as HH:MM) and optionally `text`, what to say when it fires.",
            {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "what to remind the user of; empty for a timer"},
                    "in_seconds": number,
                    "in_minutes": number,
                    "in_hours": number,
                    "at": {"type": "string", "description": "HH:MM or YYYY-MM-DDTHH:MM, the user's local time"},
                },
            },
            set_reminder,
            timeout_s=2.0,
        ),
        Tool(
            "list_reminders",
            "List the pending timers and reminders.",
            {"type": "object", "properties": {}},
            list_reminders,
            timeout_s=2.0,
        ),
        Tool(
            "cancel_reminder",
            "Cancel a timer or reminder by its id (from list_reminders), or all of them.",
            {"type": "object", "properties": {"id": {"type": "integer"}, "all": {"type": "boolean"}}},
            cancel_reminder,
            timeout_s=2.0,
        ),
    ]
