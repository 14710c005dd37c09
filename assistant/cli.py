"""The `assistant` command: subcommands, and the composition root that builds engines from config."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from assistant import __version__, config, hub, logs
from assistant.errors import AssistantError, AudioDeviceError, ConfigError, ModelError

log = logging.getLogger("assistant.cli")


# ---- subcommands -------------------------------------------------------------------------------------------


def models_of(cfg: config.Config) -> list[tuple[str, str]]:
    """(what, spec) for every model the daemon loads (checked before `run` starts); an `openai` backend's LLM lives
    on its server."""
    llm = [("LLM", cfg.llm.model)] if cfg.llm.backend == "mlx" else []
    turn = [("end-of-turn model", cfg.endofturn.model)] if cfg.endofturn.detector == "smart_turn" else []
    return [("STT model", cfg.stt.model_id), *llm, ("TTS model", cfg.tts.model), *turn]


def load_chat(cfg: config.LlmConfig) -> Any:
    """The configured LLM backend: in-process mlx-lm, or a client of an OpenAI-compatible server."""
    if cfg.backend == "openai":
        from assistant.llm_remote import RemoteChat

        return RemoteChat.load(cfg)
    from assistant.llm import Chat

    return Chat.load(cfg)


AUDIO_CLOSE_S = 3.0  # at exit, how long to wait for audio streams still closing (a slow sound server)
MLX_LM_OPEN_FILES = 4096  # mlx_lm/utils.py sets RLIMIT_NOFILE to (2048, 4096) when it is imported


def check_open_file_limit(limits: tuple[int, int] | None = None, root: bool | None = None) -> None:
    """AssistantError if mlx-lm could not set its open-file limit: a hard limit below 4096 fails at model load."""
    import resource

    _soft, hard = limits or resource.getrlimit(resource.RLIMIT_NOFILE)
    if (os.geteuid() == 0 if root is None else root) or hard == resource.RLIM_INFINITY or hard >= MLX_LM_OPEN_FILES:
        return
    raise AssistantError(
        f"the open-file hard limit is {hard}, below the {MLX_LM_OPEN_FILES} the model loader (mlx-lm) sets; "
        f"raise it (`ulimit -Hn {MLX_LM_OPEN_FILES}`, or LimitNOFILE= for a service) and start again"
    )


def pulled_models(cfg: config.Config) -> list[tuple[str, str]]:
    """What `assistant pull` fetches: every model the daemon loads."""
    return models_of(cfg)


def cmd_run(args: argparse.Namespace, cfg: config.Config) -> int:
    check_open_file_limit()
    check_voice(cfg)
    check_server_settings(cfg)
    for what, spec in models_of(cfg):  # pre-flight: a missing model or device fails in seconds, in one line
        hub.resolve(spec, what)
    _check_port(cfg)  # before the models load: a second daemon on the same port fails at once, not after warm-up
    if cfg.wyoming.enabled:
        _check_wyoming_ports(cfg)
    check_push_to_talk(cfg)
    from assistant.audio import devices

    with _terminal(args, cfg) as con:
        headless = False
        for spec, kind in ((cfg.audio.input_device, "input"), (cfg.audio.output_device, "output")):
            try:
                devices.pick(spec, kind)
            except AudioDeviceError as e:
                if spec or not cfg.server.enabled:  # a device the user named is a mistake to fix, not to go on
                    raise
                # No sound card: the WebSocket clients are the microphone and speaker (headless mode).
                log.warning("%s; running headless: clients of the WebSocket server bring the audio", e)
                headless = True
                break
        # outside the except block: the daemon's own exceptions must not be chained to the missing device
        return asyncio.run(_run_daemon(cfg, headless=headless, console=con))


@dataclass(frozen=True)
class _VoicesOnDisk:
    """settings.VoiceCatalog before the TTS loads: the voices folder's profiles and config.json's model type,
    preset speakers and languages (None when the model is not on disk or its config.json does not parse)."""

    found: dict[str, Any]
    model_type: str | None = None
    speakers: list[str] | None = None
    languages: list[str] | None = None

    def profiles(self) -> dict[str, Any]:
        return self.found


def check_voice(cfg: config.Config, name: str | None = None) -> None:
    """The voice profile `name` (default tts.voice) is in the voices folder, complete, and fits tts.model when that
    is on disk: a typo or a clone voice for a CustomVoice model fails in a second, before the models load (the TTS
    found it only after loading them). ConfigError naming the profiles."""
    from assistant.settings import check_voice as check
    from assistant.tts.voices import load_profiles, resolve_voice_dir

    what, name = ("--voice", name) if name else ("tts.voice", cfg.tts.voice)
    folder = resolve_voice_dir(cfg.tts.voices_dir)
    broken: dict[str, str] = {}
    profiles = load_profiles(folder, broken)
    if name in broken:
        raise ConfigError(broken[name])
    for problem in broken.values():  # another voice: this one works, that one is skipped (`assistant voices`)
        log.warning("%s; that voice is skipped until it is fixed", problem)
    where = f" (profiles in {folder}; `assistant voices` lists them)"
    check(_voices_on_disk(cfg.tts.model, dict(profiles)), name, f"{what}: ", where)
    profiles[name].validate()


def _voices_on_disk(spec: str, profiles: dict[str, Any]) -> _VoicesOnDisk:
    """The catalog from the TTS model's config.json; what it cannot tell is None (not on disk, unreadable: the
    model's own pre-flight and load say so)."""
    from assistant.tts.qwen3.config import ModelConfig
    from assistant.tts.voices import MODEL_TYPE_OF

    try:
        raw = hub.read_json_object(hub.resolve(spec, "tts.model") / "config.json", "config.json", "")
    except ModelError:
        return _VoicesOnDisk(profiles)
    kind = raw.get("tts_model_type")
    if not (isinstance(kind, str) and kind in MODEL_TYPE_OF.values()):
        return _VoicesOnDisk(profiles)
    try:
        model = ModelConfig.from_dict(raw)
    except (ModelError, *hub.MALFORMED):
        return _VoicesOnDisk(profiles, kind)
    return _VoicesOnDisk(profiles, kind, model.speakers, model.languages)


