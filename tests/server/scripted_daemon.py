"""A headless daemon (what `assistant run` builds without a sound card) whose chats are scripted stand-ins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from assistant import cli
from assistant.audio.sinks import NullSink
from assistant.compute import Compute
from assistant.config import Config
from assistant.conversation import Conversation
from assistant.daemon import DaemonControl
from assistant.server.ws import ControlServer
from assistant.sessions import Sessions


class ScriptedSessions(cli.SharedEngines):
    """The daemon's Realtime session engines with each session's chat replaced by `make_chat(real_chat)`."""

    def __init__(self, cfg: Config, engines: Any, make_chat: Callable[[Any], Any]) -> None:
        super().__init__(cfg, engines)
        self.make_chat = make_chat

    def new_session(self, voice: str | None) -> Any:
        engines = super().new_session(voice)
        engines.chat = self.make_chat(engines.chat)
        return engines


@asynccontextmanager
async def scripted_daemon(
    cfg: Config, session_chat: Callable[[Any], Any] = lambda chat: chat, daemon_chat: Any = None, toolbox: Any = None
) -> AsyncIterator[tuple[ControlServer, Conversation]]:
    """Engines on one compute thread, the daemon's conversation (its chat `daemon_chat` when given, its own tools
    `toolbox`) and the server; Realtime sessions get `session_chat(their real chat)`."""
    compute = Compute()
    try:
        engines = await compute.run(cli.build_engines, cfg)
        real = engines.chat
        if daemon_chat is not None:
            engines.chat = daemon_chat
        pipeline = Conversation(cfg, engines, None, NullSink(), compute, toolbox=toolbox)
        shared = ScriptedSessions(cfg, engines, session_chat)
        shared.engines = type(engines)(engines.transcriber, real, engines.tts, engines.voice, engines.make_vad)
        backend = Sessions(pipeline, shared, cfg.server.realtime_sessions)
        async with ControlServer(cfg.server, DaemonControl(pipeline), backend) as server:
            yield server, pipeline
        await pipeline.aclose()
    finally:
        await asyncio.to_thread(compute.close, 5.0)
