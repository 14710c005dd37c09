"""The sound system fails under the real daemon (`assistant run`, tiny engines) in the virtual room (issue 23).

Each test starts its own PulseAudio room, runs the daemon against it as a subprocess with the WebSocket control
channel, and keeps asking `status` every 50 ms for the whole test. The room's sound server is stopped (every
device gone at once, as when the audio service restarts) while idle, in the middle of a reply, and while the user
is speaking, then started again with the same devices on the same socket. Also: the system's default output
changing in the middle of a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from assistant.config import Config
from tests import tiny_engines
from tests.audio_room import Room, missing_tools, start_room
from tests.server.test_headless_e2e import config_file
from tests.speech import needs_espeak, say, silence

pytestmark = [pytest.mark.audio, needs_espeak]

TOKEN = "fault-token"
REPO = Path(__file__).resolve().parents[2]
WAIT_S = 120.0  # safety net for a busy shared CPU; never a timing assertion
STATUS_EVERY_S = 0.05
STATUS_WITHIN_S = 0.1  # the issue: `status` answers within 100 ms throughout
STATUS_SHARE = 0.99  # ... and on this shared 2-core machine (load ~5) 1% may wait for a CPU, but never long:
STATUS_WORST_S = 0.3  # a PortAudio call on the loop would stall it >= 1.5 s (the call bound), or forever
BACK_WITHIN_S = 5.0  # the issue: within 5 s of the return the next question is transcribed and answered aloud
STOP_S = 2.0  # the issue: SIGTERM exits within 2 s
OUTAGE_S = 3.0
LOUD = 2000  # |int16| above this in a recording is reply audio (the room is digitally silent otherwise)
QUESTION = "What time is it now?"
LONGER_QUESTION = QUESTION + " And tell me the date, please."


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    if missing_tools():
        pytest.skip("the audio room needs PulseAudio: apt-get install pulseaudio")
    changes = {
        "pipeline.mode": "hands_free",
        "vad.barge_in_energy_margin_db": 0.0,
        "server.port": 0,
        "server.token": TOKEN,
        "llm.max_tokens": 48,
        # a 3.2 s reply (40 frames of 80 ms): the sound server goes away or the default changes 0.3 s into it, and
        # its rest is long enough to hear on the new default; every reply the tests wait for plays this long
        "tts.max_frames": 40,
    }
    # espeak blocks its caller: speak the questions now, not on the test's loop while it times `status`
    question()
    say(LONGER_QUESTION)
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("fault_models"), changes)


@dataclass
class Daemon:
    """`assistant run` as a subprocess, a control connection subscribed to its events, and a status poller."""

    proc: asyncio.subprocess.Process
    ws: ClientConnection
    log: list[str] = field(default_factory=list)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (arrival time, message)
    status_rtt: list[tuple[float, float]] = field(default_factory=list)  # (seconds to the reply, sent at)
    status_late: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds without a reply)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)  # replies to our other commands, by id
    port: int = 0
    _sent: dict[int, float] = field(default_factory=dict)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._read()

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg["type"] == "reply" and isinstance(msg.get("id"), int) and msg["id"] in self._sent:
                sent = self._sent.pop(msg["id"])
                self.status_rtt.append((time.monotonic() - sent, sent))
            elif msg["type"] == "reply":
                self.replies[msg["id"]] = msg
                self._arrived.set()
            elif msg["type"] != "hello":
                self.events.append((time.monotonic(), msg))
                self._arrived.set()

    async def poll_status(self) -> None:
        n = 0
        while True:
            n += 1
            self._sent[n] = time.monotonic()
            await self.ws.send(json.dumps({"type": "status", "id": n}))
            await asyncio.sleep(STATUS_EVERY_S)
            now = time.monotonic()
            for sent in self._sent.values():  # a reply still missing long after: the loop is frozen
                if now - sent > STATUS_WITHIN_S * 10:
                    self.status_late.append((sent, now - sent))

    async def until(self, name: str, since: float = 0.0, **fields: Any) -> tuple[float, dict[str, Any]]:
        """The first event called `name` (with these fields) that arrived after `since`."""
        deadline = time.monotonic() + WAIT_S
        while True:
            for at, msg in self.events:
                if at >= since and msg["type"] == name and all(msg.get(k) == v for k, v in fields.items()):
                    return at, msg
            self._arrived.clear()
            left = deadline - time.monotonic()
            assert left > 0, (
                f"no {name} {fields} event; saw {[m['type'] for _, m in self.events][-30:]}; log: {self.log[-15:]}"
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._arrived.wait()

    async def until_log(self, pattern: str) -> re.Match[str]:
        """The first line of the daemon's log matching `pattern` (waiting for it)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                self._arrived.clear()
                for line in self.log:
                    if (m := re.search(pattern, line)) is not None:
                        return m
                await self._arrived.wait()

    async def ask(self, text: str) -> dict[str, Any]:
        """The native `ask` command's reply."""
        key = f"ask-{len(self.replies)}"
        await self.ws.send(json.dumps({"type": "ask", "text": text, "id": key}))
        async with asyncio.timeout(WAIT_S):
            while key not in self.replies:
                self._arrived.clear()
                await self._arrived.wait()
        return self.replies[key]

    async def realtime_turn(self, text: str) -> list[dict[str, Any]]:
        """A Realtime session (a headless client) asks `text`; its messages up to response.done."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        seen: list[dict[str, Any]] = []
        async with connect(f"ws://127.0.0.1:{self.port}/v1/realtime", additional_headers=headers) as ws:
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            await ws.send(json.dumps({"type": "response.create"}))
            async with asyncio.timeout(WAIT_S):
                while not seen or seen[-1]["type"] != "response.done":
                    seen.append(json.loads(await ws.recv()))
        return seen

    async def stop(self) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds to exit)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            code = await self.proc.wait()
        took = time.monotonic() - began
        for task in self.tasks:
            task.cancel()
        return code, took


async def start_daemon(
    cfg: Config, tmp: Path, room: Room, follow_default: bool = False, follow_input: bool = False
) -> Daemon:
    path = config_file(cfg, tmp / "config.toml")
    env = {
        **os.environ,
        **room.env,
        "XDG_CONFIG_HOME": str(tmp / "xdg"),
        "HOME": str(tmp / "home"),
        "ASSISTANT_CONFIG": "",
        "PYTHONPATH": str(REPO),
    }
    if follow_default:
        env.pop("PULSE_SINK")  # the daemon plays to whatever the system's default output is
    if follow_input:
        env.pop("PULSE_SOURCE")  # ... and listens to the system's default input
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "assistant", "--config", str(path), "run", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    log: list[str] = []
    async with asyncio.timeout(WAIT_S):
        while (m := re.search(r"control server on ws://127\.0\.0\.1:(\d+)", log[-1] if log else "")) is None:
            line = await proc.stderr.readline()
            assert line, f"the daemon exited: {log}"
            log.append(line.decode())
    ws = await connect(
        f"ws://127.0.0.1:{m.group(1)}/v1/control", additional_headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert json.loads(await ws.recv())["type"] == "hello"
    await ws.send(json.dumps({"type": "subscribe", "id": "sub"}))
    daemon = Daemon(proc, ws, log, port=int(m.group(1)))
    daemon.tasks = [
        asyncio.create_task(daemon.read()),
        asyncio.create_task(daemon.poll_status()),
        asyncio.create_task(collect(proc.stderr, log, daemon._arrived)),
    ]
    return daemon


async def collect(stream: asyncio.StreamReader, into: list[str], arrived: asyncio.Event | None = None) -> None:
    while line := await stream.readline():
        into.append(line.decode())
        if arrived is not None:
            arrived.set()


def question() -> np.ndarray:
    return np.concatenate([silence(0.3), say(QUESTION)]).astype(np.int16)


async def ask_and_hear(
    d: Daemon, room: Room, speaker: str | None = None, mic: str | None = None
) -> tuple[float, float, int]:
    """Speak the question into the room; (transcript.final time, response.done time, loud samples recorded)."""
    recorder = await asyncio.to_thread(room.record, speaker) if speaker else await asyncio.to_thread(room.record)
    since = time.monotonic()
    await asyncio.to_thread(room.play, question(), mic=mic) if mic else await asyncio.to_thread(room.play, question())
    final_at, _ = await d.until("transcript.final", since)
    done_at, _ = await d.until("response.done", since)
    await asyncio.sleep(0.5)  # the end of the reply reaches the recording
    heard = await asyncio.to_thread(recorder.stop)
    return final_at, done_at, int((np.abs(heard) > LOUD).sum())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def torn_down(d: Daemon, room: Room, out: dict[str, Any]) -> None:
    """After a scenario, passed or not: the daemon is gone (killed if it still runs), the room is closed, and what
    the status poller and the daemon's log saw is in `out`."""
    if d.proc.returncode is None:
        d.proc.kill()
        await d.proc.wait()
    await asyncio.to_thread(room.close)
    out["rtt"], out["late"], out["log"] = d.status_rtt, d.status_late, d.log


