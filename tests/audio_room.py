"""A virtual room for real-audio tests: a private PulseAudio server with a virtual microphone and speaker.

The room is what the `room` fixture in conftest.py yields (and `room_env` points this process at it); end-to-end
tests of the daemon use it the same way:

    def test_something(room_env: Room) -> None:      # os.environ now points PortAudio at the room
        recorder = room_env.record()                 # start recording the virtual speaker
        room_env.play(speech_int16_16k).wait()       # "say" something into the virtual microphone
        ...  run Capture / Playback / the daemon (subprocesses: env={**os.environ, **room.env})
        heard = recorder.stop()                      # int16 mono at 24 kHz, what the speaker played

How it is wired (found to work with PortAudio's ALSA backend and its "default"/"pulse" devices on Debian):
- `pulseaudio --daemonize=no -n` with only the native protocol (anonymous auth) on a socket in a temporary
  folder, its HOME and runtime folder there too, so nothing touches a user's sound server. It dies with this
  process (PR_SET_PDEATHSIG) and is stopped by `close()`.
- Two null sinks: `room_mic` (16 kHz mono) that `paplay` feeds and whose monitor is the microphone
  (`PULSE_SOURCE=room_mic.monitor`), and `room_speaker` (24 kHz mono) that PortAudio plays to
  (`PULSE_SINK=room_speaker`) and whose monitor `parec` records.
- A null sink renders in 2 s blocks unless a client asks for less; a `parec --latency-msec=10` on each monitor
  keeps both at 10 ms, so the microphone's first block arrives in ~0.3 s instead of ~1.8 s.
- Clients find the server through `PULSE_SERVER=unix:<socket>`; PortAudio's "default" ALSA device then is
  PulseAudio (the ALSA "pulse" plugin), which is what `audio.input_device = ""` opens.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIC, SPEAKER = "room_mic", "room_speaker"
MIC_RATE, SPEAKER_RATE = 16_000, 24_000
TOOLS = ("pulseaudio", "pactl", "paplay", "parec")


def missing_tools() -> list[str]:
    """The PulseAudio programs the room needs that are not installed."""
    return [t for t in TOOLS if shutil.which(t) is None]


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the test process dies, so no server outlives it."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


@dataclass
class Recorder:
    """`parec` recording the virtual speaker to a raw file; stop() returns int16 mono samples at 24 kHz."""

    proc: subprocess.Popen[bytes]
    path: Path

    def wait_started(self, timeout: float = 5.0) -> None:
        """Wait until parec has written its first bytes (the recording is running)."""
        deadline = time.monotonic() + timeout
        while self.path.stat().st_size == 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("parec did not start recording the virtual speaker")
            time.sleep(0.01)

    def stop(self) -> np.ndarray:
        self.proc.terminate()
        self.proc.wait(5)
        data = self.path.read_bytes()
        return np.frombuffer(data[: len(data) // 2 * 2], dtype=np.int16).copy()


@dataclass
class Room:
    """A running private PulseAudio server with a virtual microphone and speaker (see the module docstring)."""

    root: Path
    server: subprocess.Popen[bytes]
    anchors: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.root / "run" / "native"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client (this process or a subprocess) to use the room as its microphone and speaker."""
        return {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_SOURCE": f"{MIC}.monitor",
            "PULSE_SINK": SPEAKER,
            "PULSE_RUNTIME_PATH": str(self.root / "run"),
        }

    def _run(self, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(args),
            env={**os.environ, **self.env},
            preexec_fn=_die_with_parent,
            **kw,  # type: ignore[call-overload]
        )

    def pactl(self, *args: str) -> str:
        out = subprocess.run(["pactl", *args], env={**os.environ, **self.env}, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def play(self, audio: np.ndarray, rate: int = MIC_RATE, mic: str = MIC) -> subprocess.Popen[bytes]:
        """Start `paplay` of int16 mono `audio` into the virtual microphone (or another one added with
        add_microphone); returns the process (wait() on it)."""
        path = self.root / f"say-{time.monotonic_ns()}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(audio.astype(np.int16).tobytes())
        # 2 s of buffer: with less, paplay underruns on a busy machine and the sink inserts silence (seen at 100 ms)
        return self._run("paplay", f"--device={mic}", "--latency-msec=2000", str(path))

    def record(self, speaker: str = SPEAKER) -> Recorder:
        """Start recording the virtual speaker (or another one added with add_speaker) as int16 mono 24 kHz."""
        path = self.root / f"heard-{time.monotonic_ns()}.raw"
        with path.open("wb") as out:
            proc = self._run(
                "parec",
                f"--device={speaker}.monitor",
                "--format=s16le",
                f"--rate={SPEAKER_RATE}",
                "--channels=1",
                "--latency-msec=10",
                "--raw",
                stdout=out,
            )
        rec = Recorder(proc, path)
        rec.wait_started()
        return rec

    def add_speaker(self, name: str) -> None:
        """A second virtual speaker (24 kHz mono null sink), e.g. headphones being plugged in; kept at 10 ms."""
        self.pactl("load-module", "module-null-sink", f"sink_name={name}", f"rate={SPEAKER_RATE}", "channels=1")
        self.anchors.append(
            self._run("parec", f"--device={name}.monitor", "--latency-msec=10", "--raw", stdout=subprocess.DEVNULL)
        )

    def add_microphone(self, name: str) -> None:
        """A second virtual microphone (its source is `<name>.monitor`, 16 kHz mono), e.g. a headset's; kept at
        10 ms like the first."""
        self.pactl("load-module", "module-null-sink", f"sink_name={name}", f"rate={MIC_RATE}", "channels=1")
        self.anchors.append(
            self._run("parec", f"--device={name}.monitor", "--latency-msec=10", "--raw", stdout=subprocess.DEVNULL)
        )

    def stop_server(self) -> None:
        """Stop the sound server (as if every device were unplugged); the room is unusable afterwards."""
        for p in [*self.anchors, self.server]:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in [*self.anchors, self.server]:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def close(self) -> None:
        self.stop_server()
        shutil.rmtree(self.root, ignore_errors=True)


def start_room(root: Path) -> Room:
    """Start a private PulseAudio server in `root` with the virtual microphone and speaker; waits until ready."""
    (root / "run").mkdir(parents=True)
    (root / "home").mkdir()
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "PULSE_RUNTIME_PATH": str(root / "run"),
        "XDG_RUNTIME_DIR": str(root / "run"),
        "XDG_CONFIG_HOME": str(root / "home" / ".config"),
    }
    env.pop("PULSE_SERVER", None)
    log = (root / "pulseaudio.log").open("wb")
    server = subprocess.Popen(
        [
            "pulseaudio",
            "--daemonize=no",
            "-n",  # no default.pa: nothing but what we load
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--use-pid-file=no",
            "--log-target=stderr",
            f"--load=module-native-protocol-unix auth-anonymous=1 socket={root / 'run' / 'native'}",
        ],
        env=env,
        stdout=log,
        stderr=log,
        preexec_fn=_die_with_parent,
    )
    room = Room(root, server)
    try:
        deadline = time.monotonic() + 10
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: {(root / 'pulseaudio.log').read_text()[-500:]}")
            if (
                room.socket.exists()
                and subprocess.run(["pactl", "info"], env={**os.environ, **room.env}, capture_output=True).returncode
                == 0
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("pulseaudio did not come up within 10 s")
            time.sleep(0.05)
        room.pactl("load-module", "module-null-sink", f"sink_name={MIC}", f"rate={MIC_RATE}", "channels=1")
        room.pactl("load-module", "module-null-sink", f"sink_name={SPEAKER}", f"rate={SPEAKER_RATE}", "channels=1")
        room.pactl("set-default-sink", SPEAKER)
        room.pactl("set-default-source", f"{MIC}.monitor")
        for sink in (MIC, SPEAKER):
            room.anchors.append(
                room._run("parec", f"--device={sink}.monitor", "--latency-msec=10", "--raw", stdout=subprocess.DEVNULL)
            )
    except BaseException:
        room.close()
        raise
    return room


@dataclass
class EchoLoop:
    """The laptop's acoustic path: what the virtual speaker plays comes back into the virtual microphone with a
    delay, a gain and reverberation, mixed with whatever else is played into the microphone (the user)."""

    room: Room
    modules: list[str]
    delay_ms: float
    gain_db: float

    def stop(self) -> None:
        for m in reversed(self.modules):
            with contextlib.suppress(RuntimeError):
                self.room.pactl("unload-module", m)


LOOP_EXTRA_MS = 45.0  # the sinks' and PortAudio's own latency beyond module-loopback's (measured in the room test)
REVERB_PLUGIN = Path("/usr/lib/ladspa/allpass_1895.so")  # swh-plugins: Schroeder allpass delay lines


def start_echo_loop(
    room: Room, delay_ms: float = 60.0, gain_db: float = 0.0, reverb: bool = True, adjust_time: float | None = 0.0
) -> EchoLoop:
    """Loop the speaker back into the microphone inside the sound server, so a busy machine cannot stretch it:
    module-loopback (speaker monitor -> microphone) starts with `delay_ms` of latency (less what the sinks and
    PortAudio add, LOOP_EXTRA_MS; the least total delay is about 50 ms), its stream volume is `gain_db`, and with
    `reverb` the sound passes two Schroeder allpass diffusers (13 and 29 ms delay lines decaying over 0.2 s;
    swh-plugins' LADSPA allpass_c) on the way: a small reverberant room.

    `adjust_time` is module-loopback's rate control period in seconds: 0 (the default) turns it off, so the delay
    stays where it started, as between a laptop's speaker and microphone on one clock (both null sinks run on the
    server's timer: nothing drifts; measured constant to the sample for 6-14 s between the speaker's underruns,
    where the rate control drifted the loop ~2 samples/s, which a linear echo model cannot follow). None:
    PulseAudio's default."""
    modules: list[str] = []
    loop = EchoLoop(room, modules, delay_ms, gain_db)
    try:
        target = MIC
        if reverb:
            if not REVERB_PLUGIN.exists():
                raise RuntimeError(f"the echo loop's reverb needs {REVERB_PLUGIN}: apt-get install swh-plugins")
            for i, delay in enumerate((0.029, 0.013)):
                name = f"room_air{i}"
                modules.append(
                    room.pactl(
                        "load-module",
                        "module-ladspa-sink",
                        f"sink_name={name}",
                        f"sink_master={target}",
                        "plugin=allpass_1895",
                        "label=allpass_c",
                        f"control=0.05,{delay},0.2",  # max delay, delay, decay time (s)
                        "channels=1",
                        "channel_map=mono",
                    ).strip()
                )
                target = name
        modules.append(
            room.pactl(
                "load-module",
                "module-loopback",
                f"source={SPEAKER}.monitor",
                f"sink={target}",
                f"latency_msec={max(5.0, delay_ms - LOOP_EXTRA_MS):g}",
                "source_dont_move=true",
                "sink_dont_move=true",
                "rate=16000",
                "channels=1",
                *([] if adjust_time is None else [f"adjust_time={adjust_time:g}"]),
            ).strip()
        )
        # the loopback's stream into the microphone: the sink input whose owner module is the loopback
        for block in room.pactl("list", "sink-inputs").split("Sink Input #")[1:]:
            if f"Owner Module: {modules[-1]}\n" in block:
                room.pactl("set-sink-input-volume", block.split()[0], f"{gain_db:g}dB")
                break
        else:
            raise RuntimeError("module-loopback's sink input is not listed: cannot set the echo gain")
    except BaseException:
        loop.stop()
        raise
    return loop
