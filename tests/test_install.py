"""A wheel of this repository, installed into a fresh venv with a read-only install folder, lists voices,
speaks to a file and transcribes it with tiny models: every runtime file is package data, nothing is written
next to the package."""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import soundfile as sf

from tests.tiny_engines import tiny_stt, tiny_tts

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # safety net for a busy shared CPU; never a timing assertion


def build_wheel(out: Path) -> Path:
    """The wheel pip builds from the repository (offline when this environment already has the build backend)."""
    from importlib.metadata import version

    offline = importlib.util.find_spec("wheel") is not None or int(version("setuptools").split(".")[0]) >= 71
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)]
    subprocess.run([*cmd, *(["--no-build-isolation"] if offline else [])], check=True, timeout=TIMEOUT_S)
    (wheel,) = out.glob("assistant-*.whl")
    return wheel


def fresh_venv(root: Path, wheel: Path) -> tuple[Path, Path]:
    """(bin folder, installed package folder) of a new venv holding only the wheel; its dependencies come from
    this environment through a .pth path line (no network, and no editable install leaks in)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=TIMEOUT_S)
    py = root / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=TIMEOUT_S)
    purelib = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    deps = [p for p in {*site.getsitepackages(), sysconfig.get_path("purelib")} if Path(p).is_dir()]
    (purelib / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    return root / "bin", purelib / "assistant"


def read_only(folder: Path, cmd: list[str]) -> list[str]:
    """`cmd` run with `folder` read-only: file modes for a normal user; a read-only bind mount for root, whom
    modes do not stop."""
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        return cmd
    if shutil.which("unshare") is None:
        pytest.fail("running as root, the read-only install needs unshare (util-linux): apt-get install util-linux")
    mount = f'mount --bind "{folder}" "{folder}" && mount -o remount,ro,bind "{folder}" "{folder}" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", mount, "sh", *cmd]


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_wheel_installs_and_speaks_from_a_read_only_folder(tmp_path: Path) -> None:
    """`assistant voices`, `say --out` and `transcribe` work from an installed wheel whose folder is read-only."""
    wheel = build_wheel(tmp_path / "dist")
    bindir, package = fresh_venv(tmp_path / "venv", wheel)
    stt, tts = tiny_stt(tmp_path / "models" / "stt"), tiny_tts(tmp_path / "models" / "tts")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[stt]\nmodel = "{stt}"\n\n[tts]\nmodel = "{tts}"\nvoice = "vivian"\nmax_frames = 12\n'
        "temperature = 0.0\nsubtalker_temperature = 0.0\n\n[server]\nenabled = false\n"
    )
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "XDG_"))}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", HF_HOME=str(home / "hf"), ASSISTANT_CONFIG=str(config))
    before = snapshot(package)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = read_only(package, [str(bindir / "assistant"), *args])
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=TIMEOUT_S)
        assert done.returncode == 0, done.stderr
        return done

    where = subprocess.run(
        [str(bindir / "python"), "-c", "import assistant; print(assistant.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert Path(where.stdout.strip()).parent == package  # the wheel's copy, not the source tree

    voices = run("voices")
    assert "* vivian" in voices.stdout and f"profiles in {package / 'voices'}" in voices.stdout

    out = tmp_path / "hello.flac"
    said = run("say", "Hello there. How are you today?", "--out", str(out))
    info = sf.info(str(out))
    assert info.format == "FLAC" and info.samplerate == 24000 and info.frames > 0
    assert "said 2 sentence(s)" in said.stderr and "RTF" in said.stderr and "peak memory" in said.stderr

    heard = run("transcribe", str(out))
    assert "transcribed" in heard.stderr and "RTF" in heard.stderr
    assert snapshot(package) == before  # nothing was written into the install


def test_wheel_carries_the_apache_license_text(tmp_path: Path) -> None:
    """The wheel built from the repository ships the LICENSE file with the Apache License 2.0 text it declares."""
    import zipfile

    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n]
        text = z.read(name).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert text == (REPO / "LICENSE").read_text()