def served_throughout(out: dict[str, Any]) -> list[float]:
    """Assert the daemon stopped cleanly within STOP_S and answered `status` within STATUS_WITHIN_S throughout
    (STATUS_SHARE of the answers, none later than STATUS_WORST_S); returns the round trips, sorted."""
    rtt = sorted(r for r, _ in out["rtt"])
    slow = [(round(r, 3), round(t - out["rtt"][0][1], 2)) for r, t in out["rtt"] if r >= STATUS_WITHIN_S]
    assert out["code"] == 0, out["log"][-10:]
    assert out["stop_s"] < STOP_S, out["stop_s"]
    assert not out["late"] and len(slow) <= (1 - STATUS_SHARE) * len(rtt) and rtt[-1] < STATUS_WORST_S, slow
    return rtt


@pytest.mark.parametrize("moment", ["sigterm_before", "idle", "mid_reply", "user_speaking", "sigterm_during_outage"])
def test_sound_server_goes_away_and_comes_back(tiny_config: Config, tmp_path: Path, moment: str) -> None:
    """The sound server stops (idle / in the middle of a reply / while the user speaks) and comes back after
    3 s with the same devices: `status` answers within 100 ms throughout, `device` events say the input and the
    output went and came back, within 5 s of the return both are back and the next spoken question is transcribed
    and its reply heard on the speaker (while idle and without devices, an `ask` is answered in text with a
    device event saying so, and a headless Realtime session gets its spoken reply), and SIGTERM (before, during
    the outage, after the return) exits 0 within 2 s."""
    root = tmp_path / "room"

    async def scenario() -> dict[str, Any]:
        room = await asyncio.to_thread(start_room, root)
        d = await start_daemon(tiny_config, tmp_path, room)
        out: dict[str, Any] = {}
        try:
            await asyncio.sleep(1.0)  # listening
            if moment == "sigterm_before":
                out["code"], out["stop_s"] = await d.stop()
                return out
            if moment == "mid_reply":
                await asyncio.to_thread(room.play, question())
                await d.until("state", new="assistant_speaking")
                await asyncio.sleep(0.3)
            elif moment == "user_speaking":
                longer = np.concatenate([silence(0.3), say(LONGER_QUESTION)])
                await asyncio.to_thread(room.play, longer)
                await d.until("vad.speech_started")
            gone = time.monotonic()
            await asyncio.to_thread(room.close)  # every device goes away
            await d.until("device", gone, kind="input", ok=False)
            await d.until("device", gone, kind="output", ok=False)
            if moment == "mid_reply":
                _, done = await d.until("response.done", gone)
                out["interrupted"] = done["interrupted"]
            if moment == "sigterm_during_outage":
                out["code"], out["stop_s"] = await d.stop()
                return out
            if moment == "idle":  # clients are still served: a text answer, and a headless Realtime session
                asked = time.monotonic()
                out["ask_ok"] = (await d.ask("Hello there"))["type"] == "reply"
                await d.until("device", asked, kind="output", ok=False)  # "this reply is text only"
                realtime = await d.realtime_turn("Hello there")
                out["realtime"] = realtime[-1]["response"]["status"]
                out["realtime_audio"] = sum(m["type"] == "response.output_audio.delta" for m in realtime)
            await asyncio.sleep(max(0.0, gone + OUTAGE_S - time.monotonic()))
            # from the moment the server starts: the daemon may reopen a device before start_room has returned
            back = time.monotonic()
            room = await asyncio.to_thread(start_room, root)  # the same devices, on the same socket
            mic_at, _ = await d.until("device", back, kind="input", ok=True)
            out_at, _ = await d.until("device", back, kind="output", ok=True)
            out["back_s"] = max(mic_at, out_at) - back
            final_at, _, loud = await ask_and_hear(d, room)
            out["final_after_back_s"], out["loud"] = final_at - back, loud
            out["code"], out["stop_s"] = await d.stop()
            return out
        finally:
            await torn_down(d, room, out)

    out = run(scenario())
    rtt = sorted(r for r, _ in out["rtt"])
    print(
        f"{moment}: status n={len(rtt)} median {1000 * rtt[len(rtt) // 2]:.1f} ms max {1000 * rtt[-1]:.1f} ms; "
        + ", ".join(f"{k}={v}" for k, v in out.items() if k not in ("rtt", "late", "log"))
    )
    assert len(served_throughout(out)) >= 10  # the poller really ran throughout
    if moment == "mid_reply":
        assert out["interrupted"] is True
    if moment == "idle":
        assert out["ask_ok"] and out["realtime"] == "completed" and out["realtime_audio"] >= 1, out
    if not moment.startswith("sigterm"):
        assert out["back_s"] < BACK_WITHIN_S, out["back_s"]
        assert out["loud"] > 24_000 // 4, out["loud"]  # at least 0.25 s of the reply reached the speaker


