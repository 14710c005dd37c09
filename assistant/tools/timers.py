"""The reminder scheduler: yields reminders as they fall due, also while the assistant is idle.

Reminders live in the memory database, so they survive a restart; those that fell due while the daemon was
down come out at once when the scheduler starts. A reminder is marked fired only when the consumer says it was
delivered (`done()`), so one lost to a crash before it was spoken fires again at the next start.
`speak_reminders` is the daemon's service that speaks them through its conversation, like the hotkey presses keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from assistant.memory import Memory, Reminder

# Longest single wait: the wall clock can jump (sleep, NTP) while the loop's clock does not, so re-check.
MAX_WAIT_S = 30.0


class Announcer(Protocol):
    """What speaking reminders needs of the daemon's conversation."""

    async def say(self, text: str) -> None: ...
    async def quiet(self) -> None: ...  # until no reply is in flight
    def failed(self, exc: BaseException, what: str) -> None: ...  # logged and told to clients


def reminder_speech(reminder: Reminder) -> str:
    """What to say when a reminder fires."""
    return f"Reminder: {reminder.text}" if reminder.text else "Your timer is done."


async def speak_reminders(scheduler: ReminderScheduler, voice: Announcer) -> None:
    """Speak each reminder when it falls due (also while idle), after any reply in progress; until cancelled. The
    database failing (a full disk, a lock held too long) is reported once and retried every MAX_WAIT_S: it ended
    this service for the life of the daemon, and no reminder was spoken again."""
    failing = False
    while True:
        try:
            async for reminder in scheduler.due():
                failing = False
                await voice.quiet()
                try:
                    await voice.say(reminder_speech(reminder))
                except Exception as e:
                    voice.failed(e, f"speaking reminder {reminder.id}")
                    continue
                scheduler.done(reminder)  # not marked fired if this fails: it is spoken again at the next start
        except Exception as e:
            if not failing:
                voice.failed(e, "reading or updating the reminders in the memory database (retrying)")
            failing = True
            await asyncio.sleep(MAX_WAIT_S)


class ReminderScheduler:
    """Wakes at the next due time, or when a reminder is added or cancelled (`changed()`)."""

    def __init__(self, memory: Memory, clock: Callable[[], float] = time.time) -> None:
        self.memory = memory
        self.clock = clock
        self._changed = asyncio.Event()
        self._handed_out: set[int] = set()

    def changed(self) -> None:
        """Call after adding or cancelling a reminder, so the next due time is recomputed."""
        self._changed.set()

    def done(self, reminder: Reminder) -> None:
        """The reminder was delivered (spoken): it will not fire again."""
        self.memory.mark_fired(reminder.id, self.clock())

    async def due(self) -> AsyncIterator[Reminder]:
        """Each reminder once, when it falls due (soonest first); runs until cancelled."""
        while True:
            self._changed.clear()
            now = self.clock()
            pending = [r for r in self.memory.pending_reminders() if r.id not in self._handed_out]
            ready = [r for r in pending if r.due <= now]
            for reminder in ready:
                self._handed_out.add(reminder.id)
                yield reminder
            if ready:
                continue
            wait = min([r.due - now for r in pending] + [MAX_WAIT_S])
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    await self._changed.wait()
            except TimeoutError:
                pass
