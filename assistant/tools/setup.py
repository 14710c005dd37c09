"""Builds the toolbox the config asks for (`tools.enabled`), and the memory database (`[memory]`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from assistant.config import Config, MemoryConfig
from assistant.errors import ConfigError
from assistant.memory import Memory, default_path
from assistant.tools.builtin import BUILTIN, reminder_tools, time_tool, zone
from assistant.tools.registry import Tool, Toolbox
from assistant.tools.timers import ReminderScheduler
from assistant.tools.user import user_tool


def open_memory(cfg: MemoryConfig) -> Memory:
    """The memory database at `memory.path` (or the default in the user's data folder). Raises ConfigError."""
    return Memory(Path(cfg.path).expanduser() if cfg.path else default_path(), off_the_record=cfg.off_the_record)


def build_toolbox(
    cfg: Config, memory: Memory, clock: Callable[[], float] = time.time
) -> tuple[Toolbox, ReminderScheduler]:
    """The enabled tools, in `tools.enabled` order, and the reminder scheduler they share. Raises ConfigError
    for an unknown name or time zone."""
    tz = zone(cfg.tools.timezone)
    shadowed = next((name for name in cfg.tools.custom if name in BUILTIN), None)
    if shadowed is not None:  # `tools.enabled` would name the built-in set: the declared tool could never run
        raise ConfigError(
            f"[tools.custom.{shadowed}] has the name of the built-in `{shadowed}` tools; rename the table (and its "
            "entry in `tools.enabled`)"
        )
    scheduler = ReminderScheduler(memory, clock)
    tools: list[Tool] = []
    for name in cfg.tools.enabled:
        if name == "time":
            tools.append(time_tool(tz, clock))
        elif name == "reminders":
            tools += reminder_tools(memory, scheduler, tz)
        elif name in cfg.tools.custom:
            tools.append(user_tool(name, cfg.tools.custom[name]))
        else:
            known = ", ".join([*BUILTIN, *cfg.tools.custom]) or "none"
            raise ConfigError(
                f"`tools.enabled` names `{name}`, which is neither built in nor declared in "
                f"[tools.custom.{name}]; known: {known}"
            )
    names = [t.name for t in tools]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:  # the model would see two functions of one name, and only the last would run
        raise ConfigError(
            f"two enabled tools are named `{twice}` (a [tools.custom] table and a built-in tool, or a name listed "
            "twice in `tools.enabled`); rename the custom one or list it once"
        )
    return Toolbox(tools), scheduler
