"""Audio devices through PortAudio (sounddevice): listing and choosing, with errors a user can act on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from assistant.errors import AudioDeviceError


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    is_default_input: bool
    is_default_output: bool


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as e:  # the PortAudio library itself is missing
        raise AudioDeviceError(
            f"PortAudio is not installed ({e}); install it (macOS: it ships with the sounddevice wheel; "
            "Debian/Ubuntu: apt-get install libportaudio2)"
        ) from e
    return sounddevice


def list_devices() -> list[Device]:
    """Every device PortAudio sees, with the default input and output marked."""
    sd = _sounddevice()
    try:
        sd._terminate()  # re-scan: devices plugged in since start-up appear
        sd._initialize()
        raw = sd.query_devices()
        default_in, default_out = sd.default.device
    except sd.PortAudioError as e:
        raise AudioDeviceError(f"PortAudio cannot list audio devices: {e}; check the sound system") from e
    return [
        Device(
            index=i,
            name=d["name"],
            max_input_channels=d["max_input_channels"],
            max_output_channels=d["max_output_channels"],
            default_samplerate=d["default_samplerate"],
            is_default_input=i == default_in,
            is_default_output=i == default_out,
        )
        for i, d in enumerate(raw)
    ]


def pick(spec: str, kind: str, devices: list[Device] | None = None) -> Device:
    """The device for `spec` ("" = default, an index, or a name substring) with `kind` "input" or "output"."""
    devices = list_devices() if devices is None else devices
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    usable = [d for d in devices if getattr(d, key) > 0]
    setting = f"audio.{kind}_device"
    if not usable:
        raise AudioDeviceError(
            f"no audio {kind} device found; connect a {'microphone' if kind == 'input' else 'speaker'} "
            "(or start the sound server), then check `assistant devices`"
        )
    if spec == "":
        default = [d for d in usable if (d.is_default_input if kind == "input" else d.is_default_output)]
        return default[0] if default else usable[0]
    if spec.strip().isdigit():
        match = [d for d in usable if d.index == int(spec)]
    else:
        match = [d for d in usable if spec.lower() in d.name.lower()]
    if not match:
        names = ", ".join(f"{d.index}: {d.name}" for d in usable)
        raise AudioDeviceError(f"{setting} = {spec!r} matches no {kind} device; choose one of: {names}")
    return match[0]
