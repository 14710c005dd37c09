"""Clients that come, misbehave and go, many times over: what a daemon left running for weeks sees."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading

import pytest
from websockets.asyncio.client import connect

from assistant.server.ws import ControlServer
from tests.server.fakes import FakeController
from tests.server.helpers import TOKEN, recv, running, url

ROUNDS = 12
WAIT_S = 10.0  # a safety net against hangs, never a timing assertion
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def fds() -> int:
    gc.collect()  # sockets an earlier test of this worker left to the collector close now, not mid-count
    return len(os.listdir("/proc/self/fd"))


async def one_round(server: ControlServer) -> None:
    """One of each: a native asker, a Realtime client and HTTP requests, each gone abruptly mid-way."""
    async with connect(url(server), additional_headers=AUTH) as ws:
        await recv(ws)  # hello
        await ws.send(json.dumps({"type": "subscribe", "id": 1}))
        await ws.send(json.dumps({"type": "ask", "id": 2, "text": "Hello?"}))
        ws.transport.abort()  # gone mid-ask, without a close frame
    async with connect(url(server, "/v1/realtime"), additional_headers=AUTH) as ws:
        await recv(ws)  # session.created
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 100}))
        ws.transport.abort()
    for data in (
        b"GET /v1/control HTTP/1.1\r\nUpgrade: websocket\r\n",  # half a handshake
        f"POST /v1/audio/speech HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 999\r\n\r\n{{".encode(),
        b"GET /health HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n",  # answered 401, never read
    ):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(data)
        await writer.drain()
        writer.transport.abort()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # one served whole, after the others
    writer.write(f"GET /health HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()


async def settled(server: ControlServer, controller: FakeController) -> None:
    """Until the server holds no connection, request or subscription but its own event fan-out's."""
    for _ in range(int(WAIT_S / 0.01)):
        held = server.clients or server.realtime_clients or server.http_tasks or server.admitted
        if not held and len(controller.subs) == 1:
            return
        await asyncio.sleep(0.01)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc (Linux)")
def test_clients_that_vanish_mid_message_leave_nothing_behind() -> None:
    """Rounds of native, Realtime and HTTP clients that connect, start something and vanish mid-way (no close frame,
    half a handshake, half a body) leave the server's tasks, sockets, threads and per-connection tables as before."""

    async def body() -> tuple[tuple[int, int, int], tuple[int, int, int], dict[str, int]]:
        async with running() as (server, controller, backend):
            await one_round(server)  # what the first connections start once (the decode worker) is the baseline
            await settled(server, controller)
            before = (len(asyncio.all_tasks()), fds(), threading.active_count())
            for _ in range(ROUNDS):
                await one_round(server)
            await settled(server, controller)
            after = (len(asyncio.all_tasks()), fds(), threading.active_count())
            tables = {
                "clients": len(server.clients),
                "realtime": len(server.realtime_clients),
                "admitted": server.admitted,
                "http": len(server.http_tasks),
                "subscriptions": len(controller.subs) - 1,  # the fan-out's own
                "errors": server.handler_errors,
            }
            asked = [c for c in controller.calls if c[0] == "ask"]
            assert len(asked) == len(backend.sessions) == ROUNDS + 1  # each client got as far as its request
            return before, after, tables

    before, after, tables = asyncio.run(body())
    # fds: the worker process's own, so another module's leftovers may close meanwhile; a leak adds one per round
    counts = f"(tasks, fds, threads) before {before}, after {ROUNDS} rounds {after}"
    assert (after[0], after[2]) == (before[0], before[2]) and after[1] <= before[1], counts
    assert tables == dict.fromkeys(tables, 0)
