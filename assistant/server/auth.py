"""Handshake checks: the token (config, or generated once and stored 0600), the Origin allowlist, loopback peers."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

from assistant.config import ServerConfig
from assistant.errors import ConfigError

log = logging.getLogger("assistant.server")
conn_log = logging.getLogger("assistant.server.connections")  # throttled by server/ws.py

# Browsers cannot set headers on a WebSocket: they may send the token as a subprotocol `token.<TOKEN>` (or, for
# Realtime clients written for OpenAI, `openai-insecure-api-key.<TOKEN>`), or as `?token=` in the URL.
TOKEN_SUBPROTOCOLS = ("token.", "openai-insecure-api-key.")


def token_path(cfg: ServerConfig) -> Path:
    if cfg.token_file:
        return Path(cfg.token_file).expanduser()
    base = Path(os.environ["XDG_CONFIG_HOME"]) if os.environ.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "assistant" / "token"


def read_token(cfg: ServerConfig) -> str | None:
    """The configured or stored token, or None when there is none yet (clients use this)."""
    if cfg.token:
        return cfg.token
    path = token_path(cfg)
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except IsADirectoryError as e:
        raise ConfigError(
            f"the server token file {path} is a folder; set server.token_file to a file (it is created at the first "
            "start) or set server.token"
        ) from e
    except NotADirectoryError as e:  # a file where a folder of the path should be: permissions would not help
        raise ConfigError(
            f"cannot read the server token {path}: a part of its folder {path.parent} is a file; set "
            "server.token_file to a path in a folder (created at the first start), or set server.token"
        ) from e
    except OSError as e:
        raise ConfigError(f"cannot read the server token {path}: {e.strerror}; fix its permissions") from e
    except UnicodeDecodeError as e:  # a binary file put there: a traceback from run, ctl and doctor
        raise ConfigError(
            f"the server token file {path} is not text (byte {e.object[e.start]:#04x} at offset {e.start}); remove "
            "it (a new token is generated at the next start) or set server.token_file to the right file"
        ) from e


def check_token_file(cfg: ServerConfig) -> None:
    """The token the daemon will use can be read, or created where none exists yet; creates nothing.
    ConfigError naming the fix (a folder, a symbolic link, an unreadable file)."""
    if cfg.token:
        return
    path = token_path(cfg)
    _refuse_link(path)
    if read_token(cfg) is not None:
        return
    folder = path.parent  # the first start creates the token there: a read-only home failed after the models loaded
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot create the server token {path}: {folder} is not writable; fix its permissions, or set "
            "server.token_file to a path you can write, or server.token"
        )


def load_or_create_token(cfg: ServerConfig) -> str:
    """server.token if set; else the token stored at token_path, created (mode 0600) at the first start.

    The file is never used through a symbolic link (another user's link could point it anywhere) and is written
    whole to a temporary file that then replaces it, so a reader never sees half a token.
    """
    if cfg.token:
        return cfg.token
    path = token_path(cfg)
    _refuse_link(path)
    existing = read_token(cfg)
    if existing:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("token file %s was readable by others (mode %o); set it to 0600", path, mode)
        return existing
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, token + "\n")
    except OSError as e:
        raise ConfigError(
            f"cannot write the server token to {path}: {e.strerror}; set server.token_file or server.token"
        ) from e
    log.info("generated a server token in %s", path)
    return token


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise ConfigError(
            f"the server token file {path} is a symbolic link; remove it (a new token is generated) "
            "or set server.token_file to a regular file"
        )


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a new 0600 file beside `path`, then rename it over `path` (which may be a link: it is
    replaced, not followed)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # O_EXCL: never through a link
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def offered_token(authorization: str | None, query: str, subprotocols: list[str]) -> str | None:
    """The token a client presents: `Authorization: Bearer`, then `?token=`, then a token subprotocol."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    values = parse_qs(query).get("token")
    if values:
        return values[0]
    for p in subprotocols:
        for prefix in TOKEN_SUBPROTOCOLS:
            if p.startswith(prefix):
                return p[len(prefix) :]
    return None


def token_ok(offered: str | None, expected: str) -> bool:
    return offered is not None and hmac.compare_digest(offered.encode(), expected.encode())


def dial_host(host: str) -> str:
    """The address a client on this machine dials for a server bound to `host`, as a URL writes it: a wildcard
    address is the loopback of its family, an IPv6 address is bracketed."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, allowed: list[str], own: str | None = None) -> bool:
    """No Origin header = not a browser = allowed; a browser page only from an allowlisted origin or from the
    daemon's own origin `own` (`http://HOST:PORT` as the request's Host header names it: the page at `/`)."""
    if origin is None:
        return True
    origin = origin.rstrip("/").lower()  # scheme and host are case-insensitive; browsers send them lower case
    return origin in {o.rstrip("/").lower() for o in allowed} or (own is not None and origin == own.lower())


def check_origins(allowed: list[str]) -> None:
    """ConfigError naming the first `server.allowed_origins` entry that no browser's Origin header can equal."""
    for entry in allowed:
        if entry.strip() == "*":
            raise ConfigError(
                'server.allowed_origins does not take "*" (any web page could then drive the assistant); list each '
                'origin, e.g. ["http://localhost:3000"]'
            )
        if entry != "null" and not re.fullmatch(r"https?://[^/\s?#@]+/?", entry, re.IGNORECASE):
            raise ConfigError(
                f"server.allowed_origins entry {entry[:60]!r} is not an origin, so no page would match it; write "
                'scheme://host[:port] without a path, e.g. "http://localhost:3000"'
            )


