"""The WebSocket server: routing, handshake checks, limits, per-client outboxes and event fan-out.

Paths: `/` and `/v1/control` speak the native protocol (server/protocol.py) to a `Controller`; `/v1/realtime`
speaks the OpenAI Realtime subset (server/realtime.py) to a `RealtimeBackend` session per connection.
Every client has its own outbox and writer task, so a slow client only ever delays itself: its pipeline
events are dropped oldest-first (and counted), its replies are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from assistant import __version__, events
from assistant.config import ServerConfig
from assistant.errors import AssistantError, ConfigError, InputError
from assistant.server import auth
from assistant.server import protocol as p
from assistant.server import realtime_protocol as rp
from assistant.server.controller import Controller, RealtimeBackend, RealtimeSession
from assistant.server.realtime import RealtimeConversation

log = logging.getLogger("assistant.server")

CONTROL_PATHS = ("/", "/v1/control")
REALTIME_PATH = "/v1/realtime"
HARD_LIMIT_FACTOR = 4  # messages over max_message_bytes get an error; over 4x that the socket is closed (1009)
FANOUT_QUEUE = 4096  # the server's own subscription: it is drained at once into the client outboxes
ASK_DRAIN_S = 1.0  # after `ask` returns, wait at most this long for its last deltas to pass the subscription
SUBPROTOCOLS = ("assistant.v1", "realtime")


class Outbox:
    """A bounded queue of text frames: droppable (events) go oldest-first when full, others are always kept."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: deque[tuple[bool, str]] = deque()
        self.dropped = 0
        self.reported = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def put(self, text: str, droppable: bool = True) -> None:
        if droppable and len(self.items) >= self.maxsize:
            for i, (can_drop, _) in enumerate(self.items):
                if can_drop:
                    del self.items[i]
                    self.dropped += 1
                    break
            else:
                self.dropped += 1
                return
        self.items.append((droppable, text))
        self._ready.set()
        if len(self.items) >= self.maxsize:
            self._room.clear()

    async def room(self) -> None:
        """Wait until the outbox is below its bound (producers that must not drop wait here)."""
        await self._room.wait()

    async def get(self) -> str:
        while not self.items:
            self._ready.clear()
            await self._ready.wait()
        _, text = self.items.popleft()
        if len(self.items) < self.maxsize:
            self._room.set()
        return text


