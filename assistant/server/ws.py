"""The WebSocket server: routing, handshake checks, limits, per-client outboxes and event fan-out.

Paths: `/` and `/v1/control` speak the native protocol (server/native.py decides what each frame means) to a
`Controller`; `/v1/realtime` speaks the OpenAI Realtime subset (server/realtime.py) to a `RealtimeBackend`
session per connection. This module only moves frames. Every client has its own bounded outbox and writer task,
so a slow client only ever delays itself: its events are dropped oldest-first (and counted); when its replies
would be lost instead, it is closed (1008 when it does not read its replies, 1013 when it cannot keep up with a
stream it asked for).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import ipaddress
import itertools
import logging
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from assistant import compute, events
from assistant.config import ServerConfig
from assistant.errors import AssistantError, ConfigError, InputError
from assistant.server import auth, http
from assistant.server import protocol as p
from assistant.server import realtime_protocol as rp
from assistant.server.controller import AudioService, Controller, RealtimeBackend, RealtimeSession
from assistant.server.native import NativeConnection
from assistant.server.realtime import RealtimeConversation

T = TypeVar("T")
log = logging.getLogger("assistant.server")
# Lines about single connections (websockets' own, refused handshakes): a stranger can cause them at will.
conn_log = logging.getLogger("assistant.server.connections")

CONTROL_PATHS = ("/", "/v1/control")
REALTIME_PATH = "/v1/realtime"
HARD_LIMIT_FACTOR = 4  # messages over max_message_bytes get an error; over 4x that the socket is closed (1009)
RECEIVE_QUEUE = 4  # frames websockets reads ahead of the handler (16 by default: 16 MiB of a 1 MiB flood)
OUTBOX_BYTES_FACTOR = 4  # a client's outbox holds at most 4x max_message_bytes (4 MiB by default)
FANOUT_QUEUE = 4096  # the server's own subscription: it is drained at once into the client outboxes
ASK_DRAIN_S = 1.0  # after `ask` returns, wait at most this long for its last deltas to pass the subscription
OFFLOAD_BYTES = 64 * 1024  # frames (and audio appends) over this are decoded/resampled on a worker thread
SUBPROTOCOLS = ("assistant.v1", "realtime")
TEXT_TURN_EVENTS = (events.ResponseTextDelta, events.ResponseDone, events.ErrorEvent)  # what a say/ask waits on
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"  # a browser's beta Realtime client names the protocol so
LOG_BURST, LOG_PER_S = 10, 1.0  # connection log lines: bursts of 10, then one a second, the rest counted
CLOSE_NOT_READING = 1008  # policy violation: the client sends but does not read its replies
CLOSE_TOO_SLOW = 1013  # try again later: the client cannot keep up with a stream it asked for
CLOSE_WAIT_S = 1.0  # how long a client closed for not reading gets to answer the close
CLOSING_WAIT_S = 5.0  # a new Realtime client waits at most this long for a session whose client left to close
MAX_HTTP_REQUESTS = 16  # HTTP requests served at once; more get 503 (each may hold an upload of up to 25 MiB)


class Overflow(Exception):
    """A reply did not fit in the client's outbox: the connection must be closed, not the reply dropped."""


