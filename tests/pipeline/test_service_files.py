"""The launchd plist and the systemd user unit are well formed and start `assistant run`."""

from __future__ import annotations

import configparser
import plistlib
from pathlib import Path

from assistant import cli
from assistant.errors import ConfigError

SERVICE = Path(__file__).resolve().parents[2] / "service"


def test_launchd_plist() -> None:
    """The plist parses, runs `assistant run` at load and restarts only after a crash."""
    plist = plistlib.loads((SERVICE / "assistant.plist").read_bytes())
    assert plist["ProgramArguments"][0].endswith("/assistant") and plist["ProgramArguments"][1] == "run"
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}


def test_systemd_user_unit() -> None:
    """The unit runs `assistant run`, stops with SIGTERM and restarts on failure."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((SERVICE / "assistant.service").read_text())
    assert " run" in unit["Service"]["ExecStart"] and unit["Service"]["KillSignal"] == "SIGTERM"
    assert unit["Service"]["Restart"] == "on-failure" and unit["Install"]["WantedBy"] == "default.target"


def test_systemd_unit_does_not_restart_after_a_config_error(tmp_path: Path) -> None:
    """`assistant run` with a config error exits with a status of its own (78, EX_CONFIG), and the unit names that
    status in RestartPreventExitStatus, so a typo is not retried every RestartSec forever."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((SERVICE / "assistant.service").read_text())
    assert unit["Service"]["RestartPreventExitStatus"].split() == ["78"]
    bad = tmp_path / "config.toml"
    bad.write_text("[vad]\nhang_ms = 3\n")
    assert ConfigError.exit_code == 78 and cli.main(["run", "--config", str(bad)]) == 78
