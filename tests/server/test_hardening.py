"""Issue 17: each door of the daemon holds against a client with a valid token, and against strangers."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from assistant import cli, settings
from assistant.config import Config, ServerConfig
from assistant.errors import AssistantError, AudioDeviceError, ConfigError
from assistant.server import auth
from assistant.server import protocol as p
from assistant.server import realtime_protocol as rp
from assistant.server.ctl import url_of
from assistant.server.realtime import RealtimeConversation
from assistant.server.ws import ControlServer, Throttle, _select_subprotocol, is_loopback_host
from tests.server.fakes import FakeBackend, FakeController, FakeSession, FakeVoices
from tests.server.helpers import TOKEN, client, recv, request, running, url

BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def fresh_log_throttle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection log's throttle is process-wide: earlier tests must not have spent its burst."""
    from assistant.server import ws

    monkeypatch.setattr(ws.conn_log, "filters", [Throttle()])


# ---- decoding: bad input gets a bounded one-line error -------------------------------------------------------


def test_a_huge_integer_is_bad_json() -> None:
    """A JSON integer over Python's 4,300-digit limit is a `bad_json` error, not an internal error."""
    with pytest.raises(p.WireError) as e:
        p.decode_command('{"type": "status", "id": ' + "9" * 5000 + "}")
    assert (e.value.code, str(e.value)) == (
        "bad_json",
        "message has a number too long to read; send numbers of at most 4,300 digits",
    )


def test_deeply_nested_input_is_bad_json() -> None:
    """Nesting past the parser's recursion limit is a `bad_json` error on both protocols."""
    deep = '{"type": "status", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for decode in (p.decode_command, rp.decode_client_event):
        with pytest.raises(p.WireError) as e:
            decode(deep, 1 << 20)
        assert str(e.value) == "message is nested too deeply; send a flat JSON object"


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        ({"type": "x" * 1_000_000},
         f"unknown command type '{'x' * 60}'... (1000000 characters); valid types: "),
        ({"type": "status", "y" * 100_000: 1},
         f"`status` has no field `{'y' * 30}`; fields: type, id"),
        ({"type": "status", "v": "z" * 100_000},
         f"protocol version '{'z' * 59}... is not supported; this server speaks v=1"),
    ],
)  # fmt: skip
def test_native_errors_never_echo_unbounded_input(msg: dict[str, Any], expected: str) -> None:
    """An error about a huge field quotes at most a few dozen characters of it."""
    with pytest.raises(p.WireError) as e:
        p.decode_command(json.dumps(msg), 4 << 20)
    assert str(e.value).startswith(expected) and len(str(e.value)) < 400


def test_realtime_errors_never_echo_unbounded_input() -> None:
    """Realtime errors about a huge type, event_id or format quote at most a few dozen characters."""
    for msg in (
        {"type": "x" * 1_000_000},
        {"type": "input_audio_buffer.commit", "event_id": "e" * 1_000_000},
        {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "f" * 1_000_000}}}}},
    ):
        with pytest.raises(p.WireError) as e:
            rp.decode_client_event(json.dumps(msg), 4 << 20)
        assert len(str(e.value)) < 400, str(e.value)[:100]


def test_text_for_the_model_is_bounded_at_the_edge() -> None:
    """say/ask text, Realtime item text and instructions over their limits are refused with the limit named."""
    with pytest.raises(p.WireError) as e:
        p.decode_command(json.dumps({"type": "ask", "text": "a" * 4001}))
    assert (e.value.code, str(e.value)) == (
        "too_long",
        "`ask.text` has 4001 characters, over the 4000 allowed; send a shorter text",
    )
    p.decode_command(json.dumps({"type": "ask", "text": "a" * 4000}))  # the limit itself is allowed
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "b" * 4001}]}
    with pytest.raises(p.WireError) as e:
        rp.decode_client_event(json.dumps({"type": "conversation.item.create", "item": item}))
    assert str(e.value) == (
        "`conversation.item.create.item.content` has 4001 characters of text, over the 4000 allowed; "
        "send a shorter message"
    )
    for msg in (
        {"type": "session.update", "session": {"instructions": "c" * 8001}},
        {"type": "response.create", "response": {"instructions": "c" * 8001}},
    ):
        with pytest.raises(p.WireError) as e:
            rp.decode_client_event(json.dumps(msg))
        assert e.value.code == "string_above_max_length" and "8001 characters, over the 8000 allowed" in str(e.value)


