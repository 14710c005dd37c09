"""`assistant ctl`: a small native-protocol client (send one command and print its reply, or tail events)."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from assistant.config import ServerConfig, parse_override
from assistant.errors import AssistantError, ConfigError, InputError, ProtocolError
from assistant.server import auth
from assistant.server import protocol as p

TEXT_COMMANDS = ("say", "ask")
HELLO_TIMEOUT_S = 5.0  # the daemon sends its hello at once; another program's server may send nothing
USAGE = (
    "commands: status, say TEXT, ask TEXT, interrupt, mute, unmute, ptt.start, ptt.stop, config.get, "
    "config.set KEY=VALUE..., history.get, history.reset, events"
)


class DaemonUnreachable(AssistantError):
    """No daemon answers at the configured address (none runs, or server.host/port differ)."""


def build_message(words: Sequence[str], msg_id: str = "ctl") -> dict[str, Any]:
    """The command message for `assistant ctl WORDS...` (InputError naming the usage when wrong)."""
    if not words:
        raise InputError(f"ctl needs a command; {USAGE}")
    kind, rest = words[0], list(words[1:])
    if kind not in p.COMMANDS or kind in ("subscribe", "unsubscribe"):
        raise InputError(f"unknown ctl command {kind!r}; {USAGE}")
    msg: dict[str, Any] = {"type": kind, "id": msg_id}
    if kind in TEXT_COMMANDS:
        if not rest:
            raise InputError(f"`ctl {kind}` needs the text, e.g. `assistant ctl {kind} hello there`")
        msg["text"] = " ".join(rest)
    elif kind == "config.set":
        if not rest:
            raise InputError("`ctl config.set` needs KEY=VALUE pairs, e.g. `assistant ctl config.set tts.voice=alice`")
        bad = next((w for w in rest if "=" not in w or w.partition("=")[0].strip().count(".") != 1), None)
        if bad is not None:  # parse_override's message is about --set
            raise InputError(
                f"`ctl config.set` expects section.key=value, got {bad!r}; e.g. `assistant ctl config.set "
                "vad.hangover_ms=600`"
            )
        msg["changes"] = dict(parse_override(w) for w in rest)
    elif rest:
        raise InputError(f"`ctl {kind}` takes no arguments; {USAGE}")
    return msg


def url_of(cfg: ServerConfig) -> str:
    """The daemon's native endpoint as bound: a wildcard address is dialled on the loopback of its family; wss://
    when the daemon serves TLS (server.tls_cert)."""
    return f"{'wss' if cfg.tls_cert else 'ws'}://{auth.dial_host(cfg.host)}:{cfg.port}/v1/control"


def tls_client_context(cfg: ServerConfig) -> ssl.SSLContext | None:
    """For a daemon serving TLS: trust exactly its own certificate (server.tls_cert), whatever name it was issued
    for, since ctl dials the loopback address. None without TLS. ConfigError when the file cannot be read."""
    if not cfg.tls_cert:
        return None
    path = os.path.expanduser(cfg.tls_cert)
    try:
        context = ssl.create_default_context(cafile=path)  # this file only: no system CAs
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot read server.tls_cert {path} ({e}); give the daemon's PEM certificate") from e
    context.check_hostname = False  # the certificate is pinned: it may name the host, not 127.0.0.1
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a CA-issued leaf is trusted on its own
    return context


def _reachable(cfg: ServerConfig) -> None:
    """DaemonUnreachable when this config gives ctl no address to dial (it tried port 0 and reported a refusal)."""
    if not cfg.enabled:
        raise DaemonUnreachable(
            "server.enabled is false in this config, so the daemon serves no control channel; set it to true and "
            "restart the daemon"
        )
    if cfg.port == 0:
        raise DaemonUnreachable(
            "server.port is 0, so the daemon listens on a free port it picks at each start, which ctl cannot know; "
            "set server.port to a fixed port (e.g. 8765), or pass the port the daemon logged with --set server.port=N"
        )


@contextlib.contextmanager
def _connect(cfg: ServerConfig) -> Iterator[ClientConnection]:
    _reachable(cfg)
    token = auth.read_token(cfg)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = url_of(cfg)
    with contextlib.ExitStack() as stack:
        try:
            ws = stack.enter_context(
                connect(url, additional_headers=headers, open_timeout=5, max_size=None, ssl=tls_client_context(cfg))
            )
        except InvalidStatus as e:
            if token is None and e.response.status_code == 401:  # the daemon's own hint names a header ctl sends
                path = auth.token_path(cfg)
                raise ProtocolError(
                    f"the daemon at {url} needs its token and none was found here: server.token is unset and "
                    f"{path} {'is empty' if path.exists() else 'does not exist'}; run ctl as the user who runs the "
                    "daemon, or set server.token (or server.token_file) to its token"
                ) from e
            body = e.response.body.decode(errors="replace").strip()
            raise ProtocolError(f"the daemon at {url} refused the connection: {body}") from e
        except InvalidMessage as e:  # something listens there but answers no HTTP: TLS, most likely
            hint = (
                "" if cfg.tls_cert else "if the daemon serves TLS, set server.tls_cert here (ctl then dials wss://); "
            )
            raise ProtocolError(
                f"the server at {url} did not answer the WebSocket handshake ({e}); {hint}check server.host/port"
            ) from e
        except (OSError, TimeoutError, WebSocketException) as e:
            raise DaemonUnreachable(
                f"cannot reach the daemon at {url} ({e}); start it with `assistant run`, or set server.host/port"
            ) from e
        hello: Any = None
        try:
            first = ws.recv(timeout=HELLO_TIMEOUT_S)
            got = p.clip(first if isinstance(first, str) else repr(first))
            hello = json.loads(first)
        except TimeoutError:
            got = f"nothing in {HELLO_TIMEOUT_S:g} s"
        except ConnectionClosed as e:
            got = f"a close: {e}"
        except ValueError:  # not JSON: another program's WebSocket server
            pass
        if not isinstance(hello, dict) or hello.get("type") != "hello" or hello.get("protocol") != p.PROTOCOL_VERSION:
            raise ProtocolError(
                f"{url} does not speak the assistant's protocol v{p.PROTOCOL_VERSION} (got {got}); check that "
                "server.port is the daemon's, or update assistant"
            )
        try:
            yield ws
        except ConnectionClosed as e:  # the daemon stopped or restarted mid-command
            raise AssistantError(
                f"the daemon at {url} closed the connection ({e}); it stopped or restarted: see its log, and start "
                "it again with `assistant run` if it is not running"
            ) from e


def run(cfg: ServerConfig, words: Sequence[str], out: Callable[[str], None] = print, max_events: int = 0) -> int:
    """Send the command, print its reply (streaming `ask`), or print events; returns the exit code. (A reader
    that goes away, `assistant ctl events | head`, raises BrokenPipeError: the CLI ends quietly with code 0.)"""
    if list(words[:1]) == ["events"]:
        if len(words) > 1:
            raise InputError("`ctl events` takes no arguments")
        return _tail(cfg, out, max_events)
    msg = build_message(words)
    with _connect(cfg) as ws:
        ws.send(json.dumps(msg))
        streamed = False
        while True:
            reply = json.loads(ws.recv())
            if reply.get("type") == "ask.delta" and reply.get("id") == msg["id"]:
                out_partial(out, reply["text"])
                streamed = True
            elif reply.get("type") == "error" and reply.get("id") == msg["id"]:
                why = str(reply["message"]).removeprefix(f"{msg['type']}: ")  # the daemon may name the command too
                raise ProtocolError(f"{msg['type']} failed: {why}")
            elif reply.get("type") == "reply" and reply.get("id") == msg["id"]:
                break
    if streamed:
        out("")
    elif msg["type"] == "ask":
        out(reply["result"]["text"])
    elif msg["type"] == "config.set":
        for line in changed_lines(msg["changes"], reply["result"]):
            out(line)
        out("(`assistant ctl config.get` shows every setting)")
    elif reply["result"]:
        out(json.dumps(reply["result"], indent=2, ensure_ascii=False))
    return 0


def changed_lines(changes: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """`section.key = value` for each key config.set changed, its value as the daemon now has it (the reply holds
    every setting: printing all of it buried the change)."""
    lines = []
    for key in changes:
        section, _, name = key.partition(".")
        value = settings.get(section, {}).get(name, changes[key])
        lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    return lines


def out_partial(out: Callable[[str], None], text: str) -> None:
    if out is print:
        print(text, end="", flush=True)
    else:
        out(text)


def _tail(cfg: ServerConfig, out: Callable[[str], None], max_events: int) -> int:
    with _connect(cfg) as ws:
        ws.send(json.dumps({"type": "subscribe", "id": "ctl"}))
        seen = 0
        while True:
            msg = json.loads(ws.recv())
            if msg.get("id") == "ctl":
                if msg["type"] == "error":
                    raise ProtocolError(f"subscribe failed: {msg['message']}")
                continue
            out(format_event(msg))
            seen += 1
            if max_events and seen >= max_events:
                return 0


def format_event(msg: dict[str, Any]) -> str:
    """One line per event: its type, then its fields as compact JSON (time last)."""
    kind = msg.get("type", "?")
    body = {k: v for k, v in msg.items() if k not in ("type", "time")}
    if "time" in msg:
        body["time"] = msg["time"]
    return f"{kind:<20} {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}"
