"""`assistant ctl` against a live server (running in a background thread with the scripted controller)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assistant import cli, events
from assistant.errors import InputError
from assistant.llm import Message
from assistant.server import ctl
from assistant.server.ws import ControlServer
from tests.server.fakes import FakeController
from tests.server.helpers import TOKEN, running
from tests.server.test_tls import self_signed


class Live:
    def __init__(self) -> None:
        self.port = 0
        self.controller: FakeController | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: ControlServer | None = None
        self.stop: asyncio.Event | None = None


@contextlib.contextmanager
def serving(**overrides: Any) -> Iterator[Live]:
    """A ControlServer on a free port in its own thread and event loop, stopped at the end; `overrides` replace
    ServerConfig fields."""
    state, ready = Live(), threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with running(**overrides) as (server, controller, _):
            state.port, state.controller, state.loop = server.port, controller, asyncio.get_running_loop()
            state.server, state.stop = server, stop
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield state
    assert state.loop is not None
    if thread.is_alive():  # a test may have stopped it already
        state.loop.call_soon_threadsafe(stop.set)
    thread.join(10)


@pytest.fixture
def live() -> Iterator[Live]:
    """A ControlServer on a free port in its own thread and event loop, stopped after the test."""
    with serving() as state:
        yield state


def ctl_args(live: Live, *words: str) -> list[str]:
    return ["ctl", *words, "--set", f"server.port={live.port}", "--set", f"server.token={TOKEN!r}".replace("'", '"')]


def test_ctl_sends_commands_and_prints_replies(
    capsys: pytest.CaptureFixture[str], isolated_env: Path, live: Live
) -> None:
    """`ctl status`, `ctl ask`, `ctl config.set` and `ctl mute` reach the controller and print their replies;
    config.set prints only the keys it changed, with the values now in effect, and how to see the rest."""
    assert cli.main(ctl_args(live, "status")) == 0
    assert json.loads(capsys.readouterr().out) == {"state": "idle", "muted": False, "turn": 0}
    assert cli.main(ctl_args(live, "ask", "what", "time")) == 0
    assert capsys.readouterr().out == "You said: what time\n"
    assert cli.main(ctl_args(live, "config.set", "tts.voice=alice", "vad.aggressiveness=3")) == 0
    assert capsys.readouterr().out.splitlines() == [
        'tts.voice = "alice"',
        "vad.aggressiveness = 3",
        "(`assistant ctl config.get` shows every setting)",
    ]
    assert cli.main(ctl_args(live, "mute")) == 0
    assert live.controller is not None
    assert ("config_set", {"tts.voice": "alice", "vad.aggressiveness": 3}) in live.controller.calls
    assert live.controller.muted


def test_ctl_reaches_a_daemon_that_serves_tls(
    capsys: pytest.CaptureFixture[str], isolated_env: Path, tmp_path: Path
) -> None:
    """With server.tls_cert and server.tls_key set, `ctl status` dials wss:// and trusts the daemon's own
    certificate (it dialled ws:// and said `cannot reach the daemon ... start it with assistant run`); without them,
    against that daemon, it says the handshake went unanswered and names server.tls_cert."""
    cert, key = self_signed(tmp_path)
    with serving(tls_cert=str(cert), tls_key=str(key)) as tls:
        tls_keys = ["--set", f"server.tls_cert={str(cert)!r}", "--set", f"server.tls_key={str(key)!r}"]
        assert cli.main([*ctl_args(tls, "status"), *tls_keys]) == 0
        assert json.loads(capsys.readouterr().out) == {"state": "idle", "muted": False, "turn": 0}
        # the TLS keys left out of ctl's config: it said "cannot reach the daemon ... start it with assistant run"
        assert cli.main(ctl_args(tls, "status")) == 2
    line = error_line(capsys)
    assert (
        "did not answer the WebSocket handshake" in line and "set server.tls_cert here (ctl then dials wss://)" in line
    )


def test_ctl_errors_are_one_line(capsys: pytest.CaptureFixture[str], isolated_env: Path, live: Live) -> None:
    """A refused token, a failing command and a bad usage each print one `assistant: error:` line, exit 2."""
    assert cli.main(["ctl", "status", "--set", f"server.port={live.port}", "--set", 'server.token="bad"']) == 2
    assert "refused the connection: wrong token" in error_line(capsys)
    assert cli.main(ctl_args(live, "config.set", "vad.nope=1")) == 2
    assert "config.set failed: " in error_line(capsys)
    assert cli.main(ctl_args(live, "dance")) == 2
    assert "unknown ctl command 'dance'; commands: status" in error_line(capsys)


def test_ctl_without_a_token_says_where_it_looked(
    capsys: pytest.CaptureFixture[str], isolated_env: Path, live: Live
) -> None:
    """`ctl` with no server.token and no token file (or an empty one), refused by the daemon, names the file it
    looked for, what is wrong with it and the fix (it relayed the daemon's `no token; send Authorization: Bearer`,
    a header the user does not write, and called an empty file missing)."""
    assert cli.main(["ctl", "status", "--set", f"server.port={live.port}"]) == 2
    line = error_line(capsys)
    token_file = isolated_env / "xdg" / "assistant" / "token"
    assert f"needs its token and none was found here: server.token is unset and {token_file} does not exist" in line
    assert "run ctl as the user who runs the daemon, or set server.token" in line
    token_file.parent.mkdir(parents=True)
    token_file.write_text("  \n")  # there, but empty: "does not exist" sent the user looking for the wrong thing
    assert cli.main(["ctl", "status", "--set", f"server.port={live.port}"]) == 2
    assert f"server.token is unset and {token_file} is empty; run ctl as the user" in error_line(capsys)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one `assistant: error:` line on stderr (the in-process server may log its own lines there too)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("assistant: error: ")]
    assert len(lines) == 1
    return lines[0]


def test_ctl_events_tails_the_event_stream(capsys: pytest.CaptureFixture[str], isolated_env: Path, live: Live) -> None:
    """`ctl events` prints one line per pipeline event."""
    assert live.controller is not None and live.loop is not None and live.server is not None
    controller, loop, server = live.controller, live.loop, live.server
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(cli.main(ctl_args(live, "events", "--max-events", "2"))))
    t.start()
    for _ in range(500):  # wait (test-side only) until the ctl client has subscribed
        if any(c.subscribed for c in list(server.clients)):
            break
        threading.Event().wait(0.01)
    for text in ("hel", "hello"):
        loop.call_soon_threadsafe(controller.emit, events.PartialTranscript(text, 1.0))
    t.join(10)
    assert results == [0]
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        'transcript.partial   {"text":"hel","time":1.0}',
        'transcript.partial   {"text":"hello","time":1.0}',
    ]


def test_build_message_usage_errors() -> None:
    """Wrong ctl usage names the fix."""
    assert ctl.build_message(["say", "hi", "there"]) == {"type": "say", "id": "ctl", "text": "hi there"}
    with pytest.raises(InputError, match="needs the text"):
        ctl.build_message(["ask"])
    with pytest.raises(InputError, match="takes no arguments"):
        ctl.build_message(["mute", "now"])
    with pytest.raises(InputError, match="needs a command"):
        ctl.build_message([])


def test_ctl_config_set_and_max_events_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """`ctl config.set` without KEY=VALUE names ctl's own usage (it spoke of --set), and a negative --max-events is
    a usage error (it tailed events forever)."""
    with pytest.raises(InputError) as e:
        ctl.build_message(["config.set", "nonsense"])
    assert str(e.value) == (
        "`ctl config.set` expects section.key=value, got 'nonsense'; "
        "e.g. `assistant ctl config.set vad.hangover_ms=600`"
    )
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ctl", "events", "--max-events", "-1"])
    assert exit_.value.code == 2
    assert "argument --max-events: must be a whole number >= 0 (0: no limit), got '-1'" in capsys.readouterr().err


def test_ctl_says_so_when_the_daemon_goes_away_mid_command(
    capsys: pytest.CaptureFixture[str], isolated_env: Path, live: Live
) -> None:
    """A daemon that stops while `ctl events` tails it ends ctl with exit 2 and one line naming what happened and
    the fix (it was a ConnectionClosed traceback)."""
    assert live.loop is not None and live.server is not None and live.stop is not None
    server, stop = live.server, live.stop
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(cli.main(ctl_args(live, "events"))))
    t.start()
    for _ in range(500):  # wait (test-side only) until the ctl client has subscribed
        if any(c.subscribed for c in list(server.clients)):
            break
        threading.Event().wait(0.01)
    live.loop.call_soon_threadsafe(stop.set)
    t.join(20)
    assert results == [2]
    # the in-process server logs to stderr too: ctl's own message is the last line
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("assistant: error: the daemon at ws://127.0.0.1:")
    assert "closed the connection" in err and "assistant run" in err


def test_history_reset_also_resets_a_running_daemon(
    capsys: pytest.CaptureFixture[str], isolated_env: Path, monkeypatch: pytest.MonkeyPatch, live: Live
) -> None:
    """`assistant history reset` beside a running daemon erases the stored turns and the daemon's conversation too
    (the daemon kept answering from what the user had erased, and stored nothing of it again only by chance)."""
    from assistant.memory import Memory

    monkeypatch.setenv("XDG_DATA_HOME", str(isolated_env / "data"))
    memory = Memory(isolated_env / "data" / "assistant" / "memory.sqlite3")
    memory.add_turn([Message("user", "my secret"), Message("assistant", "noted")])
    assert live.controller is not None
    live.controller.history = [{"role": "user", "content": "my secret"}]
    assert cli.main(["history", "reset", *ctl_args(live)[1:]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("erased 1 stored turn from ") and "the running daemon's conversation too" in out
    assert memory.turns() == [] and live.controller.history == []
    assert ("history_reset", None) in live.controller.calls
    memory.close()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("server.port=0", "server.port is 0, so the daemon listens on a free port it picks at each start"),
        ("server.enabled=false", "server.enabled is false in this config, so the daemon serves no control channel"),
    ],
)
def test_ctl_without_an_address_to_dial_says_which_setting(
    capsys: pytest.CaptureFixture[str], isolated_env: Path, setting: str, message: str
) -> None:
    """`ctl` with server.port = 0 (a free port picked at each start) or the server off names that setting and the
    fix (it said it could not reach ws://127.0.0.1:0, or whatever answered on the port); `history reset` still
    erases the stored turns."""
    assert cli.main(["ctl", "status", "--set", setting]) == 2
    assert message in error_line(capsys)
    assert cli.main(["history", "reset", "--set", setting]) == 0
    assert capsys.readouterr().out.startswith("erased 0 stored turns from ")


@pytest.mark.parametrize(
    ("first", "shown"),
    [
        ("hello from elsewhere", "(got 'hello from elsewhere')"),
        ("[1, 2]", "(got '[1, 2]')"),
        (None, "(got nothing in 0.5 s)"),
        ("close", "(got a close: "),
    ],
)
def test_ctl_against_another_websocket_server_is_one_line(
    capsys: pytest.CaptureFixture[str],
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    first: str | None,
    shown: str,
) -> None:
    """`ctl` dialling a WebSocket server that is not the daemon (text that is no JSON, JSON that is no object,
    nothing, a close) fails in one line naming what it got and the fix (it printed a JSONDecodeError traceback,
    or waited forever for a hello)."""
    from websockets.sync.server import ServerConnection, serve

    monkeypatch.setattr(ctl, "HELLO_TIMEOUT_S", 0.5)

    def other(ws: ServerConnection) -> None:
        if first == "close":
            ws.close()
        elif first is not None:
            ws.send(first)
        with contextlib.suppress(Exception):
            ws.recv(timeout=5)

    with serve(other, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        code = cli.main(["ctl", "status", "--set", f"server.port={port}", "--set", 'server.token="t"'])
        server.shutdown()
    assert code == 2
    line = error_line(capsys)
    assert "does not speak the assistant's protocol v1" in line and shown in line, line
    assert line.endswith("check that server.port is the daemon's, or update assistant")


def test_doctor_beside_the_running_daemon_passes_its_ports(
    capsys: pytest.CaptureFixture[str], isolated_env: Path, live: Live
) -> None:
    """`doctor` run while the daemon of its config runs (a service's usual state) reports the server port and the
    Wyoming ports as the daemon's, not as problems (it failed them: "not free ... another `assistant run`?"); a
    port held by anything else still fails."""
    token = f"server.token={TOKEN!r}".replace("'", '"')
    with socket.socket() as wyoming:  # what the daemon would hold with wyoming.enabled
        wyoming.bind(("127.0.0.1", 0))
        wyoming.listen()
        held = wyoming.getsockname()[1]
        sets = [
            f"server.port={live.port}",
            token,
            "wyoming.enabled=true",
            f"wyoming.asr_port={held}",
        ]
        cli.main(["doctor", *(arg for s in sets for arg in ("--set", s))])
        out = capsys.readouterr().out
        assert "  ok    server port: the daemon of this config is running there\n" in out
        assert "  ok    wyoming ports: held by the running daemon\n" in out
        cli.main(["doctor", "--set", f"server.port={held}", "--set", token])
    assert f"  FAIL  server port: server port 127.0.0.1:{held} is not free" in capsys.readouterr().out