# ---- Realtime audio: budget and bound per turn ----------------------------------------------------------------


def test_audio_appends_beyond_four_times_real_time_are_refused() -> None:
    """After a 15 s burst, frames faster than 4x real time of audio get `rate_limited`; the pace refills it."""
    session = FakeSession(FakeBackend())
    conv = RealtimeConversation(session, "default", "x", now=0.0)
    second = 64_000  # bytes of base64 in one second of 24 kHz pcm16
    assert all(conv.admit_frame(second, 0.0) is None for _ in range(15))
    refused = conv.admit_frame(second, 0.0)
    assert refused is not None and refused.error.code == "rate_limited"
    assert refused.error.message == (
        "over 4x real time of audio per second; send audio at about the pace it is recorded"
    )
    assert conv.admit_frame(second, 0.25) is None  # 0.25 s of wall time buys 1 s of audio at 4x
    assert conv.admit_frame(2 * 1024 * 1024, 10.0) is None  # one frame over the burst passes with a full budget
    assert conv.admit_frame(100, 12.0) is not None  # ... and is paid back before the next


def test_manual_turn_audio_is_bounded() -> None:
    """With turn detection off, more than 60 s of uncommitted audio gets `input_audio_buffer_full`."""
    session = FakeSession(FakeBackend())
    conv = RealtimeConversation(session, "default", "x", limits=p.Limits(audio_burst_s=1e9), now=0.0)
    conv.handle(rp.SessionUpdate(turn_detection_given=True, turn_detection=None))
    ten = rp.AudioAppend(np.zeros(10 * rp.RATE, np.int16))
    for _ in range(6):
        assert conv.admit_audio(ten) is None
        conv.feed_audio(ten, conv.resample(ten))
    refused = conv.admit_audio(ten)
    assert refused is not None and refused.error.message == (
        "the input audio buffer holds over 60 s; commit or clear it first"
    )


# ---- settings ------------------------------------------------------------------------------------------------


def test_config_get_never_contains_the_token() -> None:
    """settings.public hides server.token and HTTP tool header values; the rest is the plain settings."""
    tool = {
        "kind": "http",
        "description": "The weather.",
        "url": "https://example.com/w",
        "headers": {"Authorization": "Bearer api-s3cret"},
    }
    cfg = Config().replace({"server.token": "s3cret-token", "tools.custom": {"weather": tool}})
    shown = settings.public(cfg)
    assert shown["server"]["token"] == "(hidden)" and "s3cret" not in json.dumps(shown)
    assert shown["tools"]["custom"]["weather"]["headers"] == {"Authorization": "(hidden)"}
    assert shown["server"]["port"] == cfg.server.port


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"server.port": 1}, "config.set: `server.port` cannot be changed over the connection; set it in config.toml "
         "and restart"),
        ({"server.token": "x"}, "config.set: `server.token` cannot be changed over the connection; set it in "
         "config.toml and restart"),
        ({"llm.model": "other"},
         "config.set: `llm.model` takes effect only at start; set it in config.toml and restart"),
        ({"tts.voice": "nobody"}, "config.set: unknown voice 'nobody'; voices: alice, bob, default"),
        ({"tts.voice": "bob"},
         "config.set: voice 'bob' (clone) does not fit the custom_voice model of tts.model; voices that do: alice, "
         "default (or set tts.model to a base model)"),
        ({"llm.system_prompt": "p" * 9000}, "config.set: `llm.system_prompt` has 9000 characters, over the 8000 "
         "allowed; shorten it"),
        ({"vad.aggressiveness": [1] * 1000}, "config.set: `vad.aggressiveness` must be a string, a number or "
         "true/false, not a list or object"),
        ({"k" * 1000: 1}, "config.set: a key of 1000 characters is not a setting; keys look like `vad.hangover_ms`"),
    ],
)  # fmt: skip
def test_config_set_refuses_unsafe_changes_before_any_takes_effect(changes: dict[str, Any], message: str) -> None:
    """Restart-only and server keys, unknown or unfit voices and unbounded values are refused with one line."""
    cfg = Config()
    with pytest.raises(ConfigError) as e:
        settings.apply(cfg, {"vad.aggressiveness": 3, **changes}, FakeVoices())
    assert str(e.value) == message


