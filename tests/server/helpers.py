"""Start a ControlServer on a free loopback port with the scripted doubles, and connect real clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from assistant.config import ServerConfig
from assistant.server.ws import ControlServer
from tests.server.fakes import FakeBackend, FakeController

TOKEN = "test-token-1234"


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[tuple[ControlServer, FakeController, FakeBackend]]:
    """A server on 127.0.0.1 (any free port) with token TOKEN; `overrides` replace ServerConfig fields."""
    cfg = replace(ServerConfig(), port=0, token=TOKEN, **overrides)
    controller, backend = FakeController(), FakeBackend()
    async with ControlServer(cfg, controller, backend) as server:
        yield server, controller, backend


def url(server: ControlServer, path: str = "/v1/control") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


@asynccontextmanager
async def client(server: ControlServer, path: str = "/v1/control", **kw: Any) -> AsyncIterator[ClientConnection]:
    """A native client past the hello message."""
    headers = kw.pop("additional_headers", {"Authorization": f"Bearer {TOKEN}"})
    async with connect(url(server, path), additional_headers=headers, **kw) as ws:
        if path != "/v1/realtime":
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello" and hello["protocol"] == 1
        yield ws


async def recv(ws: ClientConnection, wait_s: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(wait_s):
        return json.loads(await ws.recv())  # type: ignore[no-any-return]


async def request(ws: ClientConnection, msg: dict[str, Any]) -> dict[str, Any]:
    """Send a command and return its reply or error (skipping events and ask deltas)."""
    await ws.send(json.dumps(msg))
    while True:
        got = await recv(ws)
        if got["type"] in ("reply", "error") and got.get("id") == msg.get("id"):
            return got


async def until(ws: ClientConnection, kind: str, wait_s: float = 5.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read until a message of type `kind`; return it and everything read before it."""
    seen = []
    while True:
        got = await recv(ws, wait_s)
        if got["type"] == kind:
            return got, seen
        seen.append(got)


async def collect(conn: Any, last: str) -> list[Any]:
    """SDK events up to and including the first of type `last`."""
    out = []
    async with asyncio.timeout(10):
        async for ev in conn:
            out.append(ev)
            if ev.type == last:
                return out
    raise AssertionError(f"connection ended before {last}")
