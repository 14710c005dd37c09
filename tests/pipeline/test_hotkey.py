"""The push-to-talk hotkey: pure combination tracking, and real key events under Xvfb pressed by xdotool."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant.errors import ConfigError
from assistant.events import FinalTranscript, PushToTalk
from assistant.hotkey import Combo, Hotkey

REPO = Path(__file__).resolve().parents[2]


def test_combo_tracks_all_keys_down() -> None:
    """A combination is active only while all its keys are down; each flip is reported once."""
    c = Combo(["ctrl", "h"])
    assert not c.press(["ctrl"])
    assert c.press(["h", "H"])
    assert not c.press(["h"])
    assert c.release(["ctrl"])
    assert not c.release(["h"])
    assert not c.active


def test_missing_display_is_one_line_and_not_fatal() -> None:
    """Without a reachable keyboard, start() returns one line that says how to enable the hotkey."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(REPO)
    code = "from assistant.hotkey import Hotkey; print(Hotkey('<alt_r>', 'hold', print, print).start())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("push-to-talk hotkey is off")
    assert ("X11" in lines[0]) or ("pip install" in lines[0])


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    """A private X server for key events (X11 is Linux's; elsewhere skipped); a missing tool fails with the fix."""
    if sys.platform != "linux":
        pytest.skip("the X11 hotkey path is tested on Linux (a private Xvfb)")
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed; apt-get install -y xvfb xdotool", pytrace=False)
    if importlib.util.find_spec("pynput") is None:
        pytest.fail("pynput is not installed; pip install -e '.[dev]'", pytrace=False)
    for n in range(90, 120):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    display = f":{n}"
    proc = subprocess.Popen(["Xvfb", display, "-nolisten", "tcp"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("Xvfb did not start; run `Xvfb :99` by hand to see why", pytrace=False)
        time.sleep(0.05)
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = display
    try:
        yield display
    finally:
        subprocess.run(["xdotool", "key", "shift"], timeout=10)  # stopped pynput listeners end at the next event
        time.sleep(0.2)
        if old is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = old
        proc.terminate()
        proc.wait(10)


def xdotool(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=10)


def test_hold_mode_under_xvfb(xvfb: str) -> None:
    """Holding right Alt starts talking and releasing it stops, from real X key events."""
    got: queue.Queue[str] = queue.Queue()
    hk = Hotkey("<alt_r>", "hold", lambda: got.put("start"), lambda: got.put("stop"))
    assert hk.start() is None
    try:
        xdotool("keydown", "Alt_R")
        assert got.get(timeout=10) == "start"
        xdotool("keyup", "Alt_R")
        assert got.get(timeout=10) == "stop"
    finally:
        hk.stop()


def test_toggle_mode_combination_under_xvfb(xvfb: str) -> None:
    """In toggle mode a ctrl+h press starts a turn and the next press ends it."""
    got: queue.Queue[str] = queue.Queue()
    hk = Hotkey("<ctrl>+h", "toggle", lambda: got.put("start"), lambda: got.put("stop"))
    assert hk.start() is None
    try:
        xdotool("key", "ctrl+h")
        assert got.get(timeout=10) == "start"
        xdotool("key", "h")  # h alone is not the combination
        xdotool("key", "ctrl+h")
        assert got.get(timeout=10) == "stop"
        assert got.empty()
    finally:
        hk.stop()


def test_bad_hotkey_is_a_config_error(xvfb: str) -> None:
    """An unparsable hotkey names the key and the syntax."""
    with pytest.raises(ConfigError, match=r"pipeline\.hotkey"):
        Hotkey("<nokey>", "hold", print, print).start()


def test_hotkey_drives_the_pipeline_under_xvfb(xvfb: str) -> None:
    """The daemon's hotkey service turns X key events into ptt_start/ptt_stop of the pipeline."""
    from assistant.daemon import hotkey_service
    from tests.pipeline.harness import Harness, eventually

    async def main() -> None:
        async with Harness({"pipeline.mode": "push_to_talk"}) as h, hotkey_service(h.control):
            await asyncio.to_thread(xdotool, "keydown", "Alt_R")
            await h.next_event(PushToTalk, lambda e: e.pressed)
            h.speak("hello")
            await asyncio.to_thread(xdotool, "keyup", "Alt_R")
            await h.next_event(PushToTalk, lambda e: not e.pressed)
            assert (await h.next_event(FinalTranscript)).text == "hello"
            await eventually(lambda: not h.p.core.ptt)

    asyncio.run(main())


def test_runtime_push_to_talk_needs_a_listening_hotkey(xvfb: str) -> None:
    """config.set pipeline.mode = "push_to_talk" makes the check `assistant run` makes at start: refused, naming the
    fix, while no hotkey listens (a deaf daemon), accepted while the daemon's hotkey service listens."""
    from assistant.daemon import hotkey_service
    from tests.pipeline.harness import Harness

    async def main() -> tuple[str, str, str]:
        async with Harness({"pipeline.mode": "hands_free"}) as h:
            with pytest.raises(ConfigError) as refused:
                h.control.config_set({"pipeline.mode": "push_to_talk"})
            async with hotkey_service(h.control):
                accepted = h.control.config_set({"pipeline.mode": "push_to_talk"})["pipeline"]["mode"]
            h.control.config_set({"pipeline.mode": "hands_free"})
            with pytest.raises(ConfigError) as after:
                h.control.config_set({"pipeline.mode": "push_to_talk"})
            return str(refused.value), accepted, str(after.value)

    refused, accepted, after = asyncio.run(main())
    assert refused.startswith('config.set: pipeline.mode = "push_to_talk" needs the hotkey, but no hotkey listens')
    assert refused.endswith('use "both", or set the mode in config.toml and restart')
    assert accepted == "push_to_talk" and after == refused