def test_config_set_takes_a_list_for_a_list_setting_and_bounds_it() -> None:
    """`pipeline.backchannels`, a live key whose value is a list of words, can be set to a list of strings (every
    value was refused as `not a list or object`); a long list, a long word or a non-string item is refused."""
    new = settings.apply(Config(), {"pipeline.backchannels": ["mm-hm", "yeah"]}, FakeVoices())
    assert new.pipeline.backchannels == ["mm-hm", "yeah"]
    assert settings.apply(Config(), {"pipeline.backchannels": []}, FakeVoices()).pipeline.backchannels == []
    for bad in (["w"] * 1000, ["w" * 1000], [1, 2], [["x"]]):
        with pytest.raises(ConfigError) as e:
            settings.apply(Config(), {"pipeline.backchannels": bad}, FakeVoices())
        assert str(e.value) == (
            "config.set: `pipeline.backchannels` takes a list of at most 64 strings of up to 64 characters each"
        )


def test_config_set_names_no_server_path_when_voices_cannot_be_read(tmp_path: Path) -> None:
    """A voices folder that cannot be read is reported without its path (the log has it)."""

    class Broken(FakeVoices):
        def profiles(self) -> dict[str, Any]:
            raise ConfigError(f"voices folder {tmp_path} does not exist; set tts.voices_dir or create it")

    with pytest.raises(ConfigError) as e:
        settings.apply(Config(), {"tts.voice": "alice"}, Broken())
    assert str(e.value) == "config.set: the voice profiles cannot be read; see the daemon log"


def test_config_set_over_the_wire_keeps_the_settings_on_refusal() -> None:
    """A refused config.set changes nothing, a valid voice is applied, and config.get hides the token."""

    async def body() -> None:
        async with running() as (server, controller, _):
            controller.cfg = controller.cfg.replace({"server.token": TOKEN})
            async with client(server) as ws:
                bad = await request(ws, {"type": "config.set", "id": 1, "changes": {"tts.voice": "nobody"}})
                assert bad["code"] == "config" and controller.cfg.tts.voice == "default"
                ok = await request(ws, {"type": "config.set", "id": 2, "changes": {"tts.voice": "alice"}})
                assert ok["result"]["tts"]["voice"] == "alice"
                got = await request(ws, {"type": "config.get", "id": 3})
                assert got["result"]["server"]["token"] == "(hidden)" and TOKEN not in json.dumps(got)

    asyncio.run(body())


# ---- handshake -----------------------------------------------------------------------------------------------


async def _status_of(server_url: str, headers: list[tuple[str, str]]) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as e:
        async with connect(server_url, additional_headers=headers):
            pass
    return e.value.response.status_code, e.value.response.body.decode().strip()


def test_duplicate_authorization_or_origin_headers_are_a_400() -> None:
    """Two Authorization or two Origin headers get HTTP 400 naming the header, not a 500 with a traceback."""

    async def body() -> None:
        async with running(allowed_origins=["http://a.example"]) as (server, _, _):
            auth_twice = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer other")]
            assert await _status_of(url(server), auth_twice) == (
                400,
                "the request has more than one Authorization header; send one",
            )
            origin_twice = [*BEARER.items(), ("Origin", "http://a.example"), ("Origin", "http://b.example")]
            assert await _status_of(url(server), origin_twice) == (
                400,
                "the request has more than one Origin header; send one",
            )

    asyncio.run(body())


