"""The daemon's `/v1/realtime` backend: each session holds a `Conversation` of its own over the daemon's engines.

A session gets its own chat (history and prompt cache) and transcriber from `RealtimeEngines.new_session` (the
composition root's `SharedEngines`), shares the daemon's compute thread and TTS, and runs the Realtime policy.
What its client sets (instructions, voice, turn detection, functions, item edits) goes to the conversation's
context, tools and engines; server/controller.py states the contracts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from assistant.bus import Subscription
from assistant.conversation import Conversation
from assistant.endofturn import EndOfTurnPolicy
from assistant.engines import Engines
from assistant.errors import AssistantError, InputError
from assistant.events import (
    ErrorEvent,
    FinalTranscript,
    FunctionCall,
    ResponseAudio,
    ResponseDone,
    ResponseStarted,
    ResponseTextDelta,
    SessionEvent,
    SpeechEnded,
    SpeechStarted,
)
from assistant.llm import History
from assistant.policies import realtime_turns
from assistant.tools.calls import ToolChoice
from assistant.turns import CommandKind

# what the Realtime translation builds items, transcripts and response.done from
KEPT = (
    SpeechStarted,
    SpeechEnded,
    FinalTranscript,
    ResponseStarted,
    ResponseTextDelta,
    FunctionCall,
    ResponseDone,
    ErrorEvent,
)
QUEUE_LIMIT = 4096  # events waiting for the client; reply audio is ~10 chunks a second


def drop_rank(ev: SessionEvent) -> int:
    """Which events a full session queue loses first (lowest rank): reply audio (0), then events the Realtime
    translation builds nothing from (1); the rest (2: items, transcripts, text deltas a response.done is built from,
    ends, errors) go only when the queue holds nothing else."""
    if isinstance(ev, ResponseAudio):
        return 0
    if isinstance(ev, KEPT):
        return 2
    return 1


class RealtimeEngines(Protocol):
    """What Realtime sessions need from the daemon's loaded engines (the composition root implements it)."""

    def new_session(self, voice: str | None) -> Engines: ...  # on the compute thread


class Sessions:
    """The daemon's RealtimeBackend: Realtime conversations over the daemon's engines and compute thread."""

    def __init__(self, daemon: Conversation, source: RealtimeEngines, limit: int) -> None:
        self.daemon = daemon
        self.source = source
        self.limit = limit
        self.open: set[RealtimeSession] = set()

    async def open_session(self) -> RealtimeSession:
        if len(self.open) >= self.limit:
            raise AssistantError(
                f"{len(self.open)} realtime sessions are open, the most allowed; close one or raise "
                "server.realtime_sessions"
            )
        cfg = self.daemon.cfg
        engines = await self.daemon.compute.run(self.source.new_session, cfg.tts.voice or None)
        conversation = Conversation(cfg, engines, None, None, self.daemon.compute, realtime=True)
        session = RealtimeSession(conversation, on_close=self.open.discard)
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


class RealtimeSession:
    """One `/v1/realtime` connection's conversation and what its client sets on it."""

    def __init__(self, conversation: Conversation, on_close: Callable[[RealtimeSession], None]) -> None:
        self.conversation = conversation
        self._on_close = on_close
        # from the start: a session's events all go out (a slow reader loses audio first)
        self._events = conversation.bus.subscribe(QUEUE_LIMIT, drop_rank)

    # ---- the turn's inputs and events: the conversation's ----------------------------------------------------

    def on_audio(self, samples: np.ndarray) -> None:
        self.conversation.on_audio(samples)

    def command(self, kind: CommandKind) -> None:
        self.conversation.command(kind)

    def add_user_text(self, text: str) -> None:
        self.conversation.add_user_text(text)

    def create_response(self, instructions: str | None = None) -> None:
        self.conversation.create_response(instructions)

    def events(self) -> Subscription[SessionEvent]:
        return self._events

    @property
    def dropped(self) -> int:
        """Events lost so far because the client read them too slowly."""
        return self._events.dropped

    async def aclose(self) -> None:
        await self.conversation.aclose()
        self._on_close(self)

    # ---- what the client sets -------------------------------------------------------------------------------

    def set_instructions(self, text: str) -> None:
        self.conversation.context.set_instructions(text)

    def set_temperature(self, value: float) -> None:
        self.conversation.context.set_temperature(value)

    def check_voice(self, name: str) -> None:
        self.conversation.check_voice(name)

    def set_voice(self, name: str) -> None:
        self.conversation.set_voice(name)

    def set_turn_detection(
        self,
        hangover_ms: int | None,
        create_response: bool,
        interrupt_response: bool,
        semantic: EndOfTurnPolicy | None = None,
        vad_level: int | None = None,
    ) -> None:
        c = self.conversation
        scorer = c.engines.score_turn
        c.retune(*realtime_turns(c.cfg, hangover_ms, create_response, interrupt_response, semantic, scorer, vad_level))

    @property
    def can_call_tools(self) -> bool:
        return self.conversation.engines.chat.can_call_tools

    def set_functions(self, tools: list[dict[str, Any]], choice: ToolChoice) -> None:
        self.conversation.tools.set_functions(tools, choice)
        self.conversation.offer(tools, choice)

    def functions_for_next_response(self, tools: list[dict[str, Any]], choice: ToolChoice) -> None:
        self.conversation.tools.functions_for_next_response(tools, choice)

    def add_function_output(self, call_id: str, output: str) -> None:
        self.conversation.tools.add_output(call_id, output)
        self.conversation.command("tool_output")

    def delete_item(self, role: str, text: str) -> None:
        c = self.conversation
        history = History(c.engines.chat.history)
        if not history.forget(role, text):
            raise InputError(f"the conversation holds no {role} message with that text; delete it after it is answered")
        c.background("deleting a conversation item", c.engines.chat.restore, history.messages())

    def truncate_response(self, turn: int, audio_end_ms: int) -> None:
        c = self.conversation
        reply = c.kept.get(turn)
        if reply is None or not reply.result.done():
            raise InputError(f"response {turn} is not a finished answer of this session; truncate after response.done")
        recorded = reply.result.result().strip()
        heard = reply.heard.heard(audio_end_ms * c.engines.tts.sample_rate // 1000, reply.answer)
        if heard != recorded:
            c.background("truncating the answer", c.engines.chat.revise_answer, recorded, heard)


if TYPE_CHECKING:  # mypy proves the conversation implements what the server expects

    def _conforms(sessions: Sessions, session: RealtimeSession) -> None:
        from assistant.server.controller import RealtimeBackend
        from assistant.server.controller import RealtimeSession as SessionProtocol

        _b: RealtimeBackend = sessions
        _s: SessionProtocol = session