def test_default_output_changes_mid_reply(tiny_config: Config, tmp_path: Path) -> None:
    """Headphones are plugged in and become the default output in the middle of a reply: the daemon keeps
    serving (status within 100 ms, the reply completes) and the next reply plays on the new default."""
    headphones = "room_headphones"

    async def scenario() -> dict[str, Any]:
        room = await asyncio.to_thread(start_room, tmp_path / "room")
        await asyncio.to_thread(room.add_speaker, headphones)
        d = await start_daemon(tiny_config, tmp_path, room, follow_default=True)
        out: dict[str, Any] = {}
        try:
            await asyncio.sleep(1.0)
            since = time.monotonic()
            await asyncio.to_thread(room.play, question())
            await d.until("state", since, new="assistant_speaking")
            await asyncio.sleep(0.3)
            await asyncio.to_thread(room.pactl, "set-default-sink", headphones)
            await d.until("response.done", since)
            await asyncio.sleep(0.5)
            _, _, out["loud_headphones"] = await ask_and_hear(d, room, headphones)
            out["code"], out["stop_s"] = await d.stop()
            return out
        finally:
            await torn_down(d, room, out)

    out = run(scenario())
    print(
        f"default change: status max {1000 * max(r for r, _ in out['rtt']):.1f} ms, "
        f"{out['loud_headphones']} loud samples on headphones"
    )
    served_throughout(out)
    assert out["loud_headphones"] > 24_000 // 4


