"""What one conversation's chat knows beyond its turns: the instructions, today's date and the stored history.

The system prompt is the instructions and, when the chat has tools, a line with today's date (so "tomorrow" and
reminders mean something); the line changes once a day, and the prompt (and its cache) only then. A Realtime
`response.create` may give one reply instructions of its own. The daemon's history is kept across restarts in the
memory database (assistant/memory.py): loaded at start, each finished turn stored, none that a history reset cut
off. Chat calls run on the compute thread; the memory database is used from the event loop (its thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from assistant.compute import Compute, Priority
from assistant.engines import ChatLike
from assistant.logs import kv
from assistant.memory import Memory
from assistant.tools.builtin import date_line, zone
from assistant.turns import Responder

log = logging.getLogger("assistant.context")


class ChatContext:
    """The system prompt and the stored history of one conversation's chat; `report` tells of a failure to store."""

    def __init__(
        self,
        chat: ChatLike,
        compute: Compute,
        instructions: str,
        timezone: str,
        memory: Memory | None,
        report: Callable[[BaseException, str], None],
    ) -> None:
        self.chat = chat
        self.compute = compute
        self.instructions = instructions
        self.memory = memory  # None: the history is not kept
        self.epoch = 0  # history resets so far: an answer begun before the latest one is not stored
        self._timezone = timezone
        self._date = ""  # the date line ("" while the chat has no tools)
        self._report = report

    @property
    def prompt(self) -> str:
        return f"{self.instructions}\n\n{self._date}" if self._date else self.instructions

    async def start(self, dated: bool) -> None:
        """Put the date in the prompt when `dated` (the chat has tools); load the stored history into the chat."""
        if dated:
            await self._refresh_date()
        if self.memory is not None:
            await self.compute.run(self.chat.restore, self.memory.history())
            kept = len(await self.compute.run(lambda: self.chat.history))
            dropped = self.memory.keep_newest(kept)
            log.info("history loaded", extra=kv(messages=kept, dropped_turns=dropped))

    async def _refresh_date(self) -> None:
        line = date_line(time.time(), zone(self._timezone))
        if line != self._date:
            self._date = line
            await self.compute.run(self.chat.set_system_prompt, self.prompt, priority=Priority.URGENT)

    async def before_reply(self, responder: Responder) -> None:
        """A reply starts: its own instructions, if any; else an answer to the user sees today's date."""
        if responder.instructions is not None:
            self.compute.submit(self.chat.set_system_prompt, responder.instructions)
        elif self._date and responder.user_text is not None:
            await self._refresh_date()

    def after_reply(self, responder: Responder) -> None:
        """A reply ended: after instructions of its own, the conversation's prompt again."""
        if responder.instructions is not None:
            self.compute.submit(self.chat.set_system_prompt, self.prompt, priority=Priority.URGENT)

    def set_instructions(self, text: str) -> None:
        """The instructions from the next reply on (Realtime session.update, config.set llm.system_prompt)."""
        self.instructions = text
        self.compute.submit(self.chat.set_system_prompt, self.prompt, priority=Priority.URGENT)

    def set_temperature(self, value: float) -> None:
        """Sample the answers at `value` from the next reply on (Realtime session or response temperature)."""
        self.compute.submit(self.chat.set_temperature, value, priority=Priority.URGENT)

    async def remember(self, epoch: int) -> None:
        """Store the turn the chat recorded last, for an answer begun at `epoch`: not when a history reset came
        since; the stored turns the chat has dropped (llm.history_tokens) go, so a daemon running for weeks keeps
        a bounded file. A failure is reported, and the conversation goes on."""
        if self.memory is None or epoch != self.epoch:
            return
        try:
            turn, kept = await self.compute.run(
                lambda: (self.chat.last_turn(), len(self.chat.history)), priority=Priority.URGENT
            )
            self.memory.add_turn(turn)
            if kept and epoch == self.epoch:  # after a reset the chat's length says nothing of the stored turns
                self.memory.keep_newest(kept)
        except Exception as e:
            self._report(e, "storing the turn in the memory database")

    def reset(self) -> None:
        """Erase the history: the chat's (on the compute thread, after the jobs already submitted, such as an
        interrupted answer being recorded) and the stored one; answers begun before are not stored."""
        self.epoch += 1
        self.compute.submit(self.chat.reset, priority=Priority.URGENT)
        if self.memory is not None:
            self.memory.reset_history()
