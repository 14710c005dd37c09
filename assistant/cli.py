"""The `assistant` command: subcommands, and the composition root that builds engines from config."""

from __future__ import annotations

import argparse
import asyncio
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


# ---- subcommands -------------------------------------------------------------------------------------------


def models_of(cfg: config.Config) -> list[tuple[str, str]]:
    """(what, spec) for every model the configuration names."""
    return [("STT model", cfg.stt.model_id), ("LLM", cfg.llm.model), ("TTS model", cfg.tts.model)]


def cmd_run(args: argparse.Namespace, cfg: config.Config) -> int:
    for what, spec in models_of(cfg):  # pre-flight: a missing model or device fails in seconds, in one line
        hub.resolve(spec, what)
    from assistant.audio import devices

    for spec, kind in ((cfg.audio.input_device, "input"), (cfg.audio.output_device, "output")):
        try:
            devices.pick(spec, kind)
        except AudioDeviceError as e:
            if spec or not cfg.server.enabled:  # a device the user named is a mistake to fix, not a reason to go on
                raise
            # No sound card: the WebSocket clients are the microphone and speaker (headless mode).
            log.warning("%s; running headless: clients of the WebSocket server bring the audio", e)
            return asyncio.run(_run_daemon(cfg, headless=True))
    return asyncio.run(_run_daemon(cfg))


def build_engines(cfg: config.Config) -> Any:
    """Load every engine from the config (call on the compute thread: MLX state belongs to it)."""
    from assistant.engines import Engines
    from assistant.llm import Chat
    from assistant.stt import load_transcriber
    from assistant.tts import load_tts
    from assistant.vad import Vad

    transcriber = load_transcriber(cfg.stt)
    chat = Chat.load(cfg.llm)
    tts = load_tts(cfg.tts)
    return Engines(transcriber, chat, tts, tts.voice(cfg.tts.voice or None), make_vad=Vad)


class SharedEngines:
    """Engines for headless sessions over the daemon's loaded models (the session module's EngineSource).

    A session gets its own Chat (history and prompt cache) and transcriber (streaming state) over the same
    weights, and shares the TTS, whose voices are cached per name.
    """

    def __init__(self, cfg: config.Config, engines: Any) -> None:
        self.cfg = cfg
        self.engines = engines

    def new_session(self, voice: str | None) -> Any:
        from assistant.engines import Engines
        from assistant.llm import Chat
        from assistant.stt.transcriber import OfflineTranscriber, StreamingTranscriber

        chat, transcriber = self.engines.chat, self.engines.transcriber
        assert isinstance(chat, Chat) and isinstance(transcriber, OfflineTranscriber | StreamingTranscriber)
        return Engines(
            type(transcriber)(transcriber.lm, transcriber.cfg),
            Chat(chat.model, chat.tokenizer, chat.cfg),
            self.engines.tts,
            self.voice(voice) if voice else self.engines.voice,
            self.engines.make_vad,
        )

    def voice(self, name: str) -> Any:
        return self.engines.tts.voice(name)

    def voice_names(self) -> list[str]:
        return self.engines.tts.voice_names()


def _server_service(cfg: config.Config, engines: Any) -> Any:
    """The WebSocket server as a daemon service: the native protocol and (unless off) /v1/realtime sessions."""
    from assistant.conversation import Sessions
    from assistant.server.ws import ControlServer

    def service(pipeline: Any) -> Any:
        limit = cfg.server.realtime_sessions
        backend = Sessions(pipeline, SharedEngines(cfg, engines), limit) if limit else None
        return ControlServer(cfg.server, pipeline, backend)

    return service