class RateLimiter:
    """Token bucket: `rate` commands per second, bursts of up to one second's worth (at least one)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.capacity, self.clock = rate, max(1.0, rate), clock
        self.tokens, self.last = self.capacity, clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(eq=False)
class Client:
    ws: ServerConnection
    outbox: Outbox
    limiter: RateLimiter
    subscribed: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class ControlServer:
    """The daemon's WebSocket server. `async with ControlServer(...) as s:` serves on `s.port` until closed."""

    def __init__(
        self,
        cfg: ServerConfig,
        controller: Controller | None,
        backend: RealtimeBackend | None = None,
        token: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.controller = controller
        self.backend = backend
        self.token = token if token is not None else auth.load_or_create_token(cfg)
        self.clients: set[Client] = set()
        self.sessions = 0
        self.server: Server | None = None
        self.fanout: asyncio.Task[None] | None = None
        self.handler_errors = 0  # unexpected exceptions caught per message (the fuzz test wants zero)

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        try:
            self.server = await serve(
                self._handle,
                self.cfg.host,
                self.cfg.port,
                process_request=self._check_handshake,
                select_subprotocol=_select_subprotocol,
                max_size=self.cfg.max_message_bytes * HARD_LIMIT_FACTOR,
                ping_interval=self.cfg.ping_interval_s,
                ping_timeout=self.cfg.ping_interval_s,
                compression=None,
                logger=log,
            )
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {self.cfg.host}:{self.cfg.port} ({e.strerror}); stop what uses it or set server.port"
            ) from e
        if self.controller is not None:
            self.fanout = asyncio.create_task(self._fan_out(self.controller))
        log.info("control server on ws://%s:%d", self.cfg.host, self.port)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.fanout is not None:
            self.fanout.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.fanout
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # ---- handshake ---------------------------------------------------------------------------------------

    def _check_handshake(self, conn: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path not in (*CONTROL_PATHS, REALTIME_PATH):
            return _refuse(conn, 404, f"unknown path {path}; use /v1/control (native) or /v1/realtime")
        if path == REALTIME_PATH and self.backend is None:
            return _refuse(conn, 404, "/v1/realtime is not enabled in this daemon")
        if path != REALTIME_PATH and self.controller is None:
            return _refuse(conn, 404, "the native control channel is not enabled in this daemon")
        origin = request.headers.get("Origin")
        if not auth.origin_allowed(origin, self.cfg.allowed_origins):
            log.warning("refused a connection from origin %s", origin)
            return _refuse(conn, 403, f"origin {origin} is not allowed; add it to server.allowed_origins")
        offered = auth.offered_token(request.headers.get("Authorization"), query, _subprotocols(request.headers))
        if auth.token_ok(offered, self.token):
            return None
        peer = conn.remote_address[0] if conn.remote_address else None
        if self.cfg.allow_loopback_without_token and auth.is_loopback(peer):
            return None
        why = "no token" if offered is None else "wrong token"
        log.warning("refused a connection from %s: %s", peer, why)
        return _refuse(
            conn,
            401,
            # the token file's path stays out of the reply: it would tell strangers the user's home folder
            f"{why}; send `Authorization: Bearer <token>` with the daemon's server.token, or the token it stored "
            "(by default in ~/.config/assistant/token on its machine)",
        )

    # ---- connections -------------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path.partition("?")[0] if ws.request else "/"
        client = Client(ws, Outbox(self.cfg.client_queue), RateLimiter(self.cfg.commands_per_s))
        writer = asyncio.create_task(self._write(client, path == REALTIME_PATH))
        self.clients.add(client)
        try:
            if path == REALTIME_PATH:
                beta = "realtime=v1" in (ws.request.headers.get("OpenAI-Beta", "") if ws.request else "")
                await self._serve_realtime(client, beta)
            else:
                await self._serve_control(client)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            for task in client.tasks:
                task.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer

    async def _write(self, client: Client, realtime: bool) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                text = await client.outbox.get()
                if not realtime and client.outbox.dropped > client.outbox.reported:
                    client.outbox.reported = client.outbox.dropped
                    await client.ws.send(p.encode(p.EventsDropped(client.outbox.dropped)))
                try:
                    await client.ws.send(text)
                except UnicodeEncodeError:  # a bug upstream; the other messages still go out
                    self.handler_errors += 1
                    log.exception("dropped an unencodable message")

    async def _receive(self, client: Client) -> str | bytes | None:
        """The next message, or None after the idle timeout (subscribers only listen, so they never idle out)."""
        timeout = None if client.subscribed else self.cfg.idle_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await client.ws.recv()
        except TimeoutError:
            await client.ws.close(1000, f"idle for {self.cfg.idle_timeout_s:g} s")
            return None

    def _limited(self, client: Client) -> bool:
        return not client.limiter.allow()

    # ---- native control ----------------------------------------------------------------------------------

    async def _serve_control(self, client: Client) -> None:
        assert self.controller is not None
        client.outbox.put(p.encode(p.Hello(p.PROTOCOL_VERSION, f"assistant {__version__}")), droppable=False)
        while (data := await self._receive(client)) is not None:
            try:
                cmd = p.decode_command(data, self.cfg.max_message_bytes)
                if self._limited(client):
                    raise p.WireError(
                        "rate_limited",
                        f"over {self.cfg.commands_per_s:g} commands/s; slow down (server.commands_per_s)",
                        cmd.id,
                    )
                self._dispatch(client, self.controller, cmd)
            except p.WireError as e:
                client.outbox.put(p.encode(p.Error(e.code, str(e), e.id)), droppable=False)
            except Exception as e:  # a bug must not take the daemon down; the client is told
                self.handler_errors += 1
                log.exception("internal error handling a control message")
                client.outbox.put(p.encode(p.Error("internal", f"internal error: {e}; see the daemon log")), False)

    def _dispatch(self, client: Client, c: Controller, cmd: p.Command) -> None:
        def reply(result: dict[str, Any]) -> None:
            client.outbox.put(p.encode(p.Reply(cmd.type, result, cmd.id)), droppable=False)

        if isinstance(cmd, p.Say | p.Ask):
            self._spawn(client, cmd)
            return
        result: dict[str, Any] = {}
        try:
            if isinstance(cmd, p.Status):
                result = c.status()
            elif isinstance(cmd, p.Interrupt):
                c.interrupt()
            elif isinstance(cmd, p.Mute):
                c.mute()
            elif isinstance(cmd, p.Unmute):
                c.unmute()
            elif isinstance(cmd, p.PttStart):
                c.ptt_start()
            elif isinstance(cmd, p.PttStop):
                c.ptt_stop()
            elif isinstance(cmd, p.ConfigGet):
                result = c.config_get()
            elif isinstance(cmd, p.ConfigSet):
                result = c.config_set(cmd.changes)
            elif isinstance(cmd, p.HistoryGet):
                result = {"history": c.history_get()}
            elif isinstance(cmd, p.HistoryReset):
                c.history_reset()
            elif isinstance(cmd, p.Subscribe):
                client.subscribed = True
            elif isinstance(cmd, p.Unsubscribe):
                client.subscribed = False
            reply(result)
        except AssistantError as e:
            client.outbox.put(p.encode(p.Error(_code(e), str(e), cmd.id)), droppable=False)

    def _spawn(self, client: Client, cmd: p.Say | p.Ask) -> None:
        async def run() -> None:
            assert self.controller is not None
            try:
                if isinstance(cmd, p.Say):
                    await self.controller.say(cmd.text)
                    result: dict[str, Any] = {}
                else:
                    result = {"text": await self._ask(client, self.controller, cmd)}
                client.outbox.put(p.encode(p.Reply(cmd.type, result, cmd.id)), droppable=False)
            except AssistantError as e:
                client.outbox.put(p.encode(p.Error(_code(e), str(e), cmd.id)), droppable=False)
            except Exception as e:
                self.handler_errors += 1
                log.exception("%s failed", cmd.type)
                client.outbox.put(p.encode(p.Error("internal", f"{cmd.type} failed: {e}", cmd.id)), False)

        task = asyncio.create_task(run())
        client.tasks.add(task)
        task.add_done_callback(client.tasks.discard)

    async def _ask(self, client: Client, controller: Controller, cmd: p.Ask) -> str:
        """Run an ask, streaming its answer to the asker as `ask.delta` until its ResponseDone."""
        sub = controller.subscribe(self.cfg.client_queue)

        async def forward() -> None:
            async for ev in sub:
                if isinstance(ev, events.ResponseTextDelta):
                    client.outbox.put(p.encode(p.AskDelta(ev.text, cmd.id)), droppable=False)
                elif isinstance(ev, events.ResponseDone):
                    return

        forwarder = asyncio.create_task(forward())
        try:
            answer = await controller.ask(cmd.text)
            # the pipeline emits ResponseDone before ask returns; let the forwarder catch up to it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(forwarder), ASK_DRAIN_S)
            return answer
        finally:
            forwarder.cancel()
            sub.close()

    async def _fan_out(self, controller: Controller) -> None:
        """Encode each pipeline event once and queue it for every subscribed client (never waits on a client)."""
        sub = controller.subscribe(FANOUT_QUEUE)
        lost = 0
        try:
            async for ev in sub:
                if sub.dropped > lost:
                    log.warning("event fan-out fell behind: %d events dropped", sub.dropped - lost)
                    lost = sub.dropped
                try:
                    text = p.encode(p.EventMessage(ev))
                except Exception:  # an event the wire cannot carry is a bug to log, never the end of the fan-out
                    self.handler_errors += 1
                    log.exception("could not encode a %s event; skipped", type(ev).__name__)
                    continue
                for client in list(self.clients):
                    if client.subscribed:
                        client.outbox.put(text)
        finally:
            sub.close()

    # ---- realtime ----------------------------------------------------------------------------------------

    async def _serve_realtime(self, client: Client, beta: bool) -> None:
        assert self.backend is not None
        try:
            session = await self.backend.open_session()
        except AssistantError as e:
            out = rp.ServerEvents(beta=beta)
            await client.ws.send(out.error("session_unavailable", str(e), kind="server_error"))
            await client.ws.close(1011, "session unavailable")
            return
        self.sessions += 1
        conv = RealtimeConversation(
            session, self.backend.default_voice(), self.backend.default_instructions(), beta, self.sessions
        )
        pump = asyncio.create_task(self._pump(client, conv, session))
        try:
            for text in conv.start():
                client.outbox.put(text, droppable=False)
            while (data := await self._receive(client)) is not None:
                for text in self._realtime_message(client, conv, data):
                    client.outbox.put(text, droppable=False)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await session.close()

    def _realtime_message(self, client: Client, conv: RealtimeConversation, data: str | bytes) -> list[str]:
        try:
            ev = rp.decode_client_event(data, self.cfg.max_message_bytes)
            # audio appends are data, bounded by the message size; the rate limit is for commands
            if not isinstance(ev, rp.AudioAppend) and self._limited(client):
                raise p.WireError("rate_limited", f"over {self.cfg.commands_per_s:g} events/s; slow down", ev.event_id)
            return conv.handle(ev)
        except p.WireError as e:
            return [conv.error(e)]
        except Exception as e:
            self.handler_errors += 1
            log.exception("internal error handling a realtime event")
            return [conv.out.error("server_error", f"internal error: {e}; see the daemon log", kind="server_error")]

    async def _pump(self, client: Client, conv: RealtimeConversation, session: RealtimeSession) -> None:
        """Session events -> server events; waits for outbox room so reply audio is never dropped."""
        async for ev in session.events():
            await client.outbox.room()
            for text in conv.on_event(ev):
                client.outbox.put(text, droppable=False)


def _code(e: AssistantError) -> str:
    if isinstance(e, ConfigError):
        return "config"
    if isinstance(e, InputError):
        return "input"
    return "failed"


def _refuse(conn: ServerConnection, status: int, text: str) -> Response:
    return conn.respond(status, text + "\n")


def _subprotocols(headers: Headers) -> list[str]:
    return [s.strip() for v in headers.get_all("Sec-WebSocket-Protocol") for s in v.split(",") if s.strip()]


def _select_subprotocol(conn: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Answer with a protocol name the client offered (browsers require one) and never echo a token if avoidable."""
    for name in SUBPROTOCOLS:
        if name in offered:
            return Subprotocol(name)
    return offered[0] if offered else None
