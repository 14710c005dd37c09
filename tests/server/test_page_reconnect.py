"""The browser page after its connection drops, in headless Chromium against the scripted server: the session's
microphone and audio context are freed and one click on Start connects again."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np

from assistant.config import ServerConfig
from assistant.server.ws import ControlServer
from tests.server.fakes import FakeBackend, FakeController, FakeSpeech
from tests.server.helpers import TOKEN
from tests.server.test_page import browser

WAIT_S = 60.0  # safety net for a loaded shared CPU; never a timing assertion

# Resolves with the page's state once `cond` (a JS expression) holds; checked every 100 ms.
UNTIL = """new Promise(ok => {{ const check = () => {{
  if ({cond}) ok(true); else setTimeout(check, 100);
}}; check(); }})"""
STATE = """(() => ({
  state: document.getElementById('state').textContent,
  button: document.getElementById('connect').textContent,
  message: document.getElementById('message').textContent,
  tokenBox: !document.getElementById('token-label').hidden,
  ws: window.assistantPage.ws !== null,
  mic: window.assistantPage.mic !== null,
  ctx: window.assistantPage.ctx !== null,
  voices: [...document.querySelectorAll('#voice option')].map(o => o.value),
}))()"""


def quiet_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(np.zeros(16_000, "<i2").tobytes())
    return path


def test_one_click_on_start_reconnects_after_a_refused_connection(tmp_path: Path) -> None:
    """Opened without its token, the page's Start is refused (401 at the handshake): the microphone and the audio
    context are released and the token box shows; with the token pasted, the voice list fills (it stayed at
    "default") and one click on Start connects (it took two: the first only stopped the dead session, whose
    microphone stayed open)."""

    async def until(dev: Any, cond: str) -> None:
        async with asyncio.timeout(WAIT_S):
            await dev.js(UNTIL.format(cond=cond))

    async def body() -> tuple[dict[str, Any], dict[str, Any], int]:
        backend, cfg = FakeBackend(), ServerConfig(port=0, token=TOKEN)
        server = ControlServer(cfg, FakeController(), backend, audio=FakeSpeech())  # /health lists its voice
        async with server, browser(tmp_path, quiet_wav(tmp_path / "quiet.wav")) as dev:
            await dev.call("Page.enable")
            await dev.navigate(f"http://127.0.0.1:{server.port}/")
            await dev.js("document.getElementById('connect').click()", gesture=True)
            await until(dev, "!document.getElementById('token-label').hidden")
            refused = await dev.js(STATE)
            paste = f"const box = document.getElementById('token'); box.value = {json.dumps(TOKEN)}; "
            await dev.js(paste + "box.dispatchEvent(new Event('change'))")
            await until(dev, "document.querySelectorAll('#voice option').length > 1")
            await dev.js("document.getElementById('connect').click()", gesture=True)
            await until(dev, "document.getElementById('state').textContent === 'listening'")
            return refused, await dev.js(STATE), len(backend.sessions)

    refused, connected, sessions = asyncio.run(body())
    assert refused["state"] == "disconnected" and refused["button"] == "Start" and refused["tokenBox"], refused
    assert "paste it into the token box" in refused["message"], refused
    assert not (refused["ws"] or refused["mic"] or refused["ctx"]), refused  # nothing of the dead session is held
    assert connected["button"] == "Stop" and connected["ws"] and connected["mic"], connected
    assert sessions == 1
    assert refused["voices"] == [""] and connected["voices"] == ["", "default"], connected


def test_a_refusal_with_a_token_does_not_blame_a_missing_token(tmp_path: Path) -> None:
    """Opened with its token, a page the daemon refuses (here: no Realtime sessions allowed) says the daemon refused
    or went away (it said "without a token here", though the token was there)."""

    async def body() -> dict[str, Any]:
        cfg = ServerConfig(port=0, token=TOKEN, realtime_sessions=0)
        async with ControlServer(cfg, FakeController(), None) as server:
            async with browser(tmp_path, quiet_wav(tmp_path / "quiet.wav")) as dev:
                await dev.call("Page.enable")
                await dev.navigate(f"http://127.0.0.1:{server.port}/#token={TOKEN}")
                await dev.js("document.getElementById('connect').click()", gesture=True)
                async with asyncio.timeout(WAIT_S):
                    await dev.js(UNTIL.format(cond="document.getElementById('message').textContent"))
                return await dev.js(STATE)

    state = asyncio.run(body())
    assert state["state"] == "disconnected" and not (state["ws"] or state["mic"]), state
    assert state["message"].startswith("disconnected (1006); the daemon refused the connection or went away"), state
    assert "without a token" not in state["message"]
