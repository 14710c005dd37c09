"""One conversation's chat context: the system prompt (instructions, date line, a reply's own) and the history
kept across restarts (loaded, stored per turn, never a turn a reset cut off)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from assistant.compute import Compute
from assistant.context import ChatContext
from assistant.llm import Message
from assistant.memory import Memory
from assistant.turns import Responder
from tests.pipeline.doubles import ToolChat


def test_the_prompt_has_the_date_only_with_tools_and_a_reply_may_bring_its_own() -> None:
    """With tools the prompt gains today's date line; a reply's own instructions replace the prompt for that reply
    only, and new instructions keep the date line."""

    async def main() -> None:
        compute = Compute()
        chat = ToolChat([])
        plain = ChatContext(chat, compute, "Be brief.", "UTC", None, lambda e, what: None)
        await plain.start(dated=False)
        assert plain.prompt == "Be brief."
        ctx = ChatContext(chat, compute, "Be brief.", "UTC", None, lambda e, what: None)
        await ctx.start(dated=True)
        assert chat.system_prompt.startswith("Be brief.\n\nToday is ") and "time zone is UTC" in chat.system_prompt
        dated = chat.system_prompt
        own = Responder("hi", instructions="Answer in French.")
        await ctx.before_reply(own)
        await compute.run(lambda: None)  # after the submitted prompt change
        assert chat.system_prompt == "Answer in French."
        ctx.after_reply(own)
        await compute.run(lambda: None)
        assert chat.system_prompt == dated
        ctx.set_instructions("Be kind.")
        await compute.run(lambda: None)
        assert chat.system_prompt == dated.replace("Be brief.", "Be kind.")
        compute.close()

    asyncio.run(main())


def test_turns_are_stored_and_loaded_but_none_that_a_reset_cut_off(tmp_path: Path) -> None:
    """A finished turn is stored; one whose answer began before a history reset is not; a failure to store is
    reported; the next start loads what was stored."""

    async def main() -> None:
        compute = Compute()
        memory = Memory(tmp_path / "m.sqlite3")
        failures: list[str] = []
        chat = ToolChat([])
        ctx = ChatContext(chat, compute, "", "", memory, lambda e, what: failures.append(what))
        chat.history = [Message("user", "hello"), Message("assistant", "hi")]
        await ctx.remember(ctx.epoch)
        begun = ctx.epoch
        ctx.reset()
        await compute.run(lambda: None)
        chat.history = [Message("user", "old"), Message("assistant", "answer")]
        await ctx.remember(begun)  # its answer began before the reset
        assert memory.history() == [] and failures == []
        chat.history = [Message("user", "new"), Message("assistant", "turn")]
        await ctx.remember(ctx.epoch)
        memory.close()
        await ctx.remember(ctx.epoch)  # the database is gone: reported, not raised
        assert failures == ["storing the turn in the memory database"]

        again = Memory(tmp_path / "m.sqlite3")
        fresh = ToolChat([])
        await ChatContext(fresh, compute, "", "", again, lambda e, what: None).start(dated=False)
        assert [m.content for m in fresh.history] == ["new", "turn"]
        again.close()
        compute.close()

    asyncio.run(main())


def test_the_stored_history_stays_as_long_as_the_chat_keeps(tmp_path: Path) -> None:
    """Over many turns of a running daemon the database keeps only the turns the chat still holds (it trims to
    llm.history_tokens), not every turn since the start: weeks of talk leave a bounded file and start-up."""

    async def main() -> None:
        compute = Compute()
        memory = Memory(tmp_path / "m.sqlite3")
        chat = ToolChat([])
        ctx = ChatContext(chat, compute, "", "", memory, lambda e, what: None)
        for i in range(200):
            # the chat holds its last three turns, as its token budget would leave it
            chat.history = [*chat.history[-4:], Message("user", f"q{i}"), Message("assistant", f"a{i}")]
            await ctx.remember(ctx.epoch)
        assert [m.content for m in memory.history()] == [m.content for m in chat.history]
        assert len(memory.turns()) == 3
        memory.close()
        compute.close()

    asyncio.run(main())
