"""The daemon's lifetime: run the pipeline and its services until SIGINT/SIGTERM, then stop within 2 s.

Stopping is bounded whatever the devices or engines do: the first signal starts an orderly stop and arms a
deadline that exits the process (code EXIT_FORCED) if the stop has not finished by then; a second signal exits at
once (128 + the signal number). A clean stop exits 0.

Also what the composition root needs: the microphone source that reopens a lost device (the one reopen path),
and `DaemonControl`, what the control channel sees of the daemon. The terminal's status line is
assistant/console.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, cast

from assistant import settings
from assistant.audio.format import AudioBlock
from assistant.bus import Subscription
from assistant.console import Console, StatusLine
from assistant.conversation import Conversation
from assistant.errors import AudioDeviceError, InputError
from assistant.events import Event
from assistant.logs import kv
from assistant.policies import daemon_policy, end_of_turn
from assistant.tools.apps import Send
from assistant.turns import CommandKind

log = logging.getLogger("assistant.daemon")

SHUTDOWN_S = 2.0  # SIGINT/SIGTERM to exit, at most
DEADLINE_S = SHUTDOWN_S - 0.2  # the forced exit leaves room for the process to end
PIPELINE_STOP_S, SERVICES_STOP_S = 0.6, 0.5  # then the composition root's own close (compute: 0.5 s)
EXIT_FORCED = 1  # the orderly stop did not finish in time (a wedged device or engine); the process exited anyway
Service = Callable[["DaemonControl"], AbstractAsyncContextManager[Any]]  # what a service drives: the daemon's control
NO_HOTKEY = "no hotkey listens in this daemon (it starts one only when it starts in a push-to-talk mode)"


class CaptureLike(Protocol):
    async def read(self) -> AudioBlock: ...
    def suspend(self) -> None: ...
    async def resume(self) -> None: ...
    async def __aenter__(self) -> CaptureLike: ...
    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any: ...


class ReopeningSource:
    """An AudioSource over a capture factory: opens on first read, closes on AudioDeviceError, reopens next read.

    The pipeline waits `audio.device_retry_s` between failed reads, so a lost device is retried at that pace.
    Opening and closing never block the event loop (Capture bounds each PortAudio call).
    """

    def __init__(self, open_capture: Callable[[], CaptureLike]) -> None:
        self._open = open_capture
        self._capture: CaptureLike | None = None
        self._source: CaptureLike | None = None

    async def read(self) -> AudioBlock:
        if self._source is None:
            capture = self._open()
            self._source = await capture.__aenter__()
            self._capture = capture
        try:
            return await self._source.read()
        except AudioDeviceError:
            await self.aclose()
            raise

    async def suspend(self) -> None:
        """Close the open microphone stream for a device switch, keeping what it captured (see Capture.suspend)."""
        if self._source is not None:
            self._source.suspend()

    async def resume(self) -> None:
        """Reopen the microphone suspended for a device switch, on the (new) default device."""
        if self._source is not None:
            await self._source.resume()

    async def aclose(self) -> None:
        capture, self._capture, self._source = self._capture, None, None
        if capture is not None:
            with contextlib.suppress(Exception):
                await capture.__aexit__(None, None, None)


class DaemonControl:
    """The daemon as its control channel sees it (the native protocol's `Controller`; server/controller.py states
    the contracts): turns go to its conversation; config, history and connected apps' tools are changed here."""

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.restart_required: list[str] = []  # config.set keys that take effect at the next start
        self.hotkey_problem: str | None = NO_HOTKEY  # None while the hotkey listens (hotkey_service)

    # ---- the turns: the conversation's ----------------------------------------------------------------------

    @property
    def turn(self) -> int:
        return self.conversation.core.turn

    def status(self) -> dict[str, Any]:
        c = self.conversation
        return {
            "state": c.core.state.value,
            "turn": c.core.turn,
            "mode": c.cfg.pipeline.mode,
            "muted": c.core.muted,
            "ptt": c.core.ptt,
            "speculating": c.core.speculating,
            "device_ok": c.device_ok and c.source is not None,  # headless: no microphone to be ok
            "output_ok": c.output_ok,
            "headless": c.source is None,
            "subscribers": c.bus.subscribers,
            "dropped_events": c.bus.dropped,
            "restart_required": list(self.restart_required),
        }

    async def say(self, text: str) -> None:
        await self.conversation.say(text)

    async def ask(self, text: str) -> str:
        return await self.conversation.ask(text)

    def command(self, kind: CommandKind) -> None:
        self.conversation.command(kind)

    def subscribe(self, maxsize: int = 256) -> Subscription[Event]:
        return self.conversation.subscribe(maxsize)

    # ---- config, history, apps' tools -----------------------------------------------------------------------

    def config_get(self) -> dict[str, Any]:
        return settings.public(self.conversation.cfg)

    def config_set(self, changes: dict[str, object]) -> dict[str, Any]:
        """Validate `{"section.key": value}` (settings.apply: live keys only, voices that exist), then apply."""
        c, old = self.conversation, self.conversation.cfg
        new = settings.apply(old, changes, cast(settings.VoiceCatalog, c.engines.tts), self.hotkey_problem)
        self.restart_required = sorted({*self.restart_required, *settings.at_restart(changes)})
        if new.llm.system_prompt != old.llm.system_prompt:
            c.context.set_instructions(new.llm.system_prompt)
        if new.logging.level != old.logging.level:
            logging.getLogger("assistant").setLevel(new.logging.level.upper())
        if new.tts.voice != old.tts.voice:
            c.set_voice(new.tts.voice)
        c.retune(new, daemon_policy(new), end_of_turn(new, c.engines.score_turn))
        return self.config_get()

    def history_get(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(m) for m in self.conversation.engines.chat.history]

    def history_reset(self) -> None:
        self.conversation.command("interrupt")  # first: its answer is recorded before the reset, not stored after
        self.conversation.context.reset()

    def set_app_tools(self, owner: str, tools: list[dict[str, Any]], timeout_s: float, send: Send) -> list[str]:
        c = self.conversation
        if tools and not c.engines.chat.can_call_tools:
            raise InputError(
                f"the LLM `{c.cfg.llm.model}` has no tool-call format in its chat template, so it cannot call "
                "app tools; set llm.model to a model whose template renders tools (Gemma 4, Qwen 3, ...)"
            )
        offered = c.tools.set_app_tools(owner, tools, timeout_s, send)
        c.offer([t.schema() for t in offered])
        return [t.name for t in offered] if c.engines.chat.can_call_tools else []

    def app_tool_result(self, owner: str, call_id: str, output: str, error: str | None = None) -> None:
        self.conversation.tools.apps.answer(owner, call_id, output, error)

    def app_gone(self, owner: str) -> None:
        if (offered := self.conversation.tools.app_gone(owner)) is not None:
            self.conversation.offer([t.schema() for t in offered])