class Outbox:
    """A queue of text frames bounded in count and bytes.

    Droppable frames (events) give way first: the oldest droppable goes when the queue is full, counted in
    `dropped`. A frame that must not be dropped and does not fit raises Overflow (one frame always fits in an
    empty queue, whatever its size).
    """

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        self.maxsize, self.max_bytes = maxsize, max_bytes
        self.items: deque[tuple[bool, str]] = deque()
        self.bytes = 0
        self.dropped = 0
        self.reported = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def _full(self, size: int) -> bool:
        return bool(self.items) and (len(self.items) >= self.maxsize or self.bytes + size > self.max_bytes)

    def put(self, text: str, droppable: bool = True) -> None:
        size = len(text)  # encoded frames are ASCII (protocol.encode), so characters = bytes
        while self._full(size):
            i = next((i for i, (can_drop, _) in enumerate(self.items) if can_drop), None)
            if i is None:
                break
            self.bytes -= len(self.items[i][1])
            del self.items[i]
            self.dropped += 1
        if self._full(size):
            if droppable:
                self.dropped += 1
                return
            raise Overflow(f"{len(self.items)} messages ({self.bytes} bytes) are waiting for this client")
        self.items.append((droppable, text))
        self.bytes += size
        self._ready.set()
        if not self._has_room():
            self._room.clear()

    def _has_room(self) -> bool:
        return len(self.items) < self.maxsize // 2 and self.bytes < self.max_bytes // 2

    async def room(self) -> None:
        """Wait until the outbox is at most half full (streams that must not drop wait here)."""
        await self._room.wait()

    async def get(self) -> str:
        while not self.items:
            self._ready.clear()
            await self._ready.wait()
        _, text = self.items.popleft()
        self.bytes -= len(text)
        if self._has_room():
            self._room.set()
        return text


class Throttle(logging.Filter):
    """Lets `burst` records through, then `per_s` a second; the next one through says how many were held back."""

    def __init__(self, burst: int = LOG_BURST, per_s: float = LOG_PER_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.clock = clock
        self.bucket = p.TokenBucket(per_s, burst, clock())
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.bucket.take(1, self.clock()):
            self.suppressed += 1
            return False
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} similar lines suppressed)"
            self.suppressed = 0
        return True


if not any(isinstance(f, Throttle) for f in conn_log.filters):
    conn_log.addFilter(Throttle())


@dataclass(eq=False)
class Client:
    ws: ServerConnection
    outbox: Outbox
    native: NativeConnection | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def subscribed(self) -> bool:
        return self.native is not None and self.native.subscribed

    @property
    def listening(self) -> bool:
        return self.native is not None and self.native.listening