def test_default_devices_change_mid_reply_and_portaudio_restarts(tiny_config: Config, tmp_path: Path) -> None:
    """With audio.follow_default = "reinit" (the path macOS needs, forced here on PulseAudio), headphones and a
    headset become the default output and input in the middle of a reply: the daemon closes both streams,
    restarts PortAudio and reopens them (logged with the gap), the rest of the reply plays on the headphones,
    `status` keeps answering, and the next question spoken into the headset is transcribed and its reply
    heard on the headphones."""
    headphones, headset = "room_headphones", "room_headset"
    cfg = replace(tiny_config, audio=replace(tiny_config.audio, follow_default="reinit"))

    async def scenario() -> dict[str, Any]:
        room = await asyncio.to_thread(start_room, tmp_path / "room")
        await asyncio.to_thread(room.add_speaker, headphones)
        await asyncio.to_thread(room.add_microphone, headset)
        d = await start_daemon(cfg, tmp_path, room, follow_default=True, follow_input=True)
        out: dict[str, Any] = {}
        try:
            await asyncio.sleep(1.0)
            recorder = await asyncio.to_thread(room.record, headphones)
            since = time.monotonic()
            await asyncio.to_thread(room.play, question())
            await d.until("state", since, new="assistant_speaking")
            await asyncio.sleep(0.3)
            await asyncio.to_thread(room.pactl, "set-default-sink", headphones)
            await asyncio.to_thread(room.pactl, "set-default-source", f"{headset}.monitor")
            moved = await d.until_log(r"moved to the new default devices.*mic_gap_ms=(\d+) speaker_gap_ms=(\d+)")
            out["gap_ms"] = (int(moved.group(1)), int(moved.group(2)))
            await d.until("response.done", since)
            await asyncio.sleep(0.5)
            out["loud_first_reply"] = int((np.abs(await asyncio.to_thread(recorder.stop)) > LOUD).sum())
            _, _, out["loud_headphones"] = await ask_and_hear(d, room, headphones, mic=headset)
            out["code"], out["stop_s"] = await d.stop()
            return out
        finally:
            await torn_down(d, room, out)

    out = run(scenario())
    print(
        f"default devices change (reinit): switch gap (mic, speaker) {out['gap_ms']} ms, "
        f"status max {1000 * max(r for r, _ in out['rtt']):.1f} ms, "
        f"first reply {out['loud_first_reply']} / next reply {out['loud_headphones']} loud samples on headphones"
    )
    served_throughout(out)
    assert not [line for line in out["log"] if "could not restart" in line]  # PortAudio really restarted
    assert out["loud_first_reply"] > 0  # the reply in flight went on on the new default
    assert out["loud_headphones"] > 24_000 // 4  # the next reply, to a question heard through the headset
