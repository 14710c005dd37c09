"""`assistant devices` and `assistant run` with no sound system at all, and with the virtual room."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.audio_room import Room

# Only on Linux without sound cards does an unreachable PulseAudio leave PortAudio with no device at all.
no_sound_cards = pytest.mark.skipif(
    sys.platform != "linux" or any(Path("/dev/snd").glob("pcmC*")),
    reason="needs Linux with no sound card, where hiding PulseAudio leaves no device",
)


def assistant(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    try:
        return subprocess.run(
            [sys.executable, "-m", "assistant", *args], capture_output=True, text=True, env=env, timeout=60
        )
    except subprocess.TimeoutExpired as e:  # say what it was doing, and what else kept the CPU busy
        busy = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True)
        tail = e.stderr.decode(errors="replace")[-1500:] if isinstance(e.stderr, bytes) else str(e.stderr)[-1500:]
        top = "\n".join(busy.stdout.splitlines()[:8])
        raise AssertionError(f"assistant {args[0]} did not end in 60 s; its stderr:\n{tail}\nbusiest:\n{top}") from None


def quiet_env(root: Path) -> dict[str, str]:
    """No user config, offline, and PULSE_SERVER pointing at a socket where no PulseAudio runs."""
    return {
        "XDG_CONFIG_HOME": str(root / "xdg"),
        "HOME": str(root / "home"),
        "HF_HOME": str(root / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PULSE_SERVER": f"unix:{root / 'no-pulse'}",
        "ASSISTANT_CONFIG": "",
    }


def local_models(root: Path) -> list[str]:
    """--set options pointing every model at an existing local folder, so `run` gets as far as the devices."""
    folder = root / "model"
    folder.mkdir(exist_ok=True)
    return [f"--set={key}='{folder}'" for key in ("stt.model", "llm.model", "tts.model", "endofturn.model")]


@no_sound_cards
def test_devices_without_sound_system_is_one_line(tmp_path: Path) -> None:
    """`assistant devices` with no PulseAudio running exits 2 with one line naming the fix, no traceback."""
    out = assistant(["devices"], quiet_env(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "assistant: error: no audio devices found; connect a microphone and speaker (or start the sound server)"
    ]


@no_sound_cards
def test_run_without_sound_system_is_one_line(tmp_path: Path) -> None:
    """`assistant run` (models present, server off) with no PulseAudio running exits 2 with one line naming the fix.

    (With the server on it runs headless instead: tests/test_cli.py.)
    """
    out = assistant(["run", *local_models(tmp_path), "--set=server.enabled=false"], quiet_env(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "assistant: error: no audio input device found; connect a microphone (or start the sound server), then "
        "check `assistant devices`"
    ]


@pytest.mark.audio
def test_devices_in_the_room(room: Room, tmp_path: Path) -> None:
    """In the virtual room `assistant devices` lists PulseAudio's default device, marks it, and says what is used."""
    out = assistant(["devices"], {**quiet_env(tmp_path), **room.env})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("<>") and line.endswith(" default") for line in lines), out.stdout
    assert "audio.input_device = '' uses " in out.stdout and "audio.output_device = '' uses " in out.stdout


@pytest.mark.audio
def test_run_with_unknown_device_lists_choices(room: Room, tmp_path: Path) -> None:
    """`assistant run` with an input device name matching nothing says so in one line, listing the devices."""
    out = assistant(
        ["run", *local_models(tmp_path), "--set=audio.input_device='usb mic'"], {**quiet_env(tmp_path), **room.env}
    )
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("assistant: error: audio.input_device = 'usb mic' matches no input device; choose one of:")
    assert "default" in line


@pytest.mark.audio
def test_doctor_checks_the_microphone_signal(room: Room, tmp_path: Path) -> None:
    """`assistant doctor` opens the microphone: a silent (muted) one is a problem, one that hears sound is not."""
    env = {**quiet_env(tmp_path), **room.env}
    out = assistant(["doctor"], env)
    assert "FAIL  microphone signal: the microphone delivers only digital silence; check that it is not muted" in (
        out.stdout
    )
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(3 * 16_000) / 16_000)).astype(np.int16)
    player = room.play(tone)
    try:
        out = assistant(["doctor"], env)
    finally:
        player.wait()
    assert "ok    microphone signal" in out.stdout
    assert out.returncode == 1  # the models are still missing


@pytest.mark.audio
def test_say_plays_what_it_would_write(room: Room, tmp_path: Path) -> None:
    """`assistant say` with a tiny model plays through the default speaker exactly the audio `--out` writes."""
    import wave

    from tests.test_audio_room import align
    from tests.tiny_engines import tiny_config

    cfg = tiny_config(tmp_path / "models", {"tts.max_frames": 16})
    sets = [
        f"--set=tts.model='{cfg.tts.model}'",
        "--set=tts.voice='vivian'",
        "--set=tts.temperature=0.0",
        "--set=tts.subtalker_temperature=0.0",
        "--set=tts.max_frames=16",
    ]
    env = {**quiet_env(tmp_path), **room.env}
    wav = tmp_path / "said.wav"
    out = assistant(["say", "hello there", *sets, "--out", str(wav)], env)
    assert out.returncode == 0, out.stderr
    with wave.open(str(wav)) as w:
        written = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    recorder = room.record()
    out = assistant(["say", "hello there", *sets], env)
    heard = recorder.stop()
    assert out.returncode == 0, out.stderr
    assert np.abs(written).max() > 100  # the tiny model says something audible
    # This CPU decodes slower than real time, so playback underruns between chunks and plays digital silence
    # there (counted, by design); without those gaps the speaker played exactly the written audio.
    said, played = without_silent_runs(written), without_silent_runs(heard)
    _, correlation = align(played, said)
    assert correlation > 0.99
    assert abs(len(played) - len(said)) < 480  # all of it was played, nothing more (20 ms slack)


def without_silent_runs(x: np.ndarray, run: int = 48) -> np.ndarray:
    """`x` without its runs of at least `run` exact zeros (2 ms at 24 kHz): underrun gaps and leading silence."""
    zero = np.concatenate([[False], x == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    keep = np.ones(len(x), bool)
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if end - start >= run:
            keep[start:end] = False
    return x[keep]