class ControlServer:
    """The daemon's WebSocket server. `async with ControlServer(...) as s:` serves on `s.port` until closed."""

    def __init__(
        self,
        cfg: ServerConfig,
        controller: Controller | None,
        backend: RealtimeBackend | None = None,
        token: str | None = None,
        limits: p.Limits = p.DEFAULT_LIMITS,
        audio: AudioService | None = None,
    ) -> None:
        self.cfg = cfg
        self.controller = controller
        self.backend = backend
        self.audio = audio
        self.tls = bool(cfg.tls_cert or cfg.tls_key)
        self.started = time.monotonic()
        self.http_tasks: set[asyncio.Task[None]] = set()
        self.app_ids = itertools.count(1)  # names each native connection's registered tools
        self.limits = limits
        self.token = token if token is not None else auth.load_or_create_token(cfg)
        self.http = http.HttpApp(cfg, self.token, self.tls, controller, audio, self.started, self._realtime_counts)
        self.clients: set[Client] = set()
        self.sessions = 0  # Realtime sessions opened so far (numbers their ids)
        self.admitted = 0  # Realtime sessions open or opening: reserved before the first await
        self.realtime_clients: set[Client] = set()  # the clients of those sessions
        self.released = asyncio.Condition()  # notified whenever a session gives its place back
        self.server: Server | None = None
        self.fanout: asyncio.Task[None] | None = None
        self.handler_errors = 0  # unexpected exceptions caught per message (the fuzz test wants zero)
        self.text_priority = compute.Priority.BACKGROUND  # compute priority of say/ask (benchmarks compare REPLY)
        # One thread for big frames: one allocator arena (RSS stays flat); byte budgets keep each client's share small
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ws-decode")

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        host, port = self.cfg.host, self.cfg.port
        options: dict[str, Any] = {"host": host, "port": port}
        if self.tls:
            options["ssl"] = tls_context(self.cfg)
        try:
            if host in ("", "::") and socket.has_dualstack_ipv6():
                # asyncio would bind "::" IPv6-only; one dual-stack socket also answers 127.0.0.1 (what ctl dials)
                sock = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
                options = {"sock": sock, **({"ssl": options["ssl"]} if "ssl" in options else {})}
            self.server = await serve(
                self._handle,
                **options,
                process_request=self._check_handshake,
                select_subprotocol=_select_subprotocol,
                max_size=self.cfg.max_message_bytes * HARD_LIMIT_FACTOR,
                max_queue=RECEIVE_QUEUE,
                ping_interval=self.cfg.ping_interval_s,
                ping_timeout=self.cfg.ping_interval_s,
                compression=None,
                logger=conn_log,
                create_connection=self._connection_class(),
            )
        except OSError as e:
            fix = "stop what uses it or set server.port" if e.errno == errno.EADDRINUSE else "check server.host"
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); {fix}") from e
        if self.controller is not None:
            self.fanout = asyncio.create_task(self._fan_out(self.controller))
        scheme, address = "wss" if self.tls else "ws", auth.dial_host(host)  # a URL one can open here ("::" is not)
        log.info(
            "control server on %s://%s:%d (and %s://%s:%d/ for the page and the HTTP endpoints)",
            scheme,
            address,
            self.port,
            "https" if self.tls else "http",
            address,
            self.port,
        )
        if not is_loopback_host(host):
            log.warning(
                "server.host = %r accepts connections from other machines; each needs the token (set "
                'server.host = "127.0.0.1" to serve this machine only)',
                host,
            )
            if not self.tls:
                log.warning(
                    "the token and the audio cross the network unencrypted; set server.tls_cert and "
                    "server.tls_key to serve https:// and wss://"
                )

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
        for task in list(self.http_tasks):
            task.cancel()
        await asyncio.gather(*self.http_tasks, return_exceptions=True)
        self.worker.shutdown(wait=False, cancel_futures=True)

    # ---- plain HTTP ----------------------------------------------------------------------------------------

    def _connection_class(self) -> type[ServerConnection]:
        server = self

        class Connection(SniffingConnection):
            def plain_http(self, transport: asyncio.Transport, head: bytes) -> None:
                server._serve_http(transport, head)

        return Connection

    def _serve_http(self, transport: asyncio.Transport, head: bytes) -> None:
        """Hand a connection whose first request is not a WebSocket upgrade to the HTTP endpoints."""
        if len(self.http_tasks) >= MAX_HTTP_REQUESTS:  # each may hold a 25 MiB upload: bound them together
            transport.write(http.busy_response())
            transport.close()
            return
        reader = asyncio.StreamReader(limit=http.MAX_HEAD_BYTES)

        def connected(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.create_task(http.serve(r, w, self.http))
            self.http_tasks.add(task)
            task.add_done_callback(self.http_tasks.discard)

        protocol = asyncio.StreamReaderProtocol(reader, connected)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(head)

    def _realtime_counts(self) -> dict[str, int]:
        return {"open": self.admitted, "limit": self.cfg.realtime_sessions if self.backend is not None else 0}

    # ---- handshake ---------------------------------------------------------------------------------------

    def _check_handshake(self, conn: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path not in (*CONTROL_PATHS, REALTIME_PATH):
            return _refuse(conn, 404, f"unknown path {p.clip(path)}; use /v1/control (native) or /v1/realtime")
        if path == REALTIME_PATH and self.backend is None:
            return _refuse(conn, 404, "/v1/realtime is not enabled in this daemon")
        if path != REALTIME_PATH and self.controller is None:
            return _refuse(conn, 404, "the native control channel is not enabled in this daemon")
        peer = conn.remote_address[0] if conn.remote_address else None
        refused = auth.refusal(self.cfg, self.token, request.headers.get_all, query, peer, self.tls)
        return None if refused is None else _refuse(conn, *refused)

    # ---- connections -------------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path.partition("?")[0] if ws.request else "/"
        outbox = Outbox(self.cfg.client_queue, self.cfg.max_message_bytes * OUTBOX_BYTES_FACTOR)
        client = Client(ws, outbox)
        writer = asyncio.create_task(self._write(client, path == REALTIME_PATH))
        self.clients.add(client)
        try:
            if path == REALTIME_PATH:
                await self._serve_realtime(client, _beta(ws.request.headers) if ws.request else False)
            else:
                await self._serve_control(client)
        except ConnectionClosed:
            pass
        except Overflow as e:
            await self._close_overflow(client, e, CLOSE_NOT_READING, "it does not read its replies")
        finally:
            self.clients.discard(client)
            for task in client.tasks:
                task.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer

    async def _close_overflow(self, client: Client, e: Overflow, code: int, why: str) -> None:
        peer = client.ws.remote_address[0] if client.ws.remote_address else None
        conn_log.warning("closed the connection from %s (%d): %s; %s", peer, code, why, e)
        client.outbox.items.clear()  # nothing more goes to this client: free its queue now
        client.outbox.bytes = 0
        # it does not read, so it will not answer the close either: send it, wait briefly, drop the socket
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await client.ws.close(code, f"outgoing queue full: {why}"[:120])
        client.ws.transport.abort()

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
        """The next message, or None after the idle timeout (subscribers and apps whose tools the voice loop may call
        only listen, so they never idle out)."""
        timeout = None if client.listening else self.cfg.idle_timeout_s
        await asyncio.sleep(0)  # a frame already buffered returns at once: let other clients and the voice loop run
        try:
            async with asyncio.timeout(timeout):
                return await client.ws.recv()
        except TimeoutError:
            await client.ws.close(1000, f"idle for {self.cfg.idle_timeout_s:g} s")
            return None

    # ---- native control ----------------------------------------------------------------------------------

    async def _serve_control(self, client: Client) -> None:
        assert self.controller is not None
        native = client.native = NativeConnection(
            self.controller,
            time.monotonic(),
            self.cfg.max_message_bytes,
            self.cfg.commands_per_s,
            self.limits,
            send=lambda text: client.outbox.put(text, droppable=False),
            owner=f"app{next(self.app_ids)}",
        )
        client.outbox.put(native.hello(), droppable=False)
        try:
            await self._control_loop(client, native)
        finally:
            native.close()  # its tools go, and its unanswered tool calls fail: the voice loop never waits on it

    async def _control_loop(self, client: Client, native: NativeConnection) -> None:
        while (data := await self._receive(client)) is not None:
            try:
                if len(data) > OFFLOAD_BYTES:  # parsing a big frame must not stall the voice loop
                    handled = await self._offload(native.receive, data, time.monotonic())
                else:
                    handled = native.receive(data, time.monotonic())
            except Exception as e:  # a bug must not take the daemon down; the client is told
                self.handler_errors += 1
                log.exception("internal error handling a control message")
                detail = str(e)[:200]
                client.outbox.put(p.encode(p.Error("internal", f"internal error: {detail}; see the daemon log")), False)
                continue
            for text in handled.send:
                client.outbox.put(text, droppable=False)
            if handled.run is not None:
                self._spawn(client, native, handled.run)

    def _spawn(self, client: Client, native: NativeConnection, cmd: p.Say | p.Ask) -> None:
        async def run() -> None:
            assert self.controller is not None
            with compute.lowered(self.text_priority):  # the voice loop's model steps go first
                await command()

        async def command() -> None:
            assert self.controller is not None
            try:
                result = await self._text_turn(client, native, self.controller, cmd)
                client.outbox.put(native.finished(cmd, result), droppable=False)
            except Overflow as e:
                await self._close_overflow(client, e, CLOSE_TOO_SLOW, "it does not keep up with its answer")
            except Exception as e:
                if not isinstance(e, AssistantError):
                    self.handler_errors += 1
                    log.exception("%s failed", cmd.type)
                with contextlib.suppress(Overflow):
                    client.outbox.put(native.failed(cmd, e), droppable=False)

        task = asyncio.create_task(run())
        client.tasks.add(task)
        task.add_done_callback(client.tasks.discard)

    async def _text_turn(
        self, client: Client, native: NativeConnection, controller: Controller, cmd: p.Say | p.Ask
    ) -> dict[str, Any]:
        """Run a say or an ask; an ask's answer streams to the asker as `ask.delta` until its ResponseDone. The
        result: {} for a say; for an ask the answer and whether it was cut short (by an interrupt, a barge-in or
        another ask). AssistantError (InputError when the client caused it) when its reply failed: the pipeline's
        error of its turn, which the asker hears instead of a success with nothing said.

        Only its own turn's events: a reply it interrupts settles (its last text, its ResponseDone) after it began."""
        sub = controller.subscribe(self.cfg.client_queue)
        before = controller.turn  # no await until the command has started its reply: the first turn after this is its
        done: list[events.ResponseDone] = []
        failed: list[events.ErrorEvent] = []

        async def forward() -> None:
            mine: int | None = None
            try:
                async for ev in sub:
                    if not isinstance(ev, TEXT_TURN_EVENTS) or ev.turn is None or ev.turn <= before:
                        continue
                    mine = ev.turn if mine is None else mine
                    if ev.turn != mine:
                        continue
                    if isinstance(ev, events.ErrorEvent):
                        failed.append(ev)  # before its ResponseDone
                    elif isinstance(ev, events.ResponseTextDelta):
                        if isinstance(cmd, p.Ask):
                            client.outbox.put(native.ask_delta(cmd, ev.text), droppable=False)
                    else:
                        done.append(ev)
                        return
            except Overflow as e:  # closing ends the handler, which cancels this ask
                await self._close_overflow(client, e, CLOSE_TOO_SLOW, "it does not keep up with its answer")

        forwarder = asyncio.create_task(forward())
        try:
            answer = await (controller.ask(cmd.text) if isinstance(cmd, p.Ask) else controller.say(cmd.text))
            # the pipeline emits ResponseDone before ask returns; let the forwarder catch up to it
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ASK_DRAIN_S):
                    await asyncio.shield(forwarder)
        finally:
            forwarder.cancel()
            sub.close()
        if failed:
            raise (InputError if failed[0].client_fault else AssistantError)(failed[0].message)
        if isinstance(cmd, p.Say):
            return {}
        # a reply dropped before it began ends without a ResponseDone: it was cut short too
        return {"text": answer, "interrupted": done[0].interrupted if done else True}

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
        limit = self.cfg.realtime_sessions
        if self.admitted >= limit and self._leaving():  # a client that left and came back: its place frees soon
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSING_WAIT_S), self.released:
                    await self.released.wait_for(lambda: self.admitted < limit or not self._leaving())
        if self.admitted >= limit:  # checked and reserved with no await between: concurrent opens cannot race
            out = rp.ServerEvents(beta=beta)
            why = f"{limit} realtime sessions are open, the most allowed; close one or raise server.realtime_sessions"
            await client.ws.send(out.error("session_unavailable", why, kind="server_error"))
            await client.ws.close(CLOSE_TOO_SLOW, "too many sessions")
            return
        self.admitted += 1
        self.realtime_clients.add(client)
        try:
            await self._run_realtime(client, beta, self.backend)
        finally:
            self.admitted -= 1
            self.realtime_clients.discard(client)
            async with self.released:
                self.released.notify_all()

    def _leaving(self) -> bool:
        """Whether a Realtime session's client has closed its connection (the session is still closing)."""
        return any(c.ws.state is not State.OPEN for c in self.realtime_clients)

    async def _run_realtime(self, client: Client, beta: bool, backend: RealtimeBackend) -> None:
        try:
            session = await backend.open_session()
        except AssistantError as e:
            out = rp.ServerEvents(beta=beta)
            await client.ws.send(out.error("session_unavailable", str(e), kind="server_error"))
            await client.ws.close(1011, "session unavailable")
            return
        self.sessions += 1
        conv = RealtimeConversation(
            session,
            backend.default_voice(),
            backend.default_instructions(),
            beta,
            self.sessions,
            self.limits,
            time.monotonic(),
            self.audio.voice_name if self.audio is not None else None,
            self.cfg.commands_per_s,
            backend.max_output_tokens(),
            backend.default_temperature(),
            backend.vad_defaults(),
        )
        woken = asyncio.Event()  # set after each event: the conversation's deadline may have moved
        pump = asyncio.create_task(self._pump(client, conv, session, woken))
        timer = asyncio.create_task(self._tick(client, conv, woken))
        try:
            self._send_realtime(client, conv, conv.start(time.time()))
            while (data := await self._receive(client)) is not None:
                self._send_realtime(client, conv, await self._realtime_message(conv, data))
                woken.set()
                if pump.done():  # the pump closed an overflowing client
                    break
        finally:
            for task in (pump, timer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await session.aclose()

    async def _tick(self, client: Client, conv: RealtimeConversation, woken: asyncio.Event) -> None:
        """Run the conversation's timers (the idle timeout): sleep until its deadline or until it may have moved."""
        while True:
            deadline = conv.deadline()
            woken.clear()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await woken.wait()
                    continue
            self._send_realtime(client, conv, conv.tick(time.monotonic()))

    def _send_realtime(self, client: Client, conv: RealtimeConversation, out: list[rp.ServerEvent]) -> None:
        for ev in out:
            if conv.out.beta and ev.type in rp.GA_ONLY:
                continue
            client.outbox.put(conv.encode(ev), droppable=isinstance(ev, rp.DROPPABLE))

    async def _realtime_message(self, conv: RealtimeConversation, data: str | bytes) -> list[rp.ServerEvent]:
        try:
            refused = conv.admit_frame(len(data), time.monotonic())
            if refused is not None:  # over the byte budget: not even parsed
                return [refused]
            big = len(data) > OFFLOAD_BYTES
            args = (data, self.cfg.max_message_bytes, self.limits, conv.input_format)
            if big:  # decoding 1 MiB of base64 JSON must not stall the voice loop
                ev = await self._offload(rp.decode_client_event, *args)
            else:
                ev = rp.decode_client_event(*args)
            if isinstance(ev, rp.AudioAppend):  # audio is data: the byte budget above is its rate limit
                full = conv.admit_audio(ev)
                if full is not None:
                    return [full]
                samples = await self._offload(conv.resample, ev) if big else conv.resample(ev)
                return conv.feed_audio(ev, samples)
            if not conv.admit_command(time.monotonic()):
                raise p.WireError("rate_limited", f"over {self.cfg.commands_per_s:g} events/s; slow down", ev.event_id)
            return conv.handle(ev)
        except p.WireError as e:
            return [conv.error(e)]
        except Exception as e:
            self.handler_errors += 1
            log.exception("internal error handling a realtime event")
            detail = str(e)[:200]
            message = f"internal error: {detail}; see the daemon log"
            return [rp.Error(rp.ErrorDetail("server_error", message, None, "server_error"))]

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work off the event loop on the server's one worker thread (FIFO over all connections)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def _pump(
        self, client: Client, conv: RealtimeConversation, session: RealtimeSession, woken: asyncio.Event
    ) -> None:
        """Session events -> server events; waits for outbox room so reply audio is never dropped here. A client
        too slow for the session's own queue loses audio first there, and is told once."""
        told = False
        try:
            async for ev in session.events():
                await client.outbox.room()
                if not told and session.dropped:
                    told = True
                    why = (
                        f"{session.dropped} session events were dropped (reply audio first) because this client "
                        "reads its events too slowly; read them as they arrive"
                    )
                    self._send_realtime(
                        client, conv, [rp.Error(rp.ErrorDetail("events_dropped", why, None, "server_error"))]
                    )
                self._send_realtime(client, conv, conv.on_event(ev))
                woken.set()
        except Overflow as e:
            await self._close_overflow(client, e, CLOSE_TOO_SLOW, "it does not keep up with the session")