def check_server_settings(cfg: config.Config) -> None:
    """server.voice_aliases entries, the token file and the TLS files load (the server read them only after the
    models had loaded, so a typo there cost a full start). ConfigError naming the fix."""
    if not cfg.server.enabled:
        return
    from assistant.server.auth import check_origins, check_token_file

    _check_alias_targets(cfg, config.parse_voice_aliases(cfg.server.voice_aliases))
    check_token_file(cfg.server)
    check_origins(cfg.server.allowed_origins)
    if cfg.server.tls_cert or cfg.server.tls_key:
        from assistant.server.ws import tls_context

        tls_context(cfg.server)


def _check_alias_targets(cfg: config.Config, aliases: dict[str, str]) -> None:
    """Each server.voice_aliases entry names a voice profile that loads: a typo sent every client asking for the
    alias to the default voice without a word."""
    if not aliases:
        return
    from assistant.tts.voices import load_profiles, resolve_voice_dir

    broken: dict[str, str] = {}
    profiles = load_profiles(resolve_voice_dir(cfg.tts.voices_dir), broken)
    for name, target in aliases.items():
        if target in broken:
            raise ConfigError(f"server.voice_aliases sends {name!r} to a broken voice: {broken[target]}")
        if target not in profiles:
            raise ConfigError(
                f"server.voice_aliases entry {name}={target} names no voice profile; use one of "
                f"{', '.join(sorted(profiles)) or 'none'} (`assistant voices` lists them), or remove the entry"
            )


def _check_tools(cfg: config.Config) -> None:
    """The memory database opens and every `tools.enabled` name and `tools.timezone` is known (as `run` builds
    them before the models load)."""
    from assistant.tools.setup import build_toolbox, open_memory

    memory = open_memory(cfg.memory)
    try:
        build_toolbox(cfg, memory)
    finally:
        memory.close()


def _terminal(args: argparse.Namespace, cfg: config.Config) -> Any:
    """The status-line console when stderr is a terminal and the log is not JSON; else nothing (plain lines)."""
    import contextlib

    from assistant import console

    json_log = bool(args.log_json or cfg.logging.json)
    if cfg.pipeline.status_line and sys.stderr.isatty() and not json_log:
        return console.terminal()
    return contextlib.nullcontext(None)


