"""The daemon's browser page in headless Chromium (Debian's `chromium`), with a fake microphone playing an
espeak-ng WAV: the page connects to /v1/realtime, shows the transcript and the reply, schedules the reply's audio
and draws a latency row; a page from another origin cannot connect. A screenshot is written as test output."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from assistant.audio.format import CAPTURE_RATE
from assistant.config import Config
from tests import tiny_engines
from tests.server.test_headless_e2e import TOKEN, daemon
from tests.speech import needs_espeak, say, silence

WAIT_S = 180.0  # safety net for a loaded shared CPU; never a timing assertion
PTT_HOLD_S = 6.5  # longer than the fake microphone's file (0.5 s + the question + 4 s), so it holds the question
SCREENSHOT = Path(os.environ.get("ASSISTANT_TEST_OUTPUT", "/tmp")) / "assistant-page.png"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("no Chromium: apt-get install chromium (Debian) or install Google Chrome", pytrace=False)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    changes = {"pipeline.mode": "hands_free", "server.port": 0, "server.token": TOKEN}
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("page_models"), changes)


class DevTools:
    """A minimal Chrome DevTools Protocol client over the page's WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws, self.ids = ws, itertools.count(1)
        self.events: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        await self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if "method" in msg:
                self.events.append(msg["method"])
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]  # type: ignore[no-any-return]

    async def navigate(self, url: str) -> None:
        """Load `url` and return once its load event fired."""
        self.events.clear()
        await self.call("Page.navigate", url=url)
        while "Page.loadEventFired" not in self.events:
            msg = json.loads(await self.ws.recv())
            self.events.append(msg.get("method", ""))

    async def js(self, expression: str, gesture: bool = False) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True, userGesture=gesture
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def browser(tmp: Path, wav: Path) -> AsyncIterator[DevTools]:
    profile = tmp / "profile"
    args = [
        chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
        "--window-size=1000,800", "--remote-debugging-port=0", "about:blank",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(60):  # Chromium prints "DevTools listening on ws://127.0.0.1:PORT/..."
            while b"DevTools listening on" not in (line := await proc.stderr.readline()):
                if not line:
                    raise RuntimeError("Chromium exited before it listened; run it by hand to see why")
        port = int(line.split(b"ws://127.0.0.1:")[1].split(b"/")[0])
        drain = asyncio.create_task(proc.stderr.read())  # its later chatter must not fill the pipe
        async with httpx.AsyncClient() as h:
            pages = (await h.get(f"http://127.0.0.1:{port}/json/list")).json()
        target = next(p for p in pages if p["type"] == "page")
        async with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            yield DevTools(ws)
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()


def fake_microphone(path: Path) -> Path:
    """A spoken question then silence (Chromium loops the file), 16-bit mono WAV."""
    x = np.concatenate([silence(0.5), say("What time is it now?"), silence(4.0)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(CAPTURE_RATE)
        w.writeframes(x.astype("<i2").tobytes())
    return path


async def serve_other_origin(html: str) -> asyncio.Server:
    """A plain HTTP server on another port: a page of a different origin."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = html.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n")
        writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


# Resolves once the first turn's row shows `done` and audio was scheduled (the page is checked every 200 ms).
TURN_DONE = """new Promise(ok => { const check = () => {
  const done = document.querySelector('#latency tbody tr td[data-stage=done]');
  if (done && done.textContent && window.assistantPage.chunks > 0) ok(true); else setTimeout(check, 200);
}; check(); })"""

PAGE_STATE = """(() => ({
  user: [...document.querySelectorAll('#log li.user')].map(e => e.textContent),
  assistant: [...document.querySelectorAll('#log li.assistant')].map(e => e.textContent),
  state: document.getElementById('state').textContent,
  message: document.getElementById('message').textContent,
  rows: [...document.querySelectorAll('#latency tbody tr')].map(r =>
    Object.fromEntries([...r.querySelectorAll('td[data-stage]')].map(td => [td.dataset.stage, td.textContent]))),
  bars: document.querySelectorAll('#latency .bar').length,
  chunks: window.assistantPage.chunks,
  seconds: window.assistantPage.audioSeconds,
}))()"""


@needs_espeak
def test_page_talks_to_the_daemon_in_headless_chromium(tiny_config: Config, tmp_path: Path) -> None:
    """The page served at / takes the fake microphone's speech to a transcript and a spoken reply: the user's
    words and the reply text appear, reply audio chunks are scheduled, and the turn gets a latency row with every
    stage; a push-to-talk turn does the same; a page served from another origin is refused even with the token."""
    wav = fake_microphone(tmp_path / "question.wav")

    async def body() -> tuple[dict[str, Any], str]:
        async with daemon(tiny_config) as (server, _), browser(tmp_path, wav) as dev:
            await dev.call("Page.enable")
            await dev.navigate(f"http://127.0.0.1:{server.port}/#token={TOKEN}")
            await dev.js("document.getElementById('connect').click()", gesture=True)
            async with asyncio.timeout(WAIT_S):
                await dev.js(TURN_DONE)
            # push to talk: hands-free off, hold the button over one whole loop of the fake microphone's file
            await dev.js("document.getElementById('handsfree').click()", gesture=True)
            down = "document.getElementById('ptt').dispatchEvent(new PointerEvent('pointerdown'))"
            await dev.js(down, gesture=True)
            await asyncio.sleep(PTT_HOLD_S)
            await dev.js("document.getElementById('ptt').dispatchEvent(new PointerEvent('pointerup'))", gesture=True)
            async with asyncio.timeout(WAIT_S):
                await dev.js(TURN_DONE.replace("tbody tr td", "tbody tr:nth-child(2) td"))
            state = await dev.js(PAGE_STATE)
            shot = await dev.call("Page.captureScreenshot", format="png")
            SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
            # another origin: the same token, refused at the handshake (403) by the Origin rule
            probe = f"""new Promise(done => {{
              const ws = new WebSocket('ws://127.0.0.1:{server.port}/v1/realtime', ['realtime', 'token.{TOKEN}']);
              ws.onopen = () => done('open'); ws.onclose = (e) => done('closed ' + e.code);
            }})"""
            other = await serve_other_origin("<!doctype html><title>elsewhere</title>")
            async with other:
                other_port = other.sockets[0].getsockname()[1]
                await dev.navigate(f"http://127.0.0.1:{other_port}/")
                assert await dev.js("document.title") == "elsewhere"
                refused = await dev.js(probe)
            return state, refused

    state, refused = asyncio.run(body())
    print(f"page: {json.dumps(state)}; other origin: {refused}; screenshot {SCREENSHOT}")
    assert state["user"] and state["user"][0].strip(), state
    assert state["assistant"] and state["assistant"][0].strip(), state
    assert state["chunks"] > 0 and state["seconds"] > 0
    for row in state["rows"][:2]:  # the hands-free turn, then the push-to-talk turn
        assert all(row[s] for s in ("transcript", "response", "text", "audio", "plays", "done")), row
    assert len(state["user"]) >= 2 and state["bars"] >= 12 and not state["message"], state
    assert refused == "closed 1006", refused  # the browser sees a failed handshake