async def _run_daemon(cfg: config.Config, headless: bool = False) -> int:
    from assistant.compute import Compute
    from assistant.daemon import ReopeningSource, Service, hotkey_service, serve

    compute = Compute()
    try:
        engines = await compute.run(build_engines, cfg)
        from assistant.conversation import Conversation

        services: list[Service] = []
        if cfg.pipeline.mode != "hands_free" and not headless:
            services.append(hotkey_service)
        if cfg.server.enabled:
            services.append(_server_service(cfg, engines))
        show = cfg.pipeline.status_line and sys.stderr.isatty()
        if headless:  # no microphone; the daemon's own replies (native say/ask) are not played anywhere
            from assistant.audio.sinks import NullSink

            return await serve(Conversation(cfg, engines, None, NullSink(), compute), services, status_line=show)
        from assistant.audio.capture import Capture
        from assistant.audio.playback import Playback

        source = ReopeningSource(lambda: Capture(cfg.audio))
        try:
            with Playback(cfg.audio, rate=engines.tts.sample_rate) as sink:
                pipeline = Conversation(cfg, engines, source, sink, compute)
                return await serve(pipeline, services, status_line=show)
        finally:
            await source.aclose()
    finally:
        if not await asyncio.to_thread(compute.close, 1.0):
            # An MLX call is still running: exit now rather than let interpreter shutdown kill that thread
            # inside C++ (std::terminate) or wait for it.
            log.warning("a model step did not finish; exiting without waiting for it")
            logging.shutdown()
            sys.stdout.flush()
            os._exit(1)


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
    from pathlib import Path

    from assistant.errors import InputError

    text = args.text.strip()
    if not text:
        raise InputError("nothing to say: TEXT is empty")
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist; create it or pick another path")
    from assistant.tts.qwen3 import Qwen3TTS
    from assistant.tts.voices import write_wav

    tts = Qwen3TTS.load(cfg.tts)
    voice = tts.voice(args.voice)
    if out is not None:
        import numpy as np

        chunks = list(tts.stream(text, voice))
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        write_wav(out, audio, tts.sample_rate)
        print(f"wrote {out} ({len(audio) / tts.sample_rate:.2f} s at {tts.sample_rate} Hz)")
        return 0
    return _play(cfg, tts.stream(text, voice), tts.sample_rate)


def _play(cfg: config.Config, chunks: Any, rate: int) -> int:
    import time

    from assistant.audio.playback import Playback

    total = 0
    with Playback(cfg.audio, rate=rate) as pb:
        for chunk in chunks:
            pb.write(chunk)
            total += len(chunk)
        # let the queued audio play out: wait for the remaining duration (one sleep, no polling loop)
        remaining = (total - pb.played_samples) / rate + pb.output_latency_s
        time.sleep(max(0.0, remaining))
    return 0


def cmd_voices(args: argparse.Namespace, cfg: config.Config) -> int:
    from assistant.tts.voices import load_profiles, resolve_voice_dir

    folder = resolve_voice_dir(cfg.tts.voices_dir)
    profiles = load_profiles(folder)
    if not profiles:
        print(f"no voice profiles in {folder}")
        return 0
    print(f"{'':2}{'name':<14} {'mode':<13} {'language':<10} voice")
    for name, p in profiles.items():
        what = p.speaker or p.instruct or p.ref_wav
        mark = "* " if name == cfg.tts.voice else "  "
        print(f"{mark}{name:<14} {p.mode:<13} {p.language:<10} {what}")
    print(f"* default voice (tts.voice); profiles in {folder}")
    return 0


