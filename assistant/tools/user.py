"""Tools declared in config.toml: a local command (argv, never a shell) or an HTTP request.

Each runs with its own timeout and output limit. A command tool RUNS A PROGRAM on this machine and an http tool
REACHES OUTSIDE the machine; both are off unless named in `tools.enabled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from assistant.config import UserToolConfig
from assistant.tools.registry import Tool, ToolFailed

PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _fill(template: str, args: Mapping[str, Any], quote: bool = False) -> str:
    def sub(m: re.Match[str]) -> str:
        value = _text(args.get(m.group(1), ""))
        return urllib.parse.quote(value, safe="") if quote else value

    return PLACEHOLDER.sub(sub, template)


def _cut(data: bytes, limit: int) -> str:
    text = data[:limit].decode("utf-8", errors="replace")
    return text + (f"\n[output cut at {limit} bytes]" if len(data) > limit else "")


async def _read(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Up to `limit` + 1 bytes (one past the limit tells that output was cut), or all until end of file."""
    data = b""
    while len(data) <= limit:
        chunk = await stream.read(limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return data


def command_tool(name: str, cfg: UserToolConfig) -> Tool:
    """Runs `cfg.argv` with each "{arg}" replaced by that argument (one argv item stays one item)."""

    async def run(args: Mapping[str, Any]) -> dict[str, Any]:
        argv = [_fill(a, args) for a in cfg.argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as e:
            raise ToolFailed(f"cannot run {argv[0]}: {e.strerror}") from e
        try:
            # Read at most one byte past the limit: a chatty program cannot fill memory.
            assert proc.stdout is not None and proc.stderr is not None
            out, err = await asyncio.gather(
                _read(proc.stdout, cfg.max_output_bytes), _read(proc.stderr, cfg.max_output_bytes)
            )
            if (len(out) > cfg.max_output_bytes or len(err) > cfg.max_output_bytes) and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # it may exit between the check and the kill
                    proc.kill()
            code = await proc.wait()
        finally:  # timeout or barge-in (cancellation): the program must not outlive the call
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
        result: dict[str, Any] = {"exit_code": code, "output": _cut(out, cfg.max_output_bytes)}
        if err:
            result["errors"] = _cut(err, cfg.max_output_bytes)
        return result

    return Tool(name, cfg.description, cfg.parameters, run, timeout_s=cfg.timeout_s, reach="command")


def http_tool(name: str, cfg: UserToolConfig) -> Tool:
    """Requests `cfg.url` ("{arg}" filled, URL-quoted); GET sends the other arguments as the query, POST as JSON."""

    def request(args: Mapping[str, Any]) -> dict[str, Any]:
        used = set(PLACEHOLDER.findall(cfg.url))
        rest = {k: v for k, v in args.items() if k not in used}
        url = _fill(cfg.url, args, quote=True)
        data = None
        headers = dict(cfg.headers)
        if cfg.method == "GET" and rest:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode({k: _text(v) for k, v in rest.items()})
        elif cfg.method == "POST":
            data = json.dumps(rest, ensure_ascii=False).encode()
            headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(url, data=data, headers=headers, method=cfg.method)
        try:
            with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
                body = resp.read(cfg.max_output_bytes + 1)
                status = resp.status
        except urllib.error.HTTPError as e:
            body, status = e.read(cfg.max_output_bytes + 1), e.code
        except (urllib.error.URLError, OSError) as e:
            raise ToolFailed(f"the request to {urllib.parse.urlsplit(url).netloc} failed: {e}") from e
        return {"status": status, "body": _cut(body, cfg.max_output_bytes)}

    async def run(args: Mapping[str, Any]) -> dict[str, Any]:
        # urllib blocks: a worker thread (not the compute thread); a cancelled call abandons it to its timeout.
        return await asyncio.to_thread(request, args)

    return Tool(name, cfg.description, cfg.parameters, run, timeout_s=cfg.timeout_s, reach="network")


def user_tool(name: str, cfg: UserToolConfig) -> Tool:
    return command_tool(name, cfg) if cfg.kind == "command" else http_tool(name, cfg)
