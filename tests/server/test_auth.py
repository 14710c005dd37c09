"""Handshake security: token, Origin allowlist, loopback exemption, routing, and the stored token file."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from assistant.config import ServerConfig
from assistant.errors import ConfigError
from assistant.server import auth
from tests.server.helpers import TOKEN, running, url


async def refused(server_url: str, **kw: Any) -> tuple[int, str]:
    """The HTTP status and body of a refused handshake."""
    with pytest.raises(InvalidStatus) as e:
        async with connect(server_url, **kw):
            pass
    return e.value.response.status_code, e.value.response.body.decode()


async def accepted(server_url: str, **kw: Any) -> dict[str, Any]:
    async with connect(server_url, **kw) as ws:
        return json.loads(await ws.recv())  # type: ignore[no-any-return]


def test_missing_and_wrong_tokens_are_refused_at_the_handshake() -> None:
    """No token and a wrong token get HTTP 401 naming the fix, on both endpoints; the right one connects."""

    async def body() -> None:
        async with running() as (server, _, backend):
            for path in ("/v1/control", "/v1/realtime", "/"):
                status, text = await refused(url(server, path))
                assert status == 401 and text.startswith("no token; send `Authorization: Bearer <token>`")
                wrong = {"Authorization": "Bearer nope"}
                status, text = await refused(url(server, path), additional_headers=wrong)
                assert status == 401 and text.startswith("wrong token")
            assert backend.sessions == []  # nothing was opened for refused clients
            hello = await accepted(url(server), additional_headers={"Authorization": f"Bearer {TOKEN}"})
            assert hello["type"] == "hello"

    asyncio.run(body())


def test_a_token_without_the_bearer_scheme_is_named_as_such() -> None:
    """An Authorization header holding the bare token (or another scheme) is refused saying the header lacks
    `Bearer` (it said `no token`, though the user had sent one)."""

    async def body() -> None:
        async with running() as (server, _, _):
            for value in (TOKEN, f"Basic {TOKEN}"):
                status, text = await refused(url(server), additional_headers={"Authorization": value})
                assert status == 401 and text.startswith("the Authorization header is not `Bearer <token>`; send ")

    asyncio.run(body())


def test_browser_token_forms_query_and_subprotocol() -> None:
    """Browsers may pass the token as `?token=` or a `token.<TOKEN>` subprotocol (answered with assistant.v1)."""

    async def body() -> None:
        async with running() as (server, _, _):
            assert (await accepted(url(server) + f"?token={TOKEN}"))["type"] == "hello"
            async with connect(url(server), subprotocols=["assistant.v1", f"token.{TOKEN}"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "assistant.v1"
            status, _ = await refused(url(server) + "?token=bad")
            assert status == 401

    asyncio.run(body())


def test_foreign_origin_is_refused_even_with_the_token() -> None:
    """A page from a foreign Origin gets HTTP 403 (cross-site WebSocket hijacking); an allowlisted one connects."""

    async def body() -> None:
        async with running(allowed_origins=["http://localhost:3000"]) as (server, _, _):
            headers = {"Authorization": f"Bearer {TOKEN}"}
            status, text = await refused(url(server), additional_headers=headers, origin="https://evil.example")
            assert status == 403
            assert text.strip() == "origin https://evil.example is not allowed; add it to server.allowed_origins"
            status, _ = await refused(url(server, "/v1/realtime"), additional_headers=headers, origin="null")
            assert status == 403
            ok = await accepted(url(server), additional_headers=headers, origin="http://localhost:3000")
            assert ok["type"] == "hello"

    asyncio.run(body())


def test_loopback_without_token_only_when_allowed() -> None:
    """With allow_loopback_without_token a loopback client needs no token; without it, it does."""

    async def body() -> None:
        async with running(allow_loopback_without_token=True) as (server, _, _):
            assert (await accepted(url(server)))["type"] == "hello"
        async with running(allow_loopback_without_token=False) as (server, _, _):
            assert (await refused(url(server)))[0] == 401

    asyncio.run(body())


def test_unknown_path_is_404() -> None:
    """Only /, /v1/control and /v1/realtime are served."""

    async def body() -> None:
        async with running() as (server, _, _):
            status, text = await refused(
                url(server, "/v1/other"), additional_headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert status == 404 and "use /v1/control" in text

    asyncio.run(body())


def test_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    """With no server.token, the first start writes a random token at token_file (0600); later starts reuse it."""
    cfg = replace(ServerConfig(), token_file=str(tmp_path / "sub" / "token"))
    first = auth.load_or_create_token(cfg)
    path = tmp_path / "sub" / "token"
    assert len(first) >= 40 and path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.load_or_create_token(cfg) == first
    path.chmod(0o644)
    assert auth.load_or_create_token(cfg) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened again
    assert auth.load_or_create_token(replace(cfg, token="from-config")) == "from-config"
    other = replace(ServerConfig(), token_file=str(tmp_path / "other"))
    assert auth.load_or_create_token(other) != first


def test_default_token_path_is_in_the_user_config_folder(isolated_env: Path) -> None:
    """Without token_file the token lives at $XDG_CONFIG_HOME/assistant/token."""
    assert auth.token_path(ServerConfig()) == isolated_env / "xdg" / "assistant" / "token"


def test_allowed_origins_that_no_browser_sends_are_refused_at_start() -> None:
    """`server.allowed_origins` entries that no Origin header can equal (no scheme, a path, "*") are a ConfigError
    naming the entry and the form to write (the page was refused with 403 "add it to server.allowed_origins" though
    the user had); an origin written in capitals matches the lower-case one browsers send."""
    for bad, fragment in (
        ("localhost:3000", "entry 'localhost:3000' is not an origin"),
        ("http://localhost:3000/app", "entry 'http://localhost:3000/app' is not an origin"),
        ("*", 'does not take "*"'),
    ):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            auth.check_origins(["http://ok.example", bad])
    auth.check_origins(["http://localhost:3000", "https://App.Example/", "null"])
    assert auth.origin_allowed("http://app.example", ["HTTP://App.Example"])
    assert not auth.origin_allowed("http://evil.example", ["http://app.example"])
