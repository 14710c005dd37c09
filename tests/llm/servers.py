"""Loopback LLM servers for the remote-backend tests: a real `mlx_lm.server` subprocess, and a scripted one.

The scripted server is a real HTTP server on a loopback port whose answers the test writes (server-sent-event
chunks, HTTP errors, garbage, silence), for the cases a real model cannot be made to produce on demand.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2

STARTUP_S = 120.0  # importing mlx-lm and loading the model on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlxLmServer:
    """`python -m mlx_lm server --model FOLDER` on a loopback port; its stderr is kept in a log file."""

    def __init__(self, model: Path, port: int, log: Path) -> None:
        self.model, self.port, self.log_path = model, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> MlxLmServer:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_lm", "server", "--model", str(self.model), "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlx_lm.server exited: {self.log()[-2000:]}")
            try:
                if httpx2.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            time.sleep(0.2)  # waiting for a subprocess to bind: there is no event to wait on
        raise RuntimeError(f"mlx_lm.server did not start in {STARTUP_S} s: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Script:
    """What the scripted server does with each POST: `respond(handler, body)`; the bodies are recorded."""

    respond: Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def sse(handler: BaseHTTPRequestHandler, chunks: list[dict[str, Any] | str], done: bool = True) -> None:
    """Send `chunks` as an OpenAI-style event stream (dicts as JSON, strings verbatim)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()
    for c in chunks:
        data = c if isinstance(c, str) else json.dumps(c)
        handler.wfile.write(f"data: {data}\n\n".encode())
        handler.wfile.flush()
    if done:
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()


def text_chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


class ScriptedServer:
    """A ThreadingHTTPServer on a free loopback port running `script` for POST /v1/chat/completions."""

    def __init__(self, script: Script) -> None:
        self.script = script

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                script.bodies.append(body)
                script.headers.append(dict(self.headers))
                script.respond(self, body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
