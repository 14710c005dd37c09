"""`assistant run` in a real terminal (tmux) in the virtual room, at 60 and 120 columns: after two spoken turns
with log lines in between, the screen holds whole log lines, the "you:" and "assistant:" lines of both turns,
and one status line at the bottom that fits the width (no corrupted or stale copies)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant.config import Config, to_dict
from tests import tiny_engines
from tests.audio_room import Room
from tests.speech import needs_espeak, say

pytestmark = [pytest.mark.audio, needs_espeak]
REPO = Path(__file__).resolve().parents[1]
WAIT_S = 180.0  # safety net for a busy shared CPU; never a timing assertion
STATUS = "● "


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    changes = {"pipeline.mode": "hands_free", "server.enabled": False, "tts.max_frames": 12}
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("tmux_models"), changes)


def config_file(cfg: Config, path: Path) -> Path:
    """A config.toml holding the keys of `cfg` that differ from the defaults."""
    ours, default = to_dict(cfg), to_dict(Config())
    lines = []
    for section, values in ours.items():
        changed = {k: v for k, v in values.items() if v != default[section][k]}
        if changed:
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in changed.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Tmux:
    """One tmux server on a private socket, one window of a fixed size running a command."""

    def __init__(self, root: Path, columns: int, command: list[str], env: dict[str, str]) -> None:
        self.base = ["tmux", "-S", str(root / "tmux.sock")]
        script = root / "run.sh"
        exports = "".join(f"export {k}={json.dumps(v)}\n" for k, v in env.items())
        # keep the window after the daemon exits so its last screen can still be read
        script.write_text(f"{exports}exec {' '.join(json.dumps(c) for c in command)}\n")
        subprocess.run(
            [*self.base, "new-session", "-d", "-x", str(columns), "-y", "40", "bash", str(script)], check=True
        )
        subprocess.run([*self.base, "set-option", "-g", "remain-on-exit", "on"], check=True)
        subprocess.run([*self.base, "set-option", "-g", "history-limit", "5000"], check=True)

    def rows(self) -> list[str]:
        """Every row of the pane, scrollback included, as the terminal shows them."""
        out = subprocess.run([*self.base, "capture-pane", "-p", "-S", "-", "-J"], capture_output=True, text=True)
        return out.stdout.rstrip("\n").split("\n")

    def visible(self) -> list[str]:
        out = subprocess.run([*self.base, "capture-pane", "-p"], capture_output=True, text=True)
        return out.stdout.split("\n")

    def wait_for(self, pred: object, what: str) -> list[str]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            rows = self.rows()
            if pred(rows):  # type: ignore[operator]
                return rows
            time.sleep(0.2)
        raise AssertionError(f"never saw {what}; screen:\n" + "\n".join(self.rows()))

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def count(rows: list[str], prefix: str) -> int:
    return sum(r.startswith(prefix) for r in rows)


@pytest.mark.parametrize("columns", [60, 120])
def test_screen_after_two_turns(room_env: Room, tiny_config: Config, tmp_path: Path, columns: int) -> None:
    """Two spoken turns with log lines between: transcript and reply lines visible, one status line that
    fits the width at the bottom, every log line whole."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: apt-get install tmux", pytrace=False)
    cfg = config_file(tiny_config, tmp_path / "config.toml")
    env = {k: v for k, v in os.environ.items() if k.startswith(("PULSE", "XDG_", "HOME", "PATH", "HF_"))}
    env.update(room_env.env, PYTHONPATH=str(REPO), TERM="xterm-256color", ASSISTANT_CONFIG="")
    tmux = Tmux(tmp_path, columns, [sys.executable, "-m", "assistant", "--config", str(cfg), "run"], env)
    try:
        tmux.wait_for(lambda rows: any(r.startswith(f"{STATUS}listening") for r in rows), "the idle status line")
        for turn, question in enumerate(("What is the weather like today?", "Tell me a short story please."), 1):
            room_env.play(say(question)).wait(timeout=WAIT_S)
            tmux.wait_for(lambda rows, n=turn: count(rows, "assistant: ") >= n, f"reply {turn}")
        tmux.wait_for(lambda rows: rows[-1].startswith(f"{STATUS}listening"), "the idle line after turn 2")
        rows = tmux.rows()
    finally:
        tmux.close()
    print("\n".join(rows))
    assert count(rows, "you: ") >= 2 and count(rows, "assistant: ") >= 2
    first_you = next(i for i, r in enumerate(rows) if r.startswith("you: "))
    last_reply = max(i for i, r in enumerate(rows) if r.startswith("assistant: "))
    assert any(" info " in r for r in rows[first_you:last_reply])  # log lines between the turns' lines
    assert count(rows, "  turn ") >= 2  # a compact latency line per turn
    assert any(" info " in r and "loaded TTS model" in r for r in rows)  # the loading lines with their times
    status_rows = [i for i, r in enumerate(rows) if STATUS in r]
    assert status_rows == [len(rows) - 1], "status text elsewhere than the last row: corrupted or stale copies"
    assert len(rows[-1]) < columns
