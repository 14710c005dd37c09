"""The `assistant` command: subcommands, and the composition root that builds engines from config."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from assistant import __version__, config, hub, logs
from assistant.errors import AssistantError, AudioDeviceError

log = logging.getLogger("assistant.cli")


class NotAvailableYet(AssistantError):
    """A subcommand whose engine has not landed yet."""


def _not_yet(what: str) -> NotAvailableYet:
    return NotAvailableYet(f"`assistant {what}` is not available yet in this version")


# ---- subcommands -------------------------------------------------------------------------------------------


def models_of(cfg: config.Config) -> list[tuple[str, str]]:
    """(what, spec) for every model the configuration names."""
    return [("STT model", cfg.stt.model_id), ("LLM", cfg.llm.model), ("TTS model", cfg.tts.model)]


def cmd_run(args: argparse.Namespace, cfg: config.Config) -> int:
    for what, spec in models_of(cfg):
        hub.resolve(spec, what)
    from assistant.audio import devices

    devices.pick(cfg.audio.input_device, "input")
    devices.pick(cfg.audio.output_device, "output")
    raise _not_yet("run")


def cmd_devices(args: argparse.Namespace, cfg: config.Config) -> int:
    from assistant.audio import devices

    found = devices.list_devices()
    if not found:
        raise AudioDeviceError("no audio devices found; connect a microphone and speaker (or start the sound server)")
    print(f"{'':2} {'index':>5}  {'in':>3} {'out':>3}  {'rate':>7}  {'api':<10} name")
    for d in found:
        mark = ("<" if d.is_default_input else " ") + (">" if d.is_default_output else " ")
        print(
            f"{mark} {d.index:>5}  {d.max_input_channels:>3} {d.max_output_channels:>3}  "
            f"{d.default_samplerate:>7.0f}  {d.host_api:<10} {d.name}"
        )
    print("< default input, > default output")
    for kind in ("input", "output"):
        spec = getattr(cfg.audio, f"{kind}_device")
        try:
            chosen = devices.pick(spec, kind, found)
            print(f"audio.{kind}_device = {spec!r} uses {chosen.index}: {chosen.name}")
        except AudioDeviceError as e:
            print(f"audio.{kind}_device = {spec!r}: {e}")
    print("set audio.input_device / audio.output_device to an index or a name substring to choose")
    return 0


def cmd_pull(args: argparse.Namespace, cfg: config.Config) -> int:
    for what, spec in models_of(cfg):
        print(f"{what}: {spec}", flush=True)
        path = hub.pull(spec, what)
        print(f"  ready in {path}", flush=True)
    return 0


def cmd_say(args: argparse.Namespace, cfg: config.Config) -> int:
    raise _not_yet("say")


def cmd_voices(args: argparse.Namespace, cfg: config.Config) -> int:
    raise _not_yet("voices")


def cmd_transcribe(args: argparse.Namespace, cfg: config.Config) -> int:
    raise _not_yet("transcribe")


def cmd_chat(args: argparse.Namespace, cfg: config.Config) -> int:
    raise _not_yet("chat")


def cmd_ctl(args: argparse.Namespace, cfg: config.Config) -> int:
    raise _not_yet("ctl")


@dataclass(frozen=True)
class Check:
    name: str
    problem: str | None  # None when fine; else the problem and its fix


def _check(name: str, fn: Callable[[], object]) -> Check:
    try:
        fn()
    except AssistantError as e:
        return Check(name, str(e))
    return Check(name, None)


def _check_port(cfg: config.Config) -> None:
    if not cfg.server.enabled or cfg.server.port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((cfg.server.host, cfg.server.port))
        except OSError as e:
            raise AssistantError(
                f"server port {cfg.server.host}:{cfg.server.port} is not free ({e.strerror}); stop what uses it "
                "or set server.port"
            ) from e


def _check_config_dir() -> None:
    path = config.user_config_path().parent
    probe = path if path.exists() else path.parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise AssistantError(f"{probe} is not writable (the token and voice caches go there); fix its permissions")


def cmd_doctor(args: argparse.Namespace, cfg: config.Config) -> int:
    from assistant.audio import devices

    checks = [Check("config", None)]
    checks += [_check(f"{what} {spec}", partial(hub.resolve, spec, what)) for what, spec in models_of(cfg)]
    checks.append(_check("microphone", lambda: devices.pick(cfg.audio.input_device, "input")))
    checks.append(_check("speaker", lambda: devices.pick(cfg.audio.output_device, "output")))
    checks.append(_check("server port", lambda: _check_port(cfg)))
    checks.append(_check("config folder", _check_config_dir))
    if sys.platform == "darwin":
        checks.append(Check("permissions", None))  # microphone access is asked for by macOS on first capture
    print(f"config: {cfg.source}")
    for c in checks:
        print(f"  {'ok ' if c.problem is None else 'FAIL'}  {c.name}" + (f": {c.problem}" if c.problem else ""))
    problems = [c for c in checks if c.problem]
    print(f"{len(problems)} problem(s)" if problems else "all checks passed")
    return 1 if problems else 0


# ---- parser ------------------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted both before and after the subcommand (after it, they only set what is given)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default(None),
        help="config file (default: $ASSISTANT_CONFIG, ~/.config/assistant/config.toml, then the packaged default)",
    )
    parser.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        dest="overrides",
        default=default([]),
        help="override one config key (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", default=default(False), help="show tracebacks and debug logs")
    parser.add_argument(
        "--log-json", action="store_true", default=default(False), help="log JSON lines instead of key=value"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistant", description="A local real-time voice assistant on MLX.")
    parser.add_argument("--version", action="version", version=f"assistant {__version__}")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable[..., int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, suppress=True)
        p.set_defaults(fn=fn)
        return p

    add("run", cmd_run, "run the voice assistant daemon")
    add("devices", cmd_devices, "list audio devices (index, name, channels, default rate; defaults marked)")
    add("pull", cmd_pull, "download every model the config names into the Hugging Face cache")
    p = add("say", cmd_say, "speak TEXT through the speaker, or write it to a WAV file")
    p.add_argument("text", metavar="TEXT", help="what to say")
    p.add_argument("--voice", help="voice profile name (default: tts.voice)")
    p.add_argument("--out", metavar="FILE.wav", help="write a 24 kHz WAV file instead of playing")
    add("voices", cmd_voices, "list the voice profiles")
    p = add("transcribe", cmd_transcribe, "print the transcript of an audio file")
    p.add_argument("file", metavar="FILE", help="a WAV file, any sample rate")
    p.add_argument("--partials", action="store_true", help="show partial transcripts as they evolve")
    p = add("chat", cmd_chat, "a text chat with the LLM (a REPL over the daemon's engine)")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p = add("ctl", cmd_ctl, "send a command to a running daemon, or tail its events")
    p.add_argument("words", nargs="*", metavar="WORD", help="a command, e.g. `status`, `say hello`, `events`")
    add("doctor", cmd_doctor, "check devices, cached models, the server port and permissions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(args.debug)
    try:
        cfg = config.load(args.config, args.overrides)
        logs.setup("debug" if debug else cfg.logging.level, as_json=args.log_json or cfg.logging.json)
        return int(args.fn(args, cfg))
    except AssistantError as e:
        if debug:
            log.exception("failed")
        print(f"assistant: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