def read_wav(path: str) -> tuple[Any, int]:
    """(float32 mono samples, sample rate) of a PCM WAV file (8/16/24/32-bit); InputError for anything else."""
    import wave

    import numpy as np

    from assistant.errors import InputError

    try:
        with wave.open(path, "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except FileNotFoundError as e:
        raise InputError(f"no such file: {path}") from e
    except (wave.Error, EOFError) as e:
        raise InputError(
            f"{path} is not a PCM WAV file ({e}); convert it, e.g. `ffmpeg -i {path} -ar 16000 -ac 1 out.wav`"
        ) from e
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2.0**23
    else:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2.0**31
    return x.reshape(-1, channels).mean(axis=1), rate


def cmd_transcribe(args: argparse.Namespace, cfg: config.Config) -> int:
    from assistant.audio.format import CAPTURE_RATE, frame_samples, resample
    from assistant.stt import load_transcriber

    audio, rate = read_wav(args.file)
    audio = resample(audio, rate, CAPTURE_RATE)
    tr = load_transcriber(cfg.stt)
    block = frame_samples(CAPTURE_RATE, 100)  # fed as the microphone would, 100 ms at a time
    last = None
    for start in range(0, len(audio), block):
        partial = tr.feed(audio[start : start + block])
        if args.partials and partial is not None and partial != last:
            print(f"[{(start + block) / CAPTURE_RATE:6.2f} s] {partial}", file=sys.stderr, flush=True)
            last = partial
    final = tr.finalize()
    print(final.text)
    if final.language:
        log.info("language=%s", final.language)
    return 0


CHAT_HELP = "type a message; /reset clears the history, /exit or Ctrl-D quits, Ctrl-C stops an answer"


def cmd_chat(args: argparse.Namespace, cfg: config.Config) -> int:
    from assistant.llm import Chat

    chat = Chat.load(cfg.llm)
    print(f"chat with {cfg.llm.model}: {CHAT_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            chat.reset()
            print("(history cleared)")
            continue
        if text.startswith("/"):
            print(f"unknown command {text}; {CHAT_HELP}")
            continue
        shown: list[str] = []
        try:
            for delta in chat.respond(text):
                shown.append(delta)
                if args.stream:
                    print(delta, end="", flush=True)
        except KeyboardInterrupt:
            chat.finish_turn("".join(shown))  # stopped: only what was shown counts as heard
            print(("" if args.stream else "".join(shown)) + " [stopped]")
            continue
        chat.finish_turn(None)
        print("" if args.stream else chat.history[-1].content)
        s = chat.stats
        log.debug(
            "turn: %d prompt tokens, %d from cache, %d computed, %d generated, %d messages dropped",
            s.prompt_tokens,
            s.reused_tokens,
            s.prefilled_tokens,
            s.generated_tokens,
            s.dropped_messages,
        )


def cmd_ctl(args: argparse.Namespace, cfg: config.Config) -> int:
    from assistant.server import ctl

    return ctl.run(cfg.server, args.words, max_events=args.max_events)


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


MIC_CHECK_S = 0.6  # long enough for a device's first blocks, short enough for a quick doctor run


async def _check_mic_signal(audio: config.AudioConfig) -> None:
    """Open the microphone briefly: a device that delivers only exact zeros is muted or not permitted."""
    import numpy as np

    from assistant.audio.capture import Capture

    peak = 0
    async with Capture(audio) as capture:
        while capture.samples_read < MIC_CHECK_S * 16_000:
            peak = max(peak, int(np.abs((await capture.read()).astype(np.int32)).max(initial=0)))
    if peak == 0:
        hint = (
            "allow your terminal (or the service) in System Settings > Privacy & Security > Microphone"
            if sys.platform == "darwin"
            else "check that it is not muted (e.g. pactl list sources) and that the right device is chosen"
        )
        raise AudioDeviceError(f"the microphone delivers only digital silence; {hint}")


def cmd_doctor(args: argparse.Namespace, cfg: config.Config) -> int:
    from assistant.audio import devices

    checks = [Check("config", None)]
    checks += [_check(f"{what} {spec}", partial(hub.resolve, spec, what)) for what, spec in models_of(cfg)]
    mic = _check("microphone", lambda: devices.pick(cfg.audio.input_device, "input"))
    checks.append(mic)
    if mic.problem is None:
        checks.append(_check("microphone signal", lambda: asyncio.run(_check_mic_signal(cfg.audio))))
    checks.append(_check("speaker", lambda: devices.pick(cfg.audio.output_device, "output")))
    checks.append(_check("server port", lambda: _check_port(cfg)))
    checks.append(_check("config folder", _check_config_dir))
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
    p.add_argument("--max-events", type=int, default=0, metavar="N", help="with `events`: exit after N events")
    add("doctor", cmd_doctor, "check devices, cached models, the server port and permissions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    compute = sys.modules.get("assistant.compute")
    if argv is None and compute is not None and compute.Compute.started:
        # MLX used from a worker thread can abort in its C++ destructors at interpreter exit ("terminate called
        # without an active exception", ml-explore/mlx#3126). Everything is closed by now: flush and leave.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
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
