"""Handshake checks: the token (config, or generated once and stored 0600), the Origin allowlist, loopback peers."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import parse_qs

from assistant.config import ServerConfig
from assistant.errors import ConfigError

log = logging.getLogger("assistant.server")

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
    except OSError as e:
        raise ConfigError(f"cannot read the server token {path}: {e.strerror}; fix its permissions") from e


def load_or_create_token(cfg: ServerConfig) -> str:
    """server.token if set; else the token stored at token_path, created (mode 0600) at the first start.

    The file is never used through a symbolic link (another user's link could point it anywhere) and is written
    whole to a temporary file that then replaces it, so a reader never sees half a token.
    """
    if cfg.token:
        return cfg.token
    path = token_path(cfg)
    if path.is_symlink():
        raise ConfigError(
            f"the server token file {path} is a symbolic link; remove it (a new token is generated) "
            "or set server.token_file to a regular file"
        )
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


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """No Origin header = not a browser = allowed; a browser page only from an allowlisted origin."""
    return origin is None or origin.rstrip("/") in {o.rstrip("/") for o in allowed}
