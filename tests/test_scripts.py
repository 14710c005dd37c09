"""scripts/_venv.sh, which scripts/run and scripts/test source, on a machine without a Python it can use."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_venv_script_without_python_311_says_so_in_one_line(tmp_path: Path) -> None:
    """With no Python 3.11+ on PATH, making the venv prints the install hint alone and fails (it went on to run an
    empty command: ": command not found")."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("dirname", "cksum", "cat"):  # what the script needs besides bash, and no python at all
        which = shutil.which(tool)
        assert which is not None, f"{tool} is missing; apt-get install coreutils"
        (bindir / tool).symlink_to(which)
    bash = shutil.which("bash")
    assert bash is not None
    script = f'source {ROOT / "scripts" / "_venv.sh"}; ensure_venv ""; echo made'
    env = {"PATH": str(bindir), "ASSISTANT_VENV": str(tmp_path / "venv"), "HOME": str(tmp_path)}
    out = subprocess.run([bash, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "assistant needs Python 3.11 or newer; install it (macOS: brew install python@3.12)"
    ], out.stderr
    assert "made" not in out.stdout and not os.path.exists(tmp_path / "venv")
