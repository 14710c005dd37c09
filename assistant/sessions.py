"""The daemon's `/v1/realtime` backend: each session is a `Conversation` of its own over the daemon's engines.

A session gets its own chat (history and prompt cache) and transcriber from `RealtimeEngines.new_session` (the
composition root's `SharedEngines`), shares the daemon's compute thread and TTS, and runs the Realtime policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from assistant.conversation import Conversation
from assistant.engines import Engines
from assistant.errors import AssistantError


class RealtimeEngines(Protocol):
    """What Realtime sessions need from the daemon's loaded engines (the composition root implements it)."""

    def new_session(self, voice: str | None) -> Engines: ...  # on the compute thread


class Sessions:
    """The daemon's RealtimeBackend: Realtime conversations over the daemon's engines and compute thread."""

    def __init__(self, daemon: Conversation, source: RealtimeEngines, limit: int) -> None:
        self.daemon = daemon
        self.source = source
        self.limit = limit
        self.open: set[Conversation] = set()

    async def open_session(self) -> Conversation:
        if len(self.open) >= self.limit:
            raise AssistantError(
                f"{len(self.open)} realtime sessions are open, the most allowed; close one or raise "
                "server.realtime_sessions"
            )
        cfg = self.daemon.cfg
        engines = await self.daemon.compute.run(self.source.new_session, cfg.tts.voice or None)
        session = Conversation(cfg, engines, None, None, self.daemon.compute, realtime=True, on_close=self.open.discard)
        session.set_instructions(cfg.llm.system_prompt)
        self.open.add(session)
        return session

    def default_voice(self) -> str:
        return self.daemon.cfg.tts.voice

    def default_instructions(self) -> str:
        return self.daemon.cfg.llm.system_prompt

    def default_temperature(self) -> float:
        return self.daemon.cfg.llm.temperature

    def vad_defaults(self) -> tuple[int, int]:
        return self.daemon.cfg.vad.aggressiveness, self.daemon.cfg.vad.preroll_ms

    def max_output_tokens(self) -> int:
        return self.daemon.cfg.llm.max_tokens


if TYPE_CHECKING:  # mypy proves the conversation implements what the server expects

    def _conforms(conversation: Conversation, sessions: Sessions) -> None:
        from assistant.server.controller import Controller, RealtimeBackend, RealtimeSession

        _c: Controller = conversation
        _b: RealtimeBackend = sessions
        _s: RealtimeSession = conversation