def _count(text: str) -> int:
    """An argparse type: a whole number >= 0 (argparse prints the error as one usage line)."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (0: no limit), got {text!r}")
    return int(text)


def check_push_to_talk(cfg: config.Config) -> None:
    """pipeline.mode = "push_to_talk" with no usable hotkey would be a deaf daemon: a ConfigError naming the fix.
    (In "both" mode the daemon only warns and listens hands-free.)"""
    if cfg.pipeline.mode != "push_to_talk":
        return
    from assistant.hotkey import Hotkey

    probe = Hotkey(cfg.pipeline.hotkey, cfg.pipeline.hotkey_mode, on_start=lambda: None, on_stop=lambda: None)
    problem = probe.start()
    probe.stop()
    if problem is not None:
        raise ConfigError(
            f'pipeline.mode = "push_to_talk" needs the hotkey, but {problem}; or set pipeline.mode = "both"'
        )


def build_engines(cfg: config.Config, progress: Callable[[str], None] | None = None) -> Any:
    """Load every engine from the config (call on the compute thread: MLX state belongs to it). `progress` gets
    a short text while each model loads (the status line); each load is logged with its time."""
    from assistant.engines import Engines
    from assistant.stt import load_transcriber
    from assistant.tts import load_tts
    from assistant.vad import Vad

    def timed(what: str, spec: str, load: Callable[[], Any]) -> Any:
        import time

        if progress is not None:
            progress(f"loading {what} {spec}…")
        began = time.perf_counter()
        engine = load()
        log.info("loaded %s", what, extra=logs.kv(model=spec, seconds=round(time.perf_counter() - began, 2)))
        return engine

    transcriber = timed("STT model", cfg.stt.model_id, lambda: load_transcriber(cfg.stt))
    chat = timed("LLM", cfg.llm.model, lambda: load_chat(cfg.llm))
    tts = timed("TTS model", cfg.tts.model, lambda: load_tts(cfg.tts))
    voice = timed("voice", cfg.tts.voice, lambda: tts.voice(cfg.tts.voice or None))
    from assistant.endofturn import load_smart_turn

    turn = None  # the "silence" detector needs no model: no "loaded" line for one that was not
    if cfg.endofturn.detector != "silence":
        turn = timed("end-of-turn model", cfg.endofturn.model, lambda: load_smart_turn(cfg.endofturn))
    return Engines(transcriber, chat, tts, voice, make_vad=Vad, score_turn=None if turn is None else turn.score)


class SharedEngines:
    """Engines for headless sessions over the daemon's loaded models (assistant/sessions.py's RealtimeEngines).

    A session gets its own Chat (history and prompt cache) and transcriber (streaming state) over the same
    weights, and shares the TTS, whose voices are cached per name.
    """

    def __init__(self, cfg: config.Config, engines: Any) -> None:
        self.cfg = cfg
        self.engines = engines

    def new_session(self, voice: str | None) -> Any:
        from assistant.engines import Engines
        from assistant.llm import Chat
        from assistant.llm_remote import RemoteChat
        from assistant.stt.transcriber import OfflineTranscriber, StreamingTranscriber

        chat, transcriber = self.engines.chat, self.engines.transcriber
        assert isinstance(chat, Chat | RemoteChat) and isinstance(
            transcriber, OfflineTranscriber | StreamingTranscriber
        )
        return Engines(
            type(transcriber)(transcriber.lm, transcriber.cfg),
            chat.new_conversation() if isinstance(chat, RemoteChat) else Chat(chat.model, chat.tokenizer, chat.cfg),
            self.engines.tts,
            self.engines.tts.voice(voice) if voice else self.engines.voice,
            self.engines.make_vad,
            score_turn=self.engines.score_turn,  # onnxruntime sessions are safe to run from several threads
        )


def _server_service(cfg: config.Config, engines: Any) -> Any:
    """The WebSocket server as a daemon service: the native protocol and (unless off) /v1/realtime sessions."""
    from assistant.server.ws import ControlServer
    from assistant.sessions import Sessions

    def service(control: Any) -> Any:
        from assistant.oneshot import OneShot

        limit, pipeline = cfg.server.realtime_sessions, control.conversation
        backend = Sessions(pipeline, SharedEngines(cfg, engines), limit) if limit else None
        return ControlServer(cfg.server, control, backend, audio=OneShot(cfg, engines, pipeline.compute))

    return service


async def _run_daemon(cfg: config.Config, headless: bool = False, console: Any = None) -> int:
    from assistant.compute import Compute
    from assistant.daemon import ReopeningSource, Service, background, hotkey_service, serve
    from assistant.tools.setup import build_toolbox, open_memory
    from assistant.tools.timers import speak_reminders

    memory = open_memory(cfg.memory)
    toolbox, reminders = build_toolbox(cfg, memory)
    compute = Compute()
    try:
        engines = await compute.run(build_engines, cfg, console.status if console is not None else None)
        from assistant.conversation import Conversation

        def conversation(source: Any, sink: Any) -> Conversation:
            return Conversation(cfg, engines, source, sink, compute, toolbox=toolbox, memory=memory)

        services: list[Service] = [background(partial(speak_reminders, reminders), "speak the reminders")]
        if cfg.pipeline.mode != "hands_free" and not headless:
            services.append(hotkey_service)
        if cfg.server.enabled:
            services.append(_server_service(cfg, engines))
        if cfg.wyoming.enabled:
            from assistant.wyoming import WyomingServices, speech_engines

            speech = speech_engines(engines.transcriber, engines.tts, engines.chat)
            services.append(lambda _pipeline: WyomingServices(cfg, speech, compute))
        if headless:  # no microphone; the daemon's own replies (native say/ask) are not played anywhere
            from assistant.audio.sinks import NullSink

            return await serve(conversation(None, NullSink()), services, console)
        from assistant.audio.capture import Capture
        from assistant.audio.follow import default_follower
        from assistant.audio.playback import Playback

        source = ReopeningSource(lambda: Capture(cfg.audio))
        try:
            async with Playback(cfg.audio, rate=engines.tts.sample_rate) as sink:
                pipeline = conversation(source, sink)
                sink.report = pipeline.device_status
                follower = default_follower(cfg.audio, source, sink)
                if follower is not None:
                    services.append(background(lambda _: follower.run(), "follow the default device"))
                return await serve(pipeline, services, console)
        finally:
            await source.aclose()
    finally:
        memory.close()
        if not await asyncio.to_thread(compute.close, 0.5):
            # An MLX call is still running: exit now rather than let interpreter shutdown kill that thread
            # inside C++ (std::terminate) or wait for it. Ctrl-C (asyncio.run cancels us) exits 130 as elsewhere.
            interrupted = isinstance(sys.exc_info()[1], asyncio.CancelledError)
            if not interrupted:
                log.warning("a model step did not finish; exiting without waiting for it")
            logging.shutdown()
            sys.stdout.flush()
            os._exit(130 if interrupted else 1)


def cmd_wyoming(args: argparse.Namespace, cfg: config.Config) -> int:
    if not cfg.wyoming.asr_port and not cfg.wyoming.tts_port:
        raise ConfigError(
            "wyoming.asr_port and wyoming.tts_port are both 0 (off): `assistant wyoming` has nothing to serve; "
            "set one (10300 and 10200 are the standard ports)"
        )
    check_voice(cfg)
    for what, spec in (("STT model", cfg.stt.model_id), ("TTS model", cfg.tts.model)):
        hub.resolve(spec, what)
    _check_wyoming_ports(cfg, handle=False)  # no LLM here: no handle service
    if cfg.wyoming.handle_port:
        log.warning(
            "wyoming.handle_port = %d is not served: `assistant wyoming` loads no LLM; to serve it, run "
            "`assistant run` with wyoming.enabled = true",
            cfg.wyoming.handle_port,
        )
    return asyncio.run(_run_wyoming(cfg))


def build_speech_engines(cfg: config.Config) -> Any:
    """STT and TTS only, for the Wyoming services (call on the compute thread)."""
    from assistant.stt import load_transcriber
    from assistant.tts.qwen3 import Qwen3TTS
    from assistant.wyoming import speech_engines

    tts = Qwen3TTS.load(cfg.tts)
    tts.voice(cfg.tts.voice or None)  # the default voice's prefix is computed once, before the first client
    return speech_engines(load_transcriber(cfg.stt), tts)


async def _run_wyoming(cfg: config.Config) -> int:
    """The Wyoming services alone (no microphone, speaker or LLM) until SIGINT/SIGTERM."""
    import signal

    from assistant.compute import Compute
    from assistant.wyoming import WyomingServices

    compute = Compute()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        engines = await compute.run(build_speech_engines, cfg)
        async with WyomingServices(cfg, engines, compute) as services:
            served = {"asr": services.asr_port, "tts": services.tts_port}
            where = [
                f"{kind} on tcp://{cfg.wyoming.host}:{port}" if port else f"{kind} off" for kind, port in served.items()
            ]
            print(f"wyoming: {', '.join(where)}", flush=True)
            await stop.wait()
        return 0
    finally:
        await asyncio.to_thread(compute.close, 1.0)


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
    specs = pulled_models(cfg)
    if args.verify:
        return _report_pull(hub.verify_all(specs, print_line))
    return _report_pull(hub.pull_all(specs, print_line))


def _report_pull(results: list[hub.PullResult]) -> int:
    failed = [f"{r.what} {r.spec}" for r in results if r.problem]
    ready = len(results) - len(failed)
    print_line(f"{ready} of {len(results)} model(s) ready" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def print_line(text: str) -> None:
    print(text, flush=True)


def peak_memory_mb() -> float:
    """The larger of MLX's peak allocation and the process's peak resident set, in MB."""
    import resource

    import mlx.core as mx

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    return max(float(mx.get_peak_memory()), float(rss_bytes)) / 1e6


@dataclass
class SpeechStats:
    """What `_speak` produced: samples, seconds from the start to the first chunk and to the last."""

    samples: int = 0
    first_s: float | None = None
    synth_s: float = 0.0


def _speak(
    tts: Any, voice: Any, sentences: list[str], stats: SpeechStats, done: Callable[[int], None] | None = None
) -> Any:
    """float32 chunks of `sentences`, one utterance each (no silent cap: a sentence cut at tts.max_frames warns);
    `done(n)` after the n-th sentence. Ctrl-C lands between two frames of work."""
    import time

    from assistant.audio.format import TTS_FRAME_SAMPLES

    began = time.perf_counter()
    for n, sentence in enumerate(sentences, 1):
        log.debug("speaking sentence %d of %d", n, len(sentences))
        utt = tts.start(voice, sentence)
        while not utt.done:
            chunk = utt.step()
            if chunk is not None:
                if stats.first_s is None:
                    stats.first_s = time.perf_counter() - began
                stats.samples += len(chunk)
                yield chunk
        if utt.frames_emitted >= tts.cfg.max_frames:
            log.warning(
                "sentence %d of %d reached tts.max_frames = %d (%.1f s of audio) and was cut; raise tts.max_frames "
                "or split the sentence",
                n,
                len(sentences),
                tts.cfg.max_frames,
                tts.cfg.max_frames * TTS_FRAME_SAMPLES / tts.sample_rate,
            )
        if done is not None:
            done(n)
    stats.synth_s = time.perf_counter() - began


def _stdin_text() -> str:
    """stdin as UTF-8 text, stripped (TEXT `-` of say and ctl say/ask); InputError naming the bad byte."""
    from assistant.errors import InputError

    raw = sys.stdin.buffer.read()
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise InputError(
            f"stdin is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); convert it, "
            "e.g. `iconv -f latin1 -t utf-8`"
        ) from e


def cmd_say(args: argparse.Namespace, cfg: config.Config) -> int:
    import time

    from assistant.audio.files import check_output, write_audio
    from assistant.errors import InputError
    from assistant.text import sentences

    text = args.text.strip()
    if text == "-":
        text = _stdin_text()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # argv bytes that are not UTF-8 arrive as lone surrogates
        raise InputError(
            f"TEXT is not valid UTF-8 (character {e.start + 1} cannot be read); pass UTF-8 text, e.g. set "
            "LANG=en_US.UTF-8 in the terminal"
        ) from e
    if not text:
        raise InputError("nothing to say: TEXT is empty")
    pieces = sentences(text)
    if not pieces:
        raise InputError("nothing to say: TEXT has no speakable words (only emoji, symbols or markup)")
    out = check_output(args.out) if args.out else None  # before the model loads: a bad path fails in a second
    check_voice(cfg, args.voice)
    from assistant.tts.qwen3 import Qwen3TTS

    began = time.perf_counter()
    tts = Qwen3TTS.load(cfg.tts)
    voice = tts.voice(args.voice)
    loaded_s = time.perf_counter() - began
    stats = SpeechStats()
    if out is not None:
        import numpy as np

        # a long text to a file was minutes of silence: a terminal sees the sentences done so far
        shown = sys.stderr.isatty() and len(pieces) > 1
        progress = partial(_say_progress, len(pieces), stats, tts.sample_rate) if shown else None
        parts = list(_speak(tts, voice, pieces, stats, progress))
        if shown:
            print("\x1b[K", end="", file=sys.stderr)  # the progress line gives way to the summary
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        write_audio(out, audio, tts.sample_rate)
        where = "stdout" if out.is_stdout else out.path
        print(f"wrote {where} ({len(audio) / tts.sample_rate:.2f} s at {tts.sample_rate} Hz)", file=sys.stderr)
    else:
        _play(cfg, _speak(tts, voice, pieces, stats), tts.sample_rate)
    audio_s = stats.samples / tts.sample_rate
    rtf = stats.synth_s / audio_s if audio_s else 0.0
    print(
        f"said {len(pieces)} sentence(s): {audio_s:.2f} s of audio, first audio after {stats.first_s or 0:.2f} s, "
        f"RTF {rtf:.2f}, model load {loaded_s:.1f} s, peak memory {peak_memory_mb():.0f} MB",
        file=sys.stderr,
    )
    return 0


def _say_progress(total: int, stats: SpeechStats, rate: int, n: int) -> None:
    """One terminal line, rewritten after each sentence, for `say --out`."""
    # ends at column 0 ("\r"), so a warning logged next overwrites it instead of joining it
    print(
        f"sentence {n} of {total}: {stats.samples / rate:.1f} s of audio\x1b[K", end="\r", file=sys.stderr, flush=True
    )


def _play(cfg: config.Config, chunks: Any, rate: int) -> int:
    import time

    from assistant.audio.playback import Playback

    total = 0
    with Playback(cfg.audio, rate=rate) as pb:  # Ctrl-C leaves the block: close() drops the queued audio
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
    broken: dict[str, str] = {}
    profiles = load_profiles(folder, broken)
    for problem in broken.values():  # the others are still listed: one bad file hid them all
        print(f"skipped: {problem}", file=sys.stderr)
    if not profiles:
        print(f"no voice profiles in {folder}")
        return 1 if broken else 0
    print(f"{'':2}{'name':<14} {'mode':<13} {'language':<10} voice")
    for name, p in profiles.items():
        what = p.speaker or p.instruct or p.ref_wav
        mark = "* " if name == cfg.tts.voice else "  "
        print(f"{mark}{name:<14} {p.mode:<13} {p.language:<10} {what}")
    print(f"* default voice (tts.voice); profiles in {folder}")
    if cfg.tts.voice and cfg.tts.voice not in profiles:  # `run` and `say` would refuse it: say so here first
        print(f"tts.voice {cfg.tts.voice!r} is none of these profiles; set tts.voice to one of them", file=sys.stderr)
        return 2
    return 1 if broken else 0


def cmd_transcribe(args: argparse.Namespace, cfg: config.Config) -> int:
    import dataclasses
    import time

    from assistant.audio.files import read_audio
    from assistant.audio.format import CAPTURE_RATE, frame_samples, resample
    from assistant.stt import load_transcriber

    audio, rate = read_audio(args.file)
    audio = resample(audio, rate, CAPTURE_RATE)
    stt = cfg.stt if args.partials else dataclasses.replace(cfg.stt, partial_interval_ms=0)  # no wasted decodes
    began = time.perf_counter()
    tr = load_transcriber(stt)
    loaded_s = time.perf_counter() - began
    block = frame_samples(CAPTURE_RATE, 100)  # fed as the microphone would, 100 ms at a time
    last = None
    began = time.perf_counter()
    for start in range(0, len(audio), block):
        partial = tr.feed(audio[start : start + block])
        if args.partials and partial is not None and partial != last:
            print(f"[{(start + block) / CAPTURE_RATE:6.2f} s] {partial}", file=sys.stderr, flush=True)
            last = partial
    final = tr.finalize()
    spent = time.perf_counter() - began
    print(final.text, flush=True)
    audio_s = len(audio) / CAPTURE_RATE
    print(
        f"transcribed {audio_s:.2f} s of audio in {spent:.2f} s (RTF {spent / audio_s:.3f}), model load "
        f"{loaded_s:.1f} s" + (f", language {final.language}" if final.language else ""),
        file=sys.stderr,
    )
    return 0


CHAT_HELP = "/help this help, /reset clears the history, /exit or Ctrl-D quits, Ctrl-C stops an answer"


def _chat_history() -> Any:
    """Line editing and a persistent input history (readline where Python has it); None without it."""
    try:
        import readline
    except ImportError:  # e.g. a Python built without it: input() still works, without history
        return None
    from assistant.paths import state_dir

    path = state_dir() / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass  # first run (or unreadable): start empty
    readline.set_history_length(1000)
    return path


def _save_history(path: Any) -> None:
    import readline

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)
    except OSError as e:
        log.warning("chat history not saved to %s: %s", path, e)


def cmd_chat(args: argparse.Namespace, cfg: config.Config) -> int:
    import time

    began = time.perf_counter()
    chat = load_chat(cfg.llm)
    print(f"chat with {cfg.llm.model} (loaded in {time.perf_counter() - began:.1f} s): {CHAT_HELP}", file=sys.stderr)
    history = _chat_history() if sys.stdin.isatty() else None
    stream = not args.no_stream
    try:
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
            if text == "/help":
                print(CHAT_HELP)
                continue
            if text == "/reset":
                chat.reset()
                print("(history cleared)")
                continue
            if text.startswith("/"):
                print(f"unknown command {text}; {CHAT_HELP}")
                continue
            if not text.isascii() and not _is_utf8(text):  # undecodable input bytes arrive as lone surrogates
                print("[error: the line is not UTF-8 text; set the terminal to UTF-8, e.g. LANG=en_US.UTF-8]")
                continue
            _chat_turn(chat, text, stream)
    finally:
        if history is not None:
            _save_history(history)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _chat_turn(chat: Any, text: str, stream: bool) -> None:
    import time

    shown: list[str] = []
    began = time.perf_counter()
    first: float | None = None
    try:
        for delta in chat.respond(text):
            first = first if first is not None else time.perf_counter()
            shown.append(delta)
            if stream:
                print(delta, end="", flush=True)
    except KeyboardInterrupt:
        chat.finish_turn("".join(shown))  # stopped: only what was shown counts as heard
        print(("" if stream else "".join(shown)) + " [stopped]")
        return
    except ModelError as e:  # e.g. the LLM server is down: say so and keep the REPL; the next line retries
        chat.finish_turn("".join(shown))
        print(("" if stream else "".join(shown)) + f" [error: {e}]")
        return
    chat.finish_turn(None)
    print("" if stream else chat.history[-1].content)
    end = time.perf_counter()
    s = chat.stats
    if not hasattr(s, "generated_tokens"):  # the remote backend: the server counts the tokens
        first_s = f"{(first or end) - began:.2f} s" if first is not None else "-"
        print(f"[first after {first_s}; prompt ~{s.prompt_tokens_estimate} tokens]", file=sys.stderr)
        return
    gen_s = end - (first if first is not None else end)
    rate = (s.generated_tokens - 1) / gen_s if gen_s > 0 and s.generated_tokens > 1 else 0.0
    print(
        f"[{s.generated_tokens} tokens, {rate:.1f} tokens/s, first after {((first or end) - began):.2f} s; prompt "
        f"{s.prompt_tokens} tokens, {s.reused_tokens} cached]",
        file=sys.stderr,
    )


def cmd_ctl(args: argparse.Namespace, cfg: config.Config) -> int:
    from assistant.server import ctl

    words = list(args.words)
    if words[:1] in (["say"], ["ask"]) and words[1:] == ["-"]:  # as `assistant say -`: the text from stdin
        words[1] = _stdin_text()
    return ctl.run(cfg.server, words, max_events=args.max_events)


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


def _check_profiles(cfg: config.Config) -> None:
    """Every profile in the voices folder loads (a broken one is skipped by `run`, so its voice is missing)."""
    from assistant.tts.voices import load_profiles, resolve_voice_dir

    broken: dict[str, str] = {}
    load_profiles(resolve_voice_dir(cfg.tts.voices_dir), broken)
    if broken:
        raise ConfigError("; ".join(broken.values()))


def _headless(cfg: config.Config, missing: Check, spec: str) -> Check:
    """A device check that failed, as `run` sees it: no device named and the server on is headless mode (fine),
    anything else a problem."""
    if spec or not cfg.server.enabled:
        return missing
    return Check(f"{missing.name}: none, so `assistant run` runs headless (WebSocket clients bring the audio)", None)


def _check_model(spec: str, what: str) -> None:
    """The model is there (hub.resolve) and its folder looks whole: weights, a config.json that parses (the
    end-of-turn model is one .onnx file), and hub.check_weights (no file cut short, no shard or part missing).
    Loading it is what `run` does; this catches a truncated or interrupted download."""

    path = hub.resolve(spec, what)
    if not any(path.rglob("*.safetensors")) and not any(path.rglob("*.onnx")):
        raise AssistantError(
            f"{what} folder {path} holds no weights (*.safetensors); run `assistant pull` or fix the path"
        )
    config_json = path / "config.json"
    if not config_json.is_file():
        if what != "end-of-turn model":
            raise AssistantError(f"{what} folder {path} has no config.json; run `assistant pull` or fix the path")
        return
    hub.read_json_object(config_json, str(config_json), "run `assistant pull` again or fix the file")
    hub.check_weights(path, "run `assistant pull` again (or copy the model anew)")
    # files the loaders need beside the weights: a folder copied in part passed and `run` failed after loading
    if what == "TTS model":
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "speech_tokenizer/config.json"):
            if not (path / name).is_file():
                raise AssistantError(
                    f"{what} folder {path} has no {name}; run `assistant pull` or copy the whole model"
                )
    if what == "LLM":
        from assistant.llm import TOKENIZER_FILES

        if not any((path / name).is_file() for name in TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
            raise AssistantError(
                f"{what} folder {path} has no tokenizer file ({', '.join(TOKENIZER_FILES)} or *.tiktoken); run "
                "`assistant pull` or copy the whole model"
            )


def _check_llm_server(llm: config.LlmConfig) -> None:
    """The OpenAI-compatible server answers GET /models with the key (the model list itself is not checked)."""
    import httpx2

    from assistant.llm_remote import read_api_key

    key = read_api_key(llm, os.environ)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = llm.base_url.rstrip("/") + "/models"
    try:
        r = httpx2.get(url, headers=headers, timeout=llm.connect_timeout_s + 2)
    except httpx2.HTTPError as e:
        raise AssistantError(f"not reachable ({type(e).__name__}); start the server or fix llm.base_url") from e
    if r.status_code in (401, 403):
        raise AssistantError(f"refused the API key (HTTP {r.status_code}); check llm.api_key_env / llm.api_key_file")
    if r.status_code == 404:  # a server that is up but not at this path: every turn would fail the same way
        raise AssistantError(
            f"answered HTTP 404 for {url}: llm.base_url is not its OpenAI API root, which usually ends in /v1 "
            "(e.g. http://127.0.0.1:8080/v1)"
        )
    if r.status_code >= 400:
        raise AssistantError(f"answered HTTP {r.status_code} for {url}; see the server's log, or fix llm.base_url")


def _check_port(cfg: config.Config) -> None:
    """The server can listen on server.host:server.port. AssistantError naming the fix otherwise."""
    if cfg.server.enabled and cfg.server.port:
        _check_bind(cfg.server.host, cfg.server.port, "server", "server.port", "(another `assistant run`?)")


def _daemon_answers(cfg: config.Config) -> bool:
    """Whether the assistant daemon of this config answers on its port (`assistant ctl status` succeeds)."""
    from assistant.server import ctl

    try:
        return ctl.run(cfg.server, ["status"], out=lambda _: None) == 0
    except AssistantError:
        return False


def _check_wyoming_ports(cfg: config.Config, handle: bool = True) -> None:
    """The Wyoming services can listen on their ports (the handle port only beside the daemon, `handle`)."""
    w = cfg.wyoming
    for kind, port in (("asr", w.asr_port), ("tts", w.tts_port), ("handle", w.handle_port if handle else 0)):
        if port:
            who = "(another `assistant run` or `assistant wyoming`?)"
            _check_bind(w.host, port, f"wyoming {kind}", f"wyoming.{kind}_port", who)


def _check_bind(host: str, port: int, what: str, port_key: str, who: str) -> None:
    """`what` ("server", "wyoming asr") can listen on host:port, binding as asyncio's servers do (SO_REUSEADDR, so
    a port that only has connections closing from the last run counts as free); before any model loads, so a
    second daemon fails at once, not after warm-up. AssistantError naming the config keys otherwise."""
    section = port_key.split(".")[0]
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise AssistantError(
            f"{section}.host {host!r} is not an address of this machine ({e.strerror}); fix {section}.host"
        ) from e
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise AssistantError(
                    f"{what} port {host}:{port} is not free ({e.strerror}); stop what uses it {who} or set {port_key}"
                ) from e
            raise AssistantError(
                f"cannot listen on {host}:{port} ({e.strerror}); check {section}.host and {port_key}"
            ) from e


def _check_writable(path: Any, holds: str) -> None:
    """The nearest existing folder of `path` is writable (it or its parents are created on first use)."""
    probe = path if path.exists() else path.parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise AssistantError(f"{probe} is not writable ({holds} go there); fix its permissions")


def _check_config_dir() -> None:
    _check_writable(config.user_config_path().parent, "the config and the server token")


def _check_cache_dir() -> None:
    from assistant import paths

    _check_writable(paths.cache_dir(), "cached voice prompts")


MIC_CHECK_S = 0.6  # long enough for a device's first blocks, short enough for a quick doctor run


async def _check_mic_signal(audio: config.AudioConfig) -> None:
    """Open the microphone briefly: a device that delivers only exact zeros is muted or not permitted."""
    import numpy as np

    from assistant.audio.capture import Capture

    peak = 0
    async with Capture(audio) as capture:
        while capture.samples_read < MIC_CHECK_S * 16_000:
            peak = max(peak, int(np.abs((await capture.read()).samples.astype(np.int32)).max(initial=0)))
    if peak == 0:
        hint = (
            "allow your terminal (or the service) in System Settings > Privacy & Security > Microphone"
            if sys.platform == "darwin"
            else "check that it is not muted (e.g. pactl list sources) and that the right device is chosen"
        )
        raise AudioDeviceError(f"the microphone delivers only digital silence; {hint}")


def cmd_history(args: argparse.Namespace, cfg: config.Config) -> int:
    import dataclasses

    from assistant.tools.setup import open_memory

    # what is on the disk, off the record too: "no stored turns" there hid turns stored before it was turned on
    memory = open_memory(dataclasses.replace(cfg.memory, off_the_record=False))
    if cfg.memory.off_the_record and args.action != "reset":
        print(
            "memory.off_the_record is on: the daemon neither loads nor adds to these turns; "
            "`assistant history reset` erases them",
            file=sys.stderr,
        )
    try:
        if args.action == "reset":
            n = memory.reset_history()
            print(f"erased {n} stored turn{'s' if n != 1 else ''} from {memory.path} (reminders kept)")
            _reset_running_daemon(cfg)
        else:
            turns = memory.turns()
            if not turns:  # stdout stays empty for scripts; the person at the terminal learns why
                print(f"no stored turns in {memory.path}", file=sys.stderr)
            for turn in turns:
                for m in turn:
                    print(f"{m.role}: {m.content}" + "".join(f" [calls {c.name}]" for c in m.tool_calls))
    finally:
        memory.close()
    return 0


def _reset_running_daemon(cfg: config.Config) -> None:
    """A daemon running with this config forgets its conversation too (`history.reset` over the control channel):
    otherwise it would go on answering from what the user just erased."""
    from assistant.server import ctl

    if not cfg.server.enabled:
        return
    try:
        ctl.run(cfg.server, ["history.reset"], out=lambda _: None)
    except ctl.DaemonUnreachable:
        return  # none runs: the stored turns were all there was
    except AssistantError as e:
        print(f"the running daemon keeps its conversation until it restarts ({e})", file=sys.stderr)
        return
    print("and the running daemon's conversation too")


def cmd_doctor(args: argparse.Namespace, cfg: config.Config) -> int:
    from assistant.audio import devices

    checks = [Check("config", None)]
    checks += [_check(f"{what} {spec}", partial(_check_model, spec, what)) for what, spec in models_of(cfg)]
    checks.append(_check(f"voice {cfg.tts.voice}", partial(check_voice, cfg)))
    checks.append(_check("voice profiles", partial(_check_profiles, cfg)))
    checks.append(_check("tools and memory", partial(_check_tools, cfg)))
    mic = _check("microphone", lambda: devices.pick(cfg.audio.input_device, "input"))
    if mic.problem is None:
        checks += [mic, _check("microphone signal", lambda: asyncio.run(_check_mic_signal(cfg.audio)))]
    else:
        checks.append(_headless(cfg, mic, cfg.audio.input_device))
    speaker = _check("speaker", lambda: devices.pick(cfg.audio.output_device, "output"))
    checks.append(speaker if speaker.problem is None else _headless(cfg, speaker, cfg.audio.output_device))
    if cfg.llm.backend == "openai":
        checks.append(_check(f"LLM server {cfg.llm.base_url}", lambda: _check_llm_server(cfg.llm)))
    port = _check("server port", lambda: _check_port(cfg))
    running = port.problem is not None and _daemon_answers(cfg)
    # beside the service (its usual state) the ports are the running daemon's, which `run` checked at its start
    checks.append(Check("server port: the daemon of this config is running there", None) if running else port)
    if cfg.wyoming.enabled:
        wyoming = _check("wyoming ports", lambda: _check_wyoming_ports(cfg))
        held = running and wyoming.problem is not None
        checks.append(Check("wyoming ports: held by the running daemon", None) if held else wyoming)
    checks.append(_check("server settings", partial(check_server_settings, cfg)))
    checks.append(_check("config folder", _check_config_dir))
    checks.append(_check("cache folder", _check_cache_dir))
    print(f"config: {cfg.source}")
    for c in checks:
        print(f"  {'ok' if c.problem is None else 'FAIL':<4}  {c.name}" + (f": {c.problem}" if c.problem else ""))
    problems = [c for c in checks if c.problem]
    print(f"{len(problems)} problem(s)" if problems else "all checks passed")
    return 1 if problems else 0


# ---- parser ------------------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted both before and after the subcommand (after it, they only set what is given; its --set
    list is kept apart, since argparse would replace the one before the subcommand with it)."""

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
        dest="command_overrides" if suppress else "overrides",
        default=[],
        help="override one config key (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", default=default(False), help="show tracebacks and debug logs")
    parser.add_argument(
        "--log-json", action="store_true", default=default(False), help="log JSON lines instead of key=value"
    )


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser whose epilog may be made when its help is shown (from a module slow to import)."""

    epilog_of: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.epilog_of is not None:
            self.epilog = self.epilog_of()
        return super().format_help()


def _ctl_commands() -> str:
    from assistant.server.ctl import USAGE

    return f"{USAGE[0].upper()}{USAGE[1:]}; TEXT `-` reads stdin; see docs/protocol.md for what each does."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistant", description="A local real-time voice assistant on MLX.")
    parser.add_argument("--version", action="version", version=f"assistant {__version__}")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, fn: Callable[..., int], help: str) -> _Parser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, suppress=True)
        p.set_defaults(fn=fn)
        return p

    add("run", cmd_run, "run the voice assistant daemon")
    add("devices", cmd_devices, "list audio devices (index, name, channels, default rate; defaults marked)")
    p = add("pull", cmd_pull, "download every model the config names into the Hugging Face cache")
    p.add_argument("--verify", action="store_true", help="re-check the cached files against the hub's hashes")
    p = add("say", cmd_say, "speak TEXT through the speaker, or write it to an audio file")
    p.add_argument("text", metavar="TEXT", help="what to say (`-` reads it from stdin)")
    p.add_argument("--voice", help="voice profile name (default: tts.voice)")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write a 24 kHz file instead of playing; the extension picks the format (.wav, .flac, .ogg, .mp3); "
        "`-` writes WAV to stdout",
    )
    add("voices", cmd_voices, "list the voice profiles")
    p = add("transcribe", cmd_transcribe, "print the transcript of an audio file")
    what = "an audio file (WAV, FLAC, OGG, MP3, ...; any rate from 8 kHz); `-` for stdin"
    p.add_argument("file", metavar="FILE", help=what)
    p.add_argument("--partials", action="store_true", help="show partial transcripts as they evolve")
    p = add("chat", cmd_chat, "a text chat with the LLM (a REPL over the daemon's engine)")
    p.add_argument("--no-stream", action="store_true", help="print each answer when it is complete")
    p = add("ctl", cmd_ctl, "send a command to a running daemon, or tail its events")
    p.epilog_of = _ctl_commands
    p.add_argument("words", nargs="*", metavar="WORD", help="a command, e.g. `status`, `say hello`, `events`")
    p.add_argument(
        "--max-events", type=_count, default=0, metavar="N", help="with `events`: exit after N events (0: never)"
    )
    p = add("history", cmd_history, "show or erase the conversation history kept across restarts")
    p.add_argument(
        "action",
        nargs="?",
        default="show",
        choices=("show", "reset"),
        help="show (the default): print it; reset: erase it",
    )
    add("wyoming", cmd_wyoming, "serve our STT and TTS to Home Assistant over Wyoming (without the voice loop)")
    add("doctor", cmd_doctor, "check devices, cached models, the server port and permissions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    compute = sys.modules.get("assistant.compute")
    audio = sys.modules.get("assistant.audio.devices")
    if audio is not None:
        audio.wait_closed(AUDIO_CLOSE_S)  # the streams' closes run on threads of their own: let them finish
    if argv is None and ((compute is not None and compute.Compute.started) or audio is not None):
        # MLX used from a worker thread can abort in its C++ destructors at interpreter exit ("terminate called
        # without an active exception", ml-explore/mlx#3126), and sounddevice's exit handler (Pa_Terminate) can
        # hang on PulseAudio after the work is done (seen in the test room, on every commit tried). Everything is
        # closed by now: flush and leave.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


ERROR_CHARS = 480  # an error line shows its start and its fix, not the hundreds of names a library may list


def one_line(message: str) -> str:
    """`message` on one line; a long one keeps its start (the problem) and its end (the fix)."""
    text = " ".join(message.split())
    if len(text) <= ERROR_CHARS:
        return text
    return f"{text[: ERROR_CHARS * 2 // 3]} ... {text[-ERROR_CHARS // 3 :]}"


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # show every command, not argparse's `the following arguments are required: COMMAND`
        parser.print_help(sys.stderr)
        return 2
    debug, as_json = bool(args.debug), bool(args.log_json)
    try:
        cfg = config.load(args.config, [*args.overrides, *args.command_overrides])
        as_json = as_json or cfg.logging.json
        logs.setup("debug" if debug else cfg.logging.level, as_json=as_json)
        return int(args.fn(args, cfg))
    except AssistantError as e:
        if debug:
            log.exception("failed")
        line = f"assistant: error: {one_line(str(e))}"
        if as_json:  # `run --log-json | jq` stopped at this plain line, the one that says why the daemon stopped
            line = logs.JsonFormatter().format(log.makeRecord(log.name, logging.ERROR, "", 0, line, (), None))
        print(line, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout's reader went away (`assistant history | head`): end quietly, as `head` means it; stdout points at
        # /dev/null so the exit-time flush cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