class SniffingConnection(ServerConnection):
    """A connection that reads the request head first: WebSocket upgrades go on to websockets, every other
    request (any method) to `plain_http`. websockets alone parses only GET, so the POST endpoints need this."""

    _sniffing: asyncio.Transport | None = None
    _head = b""
    _refused = False  # answered 431: the rest of the head is read and dropped until EOF or the head timeout
    _timer: asyncio.TimerHandle | None = None

    def plain_http(self, transport: asyncio.Transport, head: bytes) -> None:
        raise NotImplementedError

    def __str__(self) -> str:
        """The peer, as websockets' own log lines name a connection (not `<...Connection object at 0x...>`)."""
        transport = getattr(self, "transport", None)
        peer = transport.get_extra_info("peername") if transport is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "a client"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._sniffing = transport
        self._timer = self.loop.call_later(http.HEAD_TIMEOUT_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        transport = self._sniffing
        if transport is None:
            super().data_received(data)
            return
        if self._refused:
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > http.MAX_HEAD_BYTES:
                # closing with unread data would reset the connection before the client reads the answer
                self._refused, self._head = True, b""
                transport.write(http.head_too_large_response())
                if transport.can_write_eof():
                    transport.write_eof()
            return
        self._sniffing = None
        if self._timer is not None:
            self._timer.cancel()
        head, self._head = self._head, b""
        if _is_upgrade(head[:end]):
            super().connection_made(transport)
            super().data_received(head)
        else:
            self.plain_http(transport, head)

    def eof_received(self) -> None:
        if self._sniffing is not None:
            self._sniffing.close()  # a head that never completed
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._sniffing is not None or not hasattr(self, "transport"):
            return  # websockets never saw this connection
        super().connection_lost(exc)


def _is_upgrade(head: bytes) -> bool:
    """Whether a request head asks for a WebSocket (`Upgrade: websocket`, any case)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


def tls_context(cfg: ServerConfig) -> ssl.SSLContext:
    """The server's TLS context from server.tls_cert / server.tls_key; ConfigError naming the fix."""
    if not (cfg.tls_cert and cfg.tls_key):
        raise ConfigError("set both server.tls_cert and server.tls_key (PEM files), or neither")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(os.path.expanduser(cfg.tls_cert), os.path.expanduser(cfg.tls_key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"cannot load server.tls_cert {cfg.tls_cert} / server.tls_key {cfg.tls_key}: {e}; give PEM files "
            "this user can read (e.g. from `openssl req -x509 -newkey rsa:2048 -nodes ...`)"
        ) from e
    return context


def is_loopback_host(host: str) -> bool:
    """Whether binding `host` serves this machine only (names other than localhost are taken as non-loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(conn: ServerConnection, status: int, text: str) -> Response:
    return conn.respond(status, text + "\n")


def _beta(headers: Headers) -> bool:
    """Whether a Realtime client speaks the beta protocol: `OpenAI-Beta: realtime=v1`, or from a browser (which
    cannot set headers) the subprotocol `openai-beta.realtime-v1`."""
    return any("realtime=v1" in v for v in headers.get_all("OpenAI-Beta")) or BETA_SUBPROTOCOL in _subprotocols(headers)


def _subprotocols(headers: Headers) -> list[str]:
    return [s.strip() for v in headers.get_all("Sec-WebSocket-Protocol") for s in v.split(",") if s.strip()]


def _select_subprotocol(conn: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Answer with a protocol name the client offered (browsers require one), never with a token subprotocol."""
    for name in SUBPROTOCOLS:
        if name in offered:
            return Subprotocol(name)
    plain = [o for o in offered if not o.startswith(auth.TOKEN_SUBPROTOCOLS)]
    return plain[0] if plain else None