def test_the_token_is_never_echoed_as_the_subprotocol() -> None:
    """A client offering only its token subprotocol gets no subprotocol back; a protocol name beside it is chosen."""
    assert _select_subprotocol(None, [f"token.{TOKEN}"]) is None  # type: ignore[arg-type]
    assert _select_subprotocol(None, [f"openai-insecure-api-key.{TOKEN}"]) is None  # type: ignore[arg-type]
    assert _select_subprotocol(None, [f"token.{TOKEN}", "assistant.v1"]) == "assistant.v1"  # type: ignore[arg-type]

    async def body() -> None:
        async with running() as (server, _, _):
            async with connect(url(server), subprotocols=[f"token.{TOKEN}"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol is None and json.loads(await ws.recv())["type"] == "hello"

    asyncio.run(body())


def test_the_token_file_is_never_written_through_a_link(tmp_path: Path) -> None:
    """A symbolic link at the token path is refused (its target untouched); a new token file is 0600, whole."""
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    link = tmp_path / "token"
    link.symlink_to(target)
    cfg = replace(ServerConfig(), token_file=str(link))
    with pytest.raises(ConfigError) as e:
        auth.load_or_create_token(cfg)
    assert str(e.value) == (
        f"the server token file {link} is a symbolic link; remove it (a new token is generated) "
        "or set server.token_file to a regular file"
    )
    assert target.read_text() == "keep me\n"
    link.unlink()
    token = auth.load_or_create_token(cfg)
    assert link.read_text() == token + "\n" and (link.stat().st_mode & 0o777) == 0o600
    assert sorted(x.name for x in tmp_path.iterdir()) == ["precious", "token"]  # no temporary file left


def test_binding_beyond_loopback_warns_and_dual_stack_serves_both_families(caplog: pytest.LogCaptureFixture) -> None:
    """host "::" logs the non-loopback warning, answers on 127.0.0.1 and ::1 (what ctl dials) and logs URLs one can
    open here (bracketed IPv6, the loopback for a wildcard)."""
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("::") and not is_loopback_host("example.com")
    if not socket.has_dualstack_ipv6():
        pytest.skip("this machine has no dual-stack IPv6")

    async def body() -> None:
        cfg = replace(ServerConfig(), host="::", port=0, token=TOKEN)
        with caplog.at_level(logging.INFO, "assistant.server"):
            async with ControlServer(cfg, FakeController(), FakeBackend()) as server:
                for host in ("127.0.0.1", "[::1]"):
                    async with connect(f"ws://{host}:{server.port}/v1/control", additional_headers=BEARER) as ws:
                        assert json.loads(await ws.recv())["type"] == "hello"
                assert url_of(replace(cfg, port=server.port)) == f"ws://[::1]:{server.port}/v1/control"
                port = server.port
        # the URLs logged can be opened (they said ws://:::PORT)
        shown = f"control server on ws://[::1]:{port} (and http://[::1]:{port}/ for the page and the HTTP endpoints)"
        assert shown in [r.getMessage() for r in caplog.records]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert (
            "server.host = '::' accepts connections from other machines; each needs the token (set "
            'server.host = "127.0.0.1" to serve this machine only)'
        ) in warnings

    asyncio.run(body())


def test_connection_log_lines_are_throttled() -> None:
    """After a burst, one line a second passes; the next line through counts the ones held back."""
    now = [0.0]
    throttle = Throttle(burst=3, per_s=1.0, clock=lambda: now[0])
    records = [logging.LogRecord("x", logging.WARNING, "", 0, "refused", None, None) for _ in range(10)]
    assert [throttle.filter(r) for r in records] == [True] * 3 + [False] * 7
    now[0] = 1.0
    assert throttle.filter(records[0]) and records[0].getMessage() == "refused (7 similar lines suppressed)"


def test_refused_handshakes_do_not_flood_the_log(caplog: pytest.LogCaptureFixture, fresh_log_throttle: None) -> None:
    """60 refused handshakes in a burst log at most a dozen lines."""

    async def body() -> None:
        async with running() as (server, _, _):
            with caplog.at_level(logging.INFO, "assistant.server"):
                for _ in range(60):
                    with pytest.raises(InvalidStatus):
                        async with connect(url(server)):
                            pass
        lines = [r for r in caplog.records if r.name.startswith("assistant.server")]
        assert 1 <= len(lines) <= 12, len(lines)

    asyncio.run(body())


# ---- admission -----------------------------------------------------------------------------------------------


def test_a_session_that_is_closing_does_not_refuse_the_next() -> None:
    """With realtime_sessions = 1, a client that closes its session and reconnects at once gets a session (it was
    refused `1 realtime sessions are open` while the server still closed the old one); a second client beside an
    open session is still refused."""

    async def created(server: ControlServer) -> str:
        async with connect(url(server, "/v1/realtime"), additional_headers=BEARER) as ws:
            first = await recv(ws)
            return str(first["type"] if first["type"] != "error" else first["error"]["code"])

    async def body() -> list[str]:
        async with running(realtime_sessions=1) as (server, _, backend):
            backend.close_delay_s = 0.3  # closing awaits the compute thread in the real backend
            got = [await created(server) for _ in range(3)]
            async with connect(url(server, "/v1/realtime"), additional_headers=BEARER) as held:
                assert (await recv(held))["type"] == "session.created"
                got.append(await created(server))
            return got

    assert asyncio.run(body()) == ["session.created"] * 3 + ["session_unavailable"]


def test_concurrent_realtime_handshakes_cannot_pass_the_session_limit() -> None:
    """32 concurrent /v1/realtime handshakes with realtime_sessions = 2 open exactly 2 sessions."""

    async def one(server: ControlServer) -> str:
        try:
            async with connect(url(server, "/v1/realtime"), additional_headers=BEARER) as ws:
                first = await recv(ws)
                if first["type"] == "session.created":
                    await asyncio.sleep(0.5)  # hold the session while the others try
                return str(first["type"] if first["type"] != "error" else first["error"]["code"])
        except ConnectionClosed:
            return "closed"

    async def body() -> None:
        async with running(realtime_sessions=2) as (server, _, backend):
            backend.open_delay_s = 0.2  # opening awaits, as the compute thread does: the old check raced here
            got = await asyncio.gather(*(one(server) for _ in range(32)))
            assert sorted(set(got)) == ["session.created", "session_unavailable"]
            assert got.count("session.created") == 2 and len(backend.sessions) == 2
            for _ in range(500):  # the server's handlers finish just after the clients see the close
                if not server.admitted:
                    break
                await asyncio.sleep(0.01)
            assert server.admitted == 0

    asyncio.run(body())


# ---- process ------------------------------------------------------------------------------------------------


def test_headless_daemon_exceptions_are_not_chained_to_the_missing_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """In headless mode an error from the daemon carries no "no audio input device" context."""
    from assistant import hub
    from assistant.audio import devices

    def no_device(spec: str, kind: str) -> None:
        raise AudioDeviceError(f"no audio {kind} device")

    async def daemon(cfg: Config, headless: bool = False, **_: Any) -> int:
        assert headless
        raise RuntimeError("daemon failed")

    monkeypatch.setattr(hub, "resolve", lambda spec, what: Path(spec))  # as hub.resolve returns
    monkeypatch.setattr(devices, "pick", no_device)
    monkeypatch.setattr(cli, "_run_daemon", daemon)
    monkeypatch.setattr(cli, "check_open_file_limit", lambda: None)
    with pytest.raises(RuntimeError) as e:
        cli.cmd_run(argparse.Namespace(log_json=False), Config())
    assert e.value.__context__ is None and e.value.__cause__ is None


def test_an_open_file_limit_below_mlx_lm_s_is_a_clear_error() -> None:
    """A hard limit under 4096 fails before model load with the fix; 4096, unlimited, or root pass."""
    import resource

    with pytest.raises(AssistantError) as e:
        cli.check_open_file_limit((256, 1024), root=False)
    assert str(e.value) == (
        "the open-file hard limit is 1024, below the 4096 the model loader (mlx-lm) sets; raise it "
        "(`ulimit -Hn 4096`, or LimitNOFILE= for a service) and start again"
    )
    cli.check_open_file_limit((256, 4096), root=False)
    cli.check_open_file_limit((256, resource.RLIM_INFINITY), root=False)
    cli.check_open_file_limit((256, 1024), root=True)


def test_ctl_survives_a_closed_pipe(tmp_path: Path) -> None:
    """`assistant ctl events | head -n 1` ends with code 0 and nothing on stderr once head has gone."""

    async def body() -> tuple[int, str]:
        async with running() as (server, controller, _):
            env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
            args = ["ctl", "events", "--set", f"server.port={server.port}", "--set", f'server.token="{TOKEN}"']
            proc = await asyncio.create_subprocess_shell(
                f"{sys.executable} -m assistant {' '.join(map(_quote, args))} | head -n 1 >/dev/null; "
                "echo ${PIPESTATUS[0]} >&2",
                stderr=asyncio.subprocess.PIPE,
                env=env,
                executable="/bin/bash",
            )
            from assistant import events

            async def publish() -> None:
                while proc.returncode is None:
                    controller.emit(events.MuteChanged(True, 0.0))
                    await asyncio.sleep(0.02)

            feeder = asyncio.create_task(publish())
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            feeder.cancel()
            lines = err.decode().strip().splitlines()
            return int(lines[-1]), "\n".join(lines[:-1])

    code, stderr = asyncio.run(body())
    assert (code, stderr) == (0, "")


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


# ---- fair compute --------------------------------------------------------------------------------------------


def test_text_commands_give_way_to_the_voice_loop_on_the_compute_thread() -> None:
    """Jobs submitted under compute.lowered (and by tasks started there) run after the voice loop's queued jobs."""
    import threading

    from assistant.compute import Compute, Priority, lowered

    async def body() -> list[str]:
        worker = Compute("test-fair")
        gate, ran = threading.Event(), []
        try:
            busy = worker.submit(gate.wait)  # hold the thread so the queue fills in a known order

            async def ask_step() -> None:
                await worker.run(ran.append, "ask")  # asked at REPLY, like a reply step

            with lowered(Priority.BACKGROUND):
                ask = asyncio.create_task(ask_step())  # a task started here keeps the lowered priority
            await asyncio.sleep(0)  # the ask's job is queued first
            voice = asyncio.create_task(worker.run(ran.append, "voice"))
            await asyncio.sleep(0)
            gate.set()
            await asyncio.gather(ask, voice, asyncio.wrap_future(busy))
            return ran
        finally:
            await asyncio.to_thread(worker.close, 5.0)

    assert asyncio.run(body()) == ["voice", "ask"]


def test_an_asker_that_does_not_read_its_answer_is_closed_1013(
    caplog: pytest.LogCaptureFixture, fresh_log_throttle: None
) -> None:
    """A long streamed answer to a client that stops reading closes it (1013) instead of growing its queue."""
    from assistant import events

    async def body() -> None:
        async with running(client_queue=8) as (server, controller, _):

            async def long_ask(text: str) -> str:
                for i in range(5_000):  # ~20 MB of deltas: far more than the socket buffers hold
                    controller.emit(events.ResponseTextDelta(1, "w" * 4000, float(i)))
                    await asyncio.sleep(0)
                return "done"

            controller.ask = long_ask  # type: ignore[method-assign]
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            with caplog.at_level(logging.WARNING, "assistant.server"):
                async with connect(
                    url(server), sock=sock, additional_headers=BEARER, max_queue=1, close_timeout=0.1
                ) as ws:
                    await ws.send(json.dumps({"type": "ask", "id": 1, "text": "tell me"}))
                    for _ in range(500):  # until the server gives up on it (never reading meanwhile)
                        if not server.clients:
                            break
                        await asyncio.sleep(0.02)
            assert not server.clients
        closes = [r.getMessage() for r in caplog.records if "(1013)" in r.getMessage()]
        assert closes and "it does not keep up with its answer" in closes[0], closes

    asyncio.run(body())


def test_background_work_waits_for_the_next_reply_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a reply step, a queued text-command step waits the grace for the reply's next step to go first."""
    from assistant import compute
    from assistant.compute import Compute, Priority

    monkeypatch.setattr(compute, "FOREGROUND_GRACE_S", 2.0)  # wide, so a loaded machine cannot miss it
    worker = Compute("test-grace")
    ran: list[str] = []
    try:
        worker.submit(ran.append, "reply step 1").result(5)
        later = worker.submit(ran.append, "ask step", priority=Priority.BACKGROUND)
        worker.submit(ran.append, "reply step 2").result(5)
        later.result(5)
    finally:
        worker.close(5.0)
    assert ran == ["reply step 1", "reply step 2", "ask step"]