def own_origin(host_header: str | None, tls: bool) -> str | None:
    """The origin of pages this daemon serves, as the browser names it from the Host header."""
    if not host_header or any(c in host_header for c in "/@ \t"):
        return None
    return f"{'https' if tls else 'http'}://{host_header}"


def refusal(
    cfg: ServerConfig,
    token: str,
    get_all: Callable[[str], list[str]],
    query: str,
    peer: str | None,
    tls: bool,
) -> tuple[int, str] | None:
    """The one handshake rule of the WebSockets and the HTTP endpoints: (status, reason) to refuse, None to
    accept. One Authorization/Origin header at most; a browser's Origin must be allowlisted or the daemon's
    own; then the token (header, `?token=` or subprotocol), or a loopback peer where that is allowed."""
    for name in ("Authorization", "Origin"):
        if len(get_all(name)) > 1:
            return 400, f"the request has more than one {name} header; send one"
    origins, hosts = get_all("Origin"), get_all("Host")
    origin = origins[0] if origins else None
    if not origin_allowed(origin, cfg.allowed_origins, own_origin(hosts[0] if len(hosts) == 1 else None, tls)):
        shown = (origin or "")[:100]  # headers are bounded (8 KiB) but need not fill the log
        conn_log.warning("refused a connection from origin %s", shown)
        return 403, f"origin {shown} is not allowed; add it to server.allowed_origins"
    protocols = [s.strip() for v in get_all("Sec-WebSocket-Protocol") for s in v.split(",") if s.strip()]
    authorization = get_all("Authorization")
    offered = offered_token(authorization[0] if authorization else None, query, protocols)
    if token_ok(offered, token):
        return None
    if cfg.allow_loopback_without_token and is_loopback(peer):
        return None
    why = "no token" if offered is None else "wrong token"
    if offered is None and authorization:  # e.g. the bare token, or `Basic ...`: the scheme is what is wrong
        why = "the Authorization header is not `Bearer <token>`"
    conn_log.warning("refused a connection from %s: %s", peer, why)
    # the token file's path stays out of the reply: it would tell strangers the user's home folder
    return 401, (
        f"{why}; send `Authorization: Bearer <token>` with the daemon's server.token, or the token it stored "
        "(by default in ~/.config/assistant/token on its machine)"
    )
