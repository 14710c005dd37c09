"""SIGTERM and SIGINT stop the daemon cleanly, even with an engine step that never returns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pipeline.daemon_double", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize(("sig", "args"), [(signal.SIGTERM, ()), (signal.SIGINT, ()), (signal.SIGTERM, ("--stuck",))])
def test_signal_stops_daemon(sig: signal.Signals, args: tuple[str, ...]) -> None:
    """The daemon exits 0 after SIGTERM/SIGINT, logging `stopped`, with no traceback."""
    proc = start(*args)
    time.sleep(0.2)  # let it listen (and, with --stuck, wedge the compute thread)
    began = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - began
    print(f"{sig.name} {args}: exited in {took:.2f} s")
    assert proc.returncode == 0, err
    assert "msg=stopped" in err or "stopped" in err
    assert "Traceback" not in err