async def serve(
    pipeline: Conversation,
    services: Sequence[Service] = (),
    console: Console | None = None,
    ready: Callable[[], None] | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (or the source fails for good); stop streams and services within SHUTDOWN_S."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, _on_signal, sig, stop)
    tasks: list[asyncio.Task[Any]] = []
    code, began = 0, time.monotonic()
    try:
        await pipeline.warmup()  # the first turn is as fast as the tenth: nothing compiles after "listening"
        async with _services(DaemonControl(pipeline), services):
            tasks.append(asyncio.create_task(pipeline.run(), name="listen"))
            if console is not None:
                tasks.append(asyncio.create_task(StatusLine(pipeline, console).run(), name="status"))
            stopper = asyncio.create_task(stop.wait(), name="stop")
            log.info("listening", extra=kv(mode=pipeline.cfg.pipeline.mode))
            if ready is not None:
                ready()
            done, _ = await asyncio.wait([tasks[0], stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if tasks[0] in done and (exc := tasks[0].exception()) is not None:
                log.error("the listening loop failed", exc_info=exc)
                code = 1
            began = time.monotonic()
            log.info("stopping")
            await _shutdown(pipeline, tasks)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped", extra=kv(shutdown_s=round(time.monotonic() - began, 3)))
    return code


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    """First signal: stop in order, with a deadline that exits anyway. Second: exit at once."""
    if stop.is_set():
        _exit_now(128 + sig, f"{sig.name} again: exiting at once")
    stop.set()
    for again in (signal.SIGINT, signal.SIGTERM):  # from now on the Python-level handler, run even if the loop hangs
        signal.signal(again, _second_signal)
    deadline = threading.Timer(DEADLINE_S, _exit_now, (EXIT_FORCED, f"not stopped {DEADLINE_S:g} s after {sig.name}"))
    deadline.daemon = True
    deadline.start()


def _second_signal(signum: int, frame: object) -> None:
    _exit_now(128 + signum, f"{signal.Signals(signum).name} again: exiting at once")


def _exit_now(code: int, why: str) -> None:
    """Leave the process now, whatever is still running (from any thread)."""
    log.error("%s; exiting with code %d", why, code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextlib.asynccontextmanager
async def _services(control: DaemonControl, services: Sequence[Service]) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for make in services:
            await stack.enter_async_context(make(control))
        try:
            yield
        finally:
            with contextlib.suppress(TimeoutError):  # services get what is left of the budget
                async with asyncio.timeout(SERVICES_STOP_S):
                    await stack.aclose()


async def _shutdown(pipeline: Conversation, tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    try:
        async with asyncio.timeout(PIPELINE_STOP_S):
            await asyncio.gather(*tasks, return_exceptions=True)
            await pipeline.aclose()
    except TimeoutError:
        log.warning("shutdown took too long; exiting anyway")


def background(work: Callable[[Conversation], Coroutine[Any, Any, None]], name: str) -> Service:
    """A service running `work(conversation)` as a task for the daemon's lifetime (cancelled at stop); if it
    fails, the failure is logged and the daemon goes on without it."""

    @contextlib.asynccontextmanager
    async def service(control: DaemonControl) -> AsyncIterator[None]:
        task = asyncio.create_task(work(control.conversation), name=name)

        def failed(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.error("%s failed; going on without it", name, exc_info=exc)

        task.add_done_callback(failed)
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return service


@contextlib.asynccontextmanager
async def hotkey_service(control: DaemonControl) -> AsyncIterator[None]:
    """The push-to-talk hotkey for the daemon's config; when it cannot run, one line says why and we go on."""
    from assistant.hotkey import Hotkey

    loop = asyncio.get_running_loop()
    cfg = control.conversation.cfg.pipeline
    hotkey = Hotkey(
        cfg.hotkey,
        cfg.hotkey_mode,
        on_start=lambda: loop.call_soon_threadsafe(control.command, "ptt_start"),
        on_stop=lambda: loop.call_soon_threadsafe(control.command, "ptt_stop"),
    )
    problem = hotkey.start()
    if problem is not None:
        log.warning(problem)
    control.hotkey_problem = problem  # config.set refuses push_to_talk unless the hotkey listens
    try:
        yield
    finally:
        hotkey.stop()
        control.hotkey_problem = NO_HOTKEY


if TYPE_CHECKING:  # mypy proves the control implements what the server expects

    def _conforms(control: DaemonControl) -> None:
        from assistant.server.controller import Controller

        _c: Controller = control
