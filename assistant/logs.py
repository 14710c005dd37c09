"""Logging on stderr: `key=value` lines by default, JSON lines with `--log-json`.

Call sites pass structured fields through `extra={"fields": {...}}` (or the `kv()` helper) so both formats carry
them without string formatting.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def kv(**fields: Any) -> dict[str, Any]:
    """`log.info("turn", extra=kv(ms=12))` attaches structured fields to a record."""
    return {"fields": fields}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(getattr(record, "fields", {}) or {})
    for key, value in record.__dict__.items():
        if key not in _RESERVED and key != "fields":
            fields[key] = value
    return fields


def _quote(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n\t')) else text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [
            stamp,
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts += [f"{k}={_quote(v)}" for k, v in _fields(record).items()]
        if record.exc_info:
            parts.append("\n" + self.formatException(record.exc_info))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class StderrHandler(logging.StreamHandler[Any]):
    """Writes to whatever `sys.stderr` is at each record, not the stream that was current at setup (a test
    harness or a service manager may swap it, and a closed one must not swallow later records)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # StreamHandler.__init__ assigns it; the property always answers sys.stderr


def setup(level: str = "info", as_json: bool = False) -> None:
    """Route the `assistant` loggers to stderr in the chosen format (idempotent)."""
    root = logging.getLogger("assistant")
    root.handlers.clear()
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if as_json else KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
