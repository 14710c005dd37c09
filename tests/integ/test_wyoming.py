"""Our Wyoming services driven by the wyoming package's own client over TCP, with the tiny STT and TTS models."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import wave
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from assistant import cli, wyoming
from assistant.compute import Compute, Priority
from assistant.config import Config
from assistant.settings import speakable
from assistant.text import ClauseChunker
from assistant.wyoming import HEADER_LIMIT, SpeechEngines, WyomingServices
from tests.llm.servers import free_port
from tests.tiny_engines import tiny_config

READ_S = 120.0  # one event, on a loaded 2-core machine where every model step shares one thread
TEXT = "Hello, how are you today? I am fine, thank you."


class Rig:
    """The tiny config, one compute thread, and the engines loaded on it (shared by the module's tests)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg.replace({"wyoming.asr_port": free_port(), "wyoming.tts_port": free_port()})
        self.compute = Compute("mlx-wyoming-test")
        self.engines: SpeechEngines = self.compute.submit(cli.build_speech_engines, self.cfg).result()

    def serve(self, body: Callable[[WyomingServices], Awaitable[Any]], engines: SpeechEngines | None = None) -> Any:
        """Run `body(services)` against freshly bound services on a new event loop."""

        async def main() -> Any:
            async with WyomingServices(self.cfg, engines or self.engines, self.compute) as services:
                return await body(services)

        return asyncio.run(main())


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    the_rig = Rig(tiny_config(tmp_path_factory.mktemp("tiny")))
    try:
        yield the_rig
    finally:
        the_rig.compute.close()


async def read(client: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(client.read_event(), READ_S)
    assert event is not None, "the server closed the connection"
    return event


async def read_until(client: AsyncTcpClient, last: str) -> list[Event]:
    events = [await read(client)]
    while events[-1].type != last:
        assert events[-1].type != "error", Error.from_event(events[-1]).text
        events.append(await read(client))
    return events


async def ended(client: AsyncTcpClient) -> list[Event]:
    """Events until the server ends the connection (None), within READ_S each."""
    got: list[Event] = []
    while (event := await asyncio.wait_for(client.read_event(), READ_S)) is not None:
        got.append(event)
    return got


def pcm(x: np.ndarray, width: int, channels: int) -> bytes:
    """Little-endian PCM of float `x` (the same samples on every channel)."""
    x = np.repeat(np.clip(x, -1, 1), channels)
    if width == 1:
        return (np.round(x * 127) + 128).astype(np.uint8).tobytes()
    if width == 2:
        return (x * 32767).astype("<i2").tobytes()
    v = (x * (2**23 - 1)).astype("<i4")
    if width == 3:
        return v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return (x * (2**31 - 1)).astype("<i4").tobytes()


def speech(rate: int) -> np.ndarray:
    from assistant.audio.format import resample
    from tools.stt_ref import tiny

    return resample(tiny.audio(), 16000, rate)


def test_describe_lists_models_languages_and_voices(rig: Rig) -> None:
    """describe answers info with our STT model and its languages, and every voice profile, streaming on."""

    async def body(s: WyomingServices) -> tuple[Info, Info]:
        infos = []
        for port in (s.asr_port, s.tts_port):
            async with AsyncTcpClient("127.0.0.1", port) as c:
                await c.write_event(Describe().event())
                infos.append(Info.from_event(await read(c)))
        return infos[0], infos[1]

    asr, tts = rig.serve(body)
    (program,) = asr.asr
    assert program.supports_transcript_streaming
    assert program.models[0].name == rig.cfg.stt.model_id and "en" in program.models[0].languages
    (voices,) = tts.tts
    assert voices.supports_synthesize_streaming
    assert sorted(v.name for v in voices.voices) == speakable(rig.engines.tts)  # those it can speak
    assert all(v.languages for v in voices.voices)


@pytest.mark.parametrize(("rate", "width", "channels"), [(16000, 2, 1), (44100, 2, 2), (48000, 3, 1), (22050, 4, 1)])
def test_transcribe_matches_the_cli(
    rig: Rig, rate: int, width: int, channels: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Audio at any rate, width and channel count gives the transcript `assistant transcribe` prints for it."""
    raw = pcm(speech(rate), width, channels)
    frame = width * channels

    async def body(s: WyomingServices) -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", s.asr_port) as c:
            await c.write_event(Transcribe(language="en").event())
            await c.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
            step = 1024 * frame
            for i in range(0, len(raw), step):
                await c.write_event(
                    AudioChunk(rate=rate, width=width, channels=channels, audio=raw[i : i + step]).event()
                )
            await c.write_event(AudioStop().event())
            return await read_until(c, "transcript-stop")

    events = rig.serve(body)
    final = next(Transcript.from_event(e) for e in events if e.type == "transcript")
    path = tmp_path / "in.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    capsys.readouterr()
    assert cli.main(["--set", f"stt.model={rig.cfg.stt.model}", "transcribe", str(path)]) == 0
    want = capsys.readouterr().out.strip()
    assert want and final.text == want


def test_transcript_streams_partials_while_audio_arrives(rig: Rig) -> None:
    """transcript-start and transcript-chunk arrive before audio-stop is sent; the chunks lead into the final text."""
    raw = pcm(speech(16000), 2, 1)

    async def body(s: WyomingServices) -> tuple[list[Event], list[Event]]:
        async with AsyncTcpClient("127.0.0.1", s.asr_port) as c:
            await c.write_event(Transcribe().event())
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            for i in range(0, len(raw), 3200):  # 100 ms chunks
                await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=raw[i : i + 3200]).event())
            early = [await read(c), await read(c)]  # before audio-stop: the stream of partials has begun
            await c.write_event(AudioStop().event())
            return early, await read_until(c, "transcript-stop")

    early, rest = rig.serve(body)
    assert TranscriptStart.is_type(early[0].type) and TranscriptChunk.is_type(early[1].type)
    chunks = "".join(TranscriptChunk.from_event(e).text for e in early + rest if e.type == "transcript-chunk")
    final = next(Transcript.from_event(e).text for e in rest if e.type == "transcript")
    assert final and final.startswith(chunks) and chunks
    assert TranscriptStop.is_type(rest[-1].type)


def audio_of(events: list[Event]) -> np.ndarray:
    types = [e.type for e in events]
    assert types[0] == "audio-start" and "audio-stop" in types
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    raw = b"".join(AudioChunk.from_event(e).audio for e in events if e.type == "audio-chunk")
    return np.frombuffer(raw, "<i2")


def test_synthesize_matches_say(rig: Rig, tmp_path: Path) -> None:
    """synthesize answers audio-start/-chunk/-stop with the audio `assistant say --out` writes (to the last bit)."""

    async def body(s: WyomingServices) -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:
            await c.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(name="vivian")).event())
            return await read_until(c, "audio-stop")

    got = audio_of(rig.serve(body))
    out = tmp_path / "say.wav"
    args = [f"tts.{k}={v}" for k, v in (("model", rig.cfg.tts.model), ("temperature", 0), ("max_frames", 60))]
    args += ["tts.subtalker_temperature=0"]
    assert (
        cli.main([*(a for kv in args for a in ("--set", kv)), "say", TEXT, "--voice", "vivian", "--out", str(out)]) == 0
    )
    with wave.open(str(out), "rb") as w:
        want = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    # The WAV file differs only by quantisation (soundfile: x 32768, truncated; audio.format: x 32767, rounded).
    assert len(got) == len(want) > 0
    assert np.abs(got / 32767.0 - want / 32768.0).max() <= 2.0 / 32767
    # Bit-exact against the float audio of the function `assistant say` speaks with.
    from assistant.audio.format import float32_to_int16
    from assistant.text import sentences

    tts = rig.engines.tts
    say_audio = rig.compute.submit(
        lambda: np.concatenate(list(cli._speak(tts, tts.voice("vivian"), sentences(TEXT), cli.SpeechStats())))
    ).result()
    assert np.array_equal(got, float32_to_int16(say_audio))


def test_streaming_synthesis_speaks_before_the_text_is_complete(rig: Rig) -> None:
    """synthesize-start/-chunk: audio-start and audio arrive before synthesize-stop; it equals the in-process stream."""
    pieces = ["Hello, how are ", "you today? ", "I am fine, ", "thank you."]

    async def body(s: WyomingServices) -> tuple[list[Event], list[Event]]:
        async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:
            await c.write_event(SynthesizeStart(voice=SynthesizeVoice(name="vivian")).event())
            await c.write_event(SynthesizeChunk(text=pieces[0]).event())
            await c.write_event(SynthesizeChunk(text=pieces[1]).event())
            early = [await read(c), await read(c)]  # audio before the rest of the text was even sent
            for p in pieces[2:]:
                await c.write_event(SynthesizeChunk(text=p).event())
            await c.write_event(Synthesize(text="".join(pieces)).event())  # for older servers: must be ignored
            await c.write_event(SynthesizeStop().event())
            return early, await read_until(c, "synthesize-stopped")

    early, rest = rig.serve(body)
    assert [e.type for e in early] == ["audio-start", "audio-chunk"]
    assert [e.type for e in rest[-2:]] == ["audio-stop", "synthesize-stopped"]
    got = audio_of(early + rest[:-1])
    tts = rig.engines.tts
    voice = rig.compute.submit(tts.voice, "vivian").result()
    chunker = ClauseChunker("stream")  # the daemon's incremental-text path, as the server uses it
    words = [w for p in pieces for w in chunker.push(p)] + chunker.flush()
    want = rig.compute.submit(lambda: np.concatenate(list(tts.stream_text(words, voice)))).result()
    assert len(got) > 0 and np.array_equal(got, (np.clip(want, -1, 1) * 32767).round().astype("<i2"))


HOSTILE = [
    ("asr", AudioStop().event(), "without audio-start"),
    ("asr", Event("no-such-event"), "unexpected event"),
    ("asr", AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0").event(), "before audio-start"),
    ("asr", AudioStart(rate=16000, width=5, channels=1).event(), "width 5"),
    ("asr", AudioStart(rate=0, width=2, channels=1).event(), "rate 0"),
    # 1000 Hz passed and was transcribed to nothing; 8 kHz is where speech begins (as `transcribe` and HTTP say)
    ("asr", AudioStart(rate=4000, width=2, channels=1).event(), "rate 4000 Hz is out of range (8000..192000)"),
    ("asr", Event("audio-start", {"rate": "fast"}), "integer rate"),
    ("tts", Synthesize(text="   ").event(), "empty"),
    ("tts", Synthesize(text="👍 🎉").event(), "no speakable words"),
    ("tts", Event("synthesize", {"text": 5}), "must be a string"),
    ("tts", Event("synthesize", {}), "malformed synthesize event: its data has no `text` field; add it"),
    ("tts", Synthesize(text="hi", voice=SynthesizeVoice(name="nobody")).event(), "unknown voice"),
    ("tts", Synthesize(text="x" * 5000).event(), "max_text_chars"),
    ("tts", SynthesizeChunk(text="hi").event(), "without synthesize-start"),
    ("tts", SynthesizeStop().event(), "without synthesize-start"),
]


def test_hostile_input_gets_error_events_and_the_server_keeps_serving(rig: Rig) -> None:
    """Each bad event or bad audio gets an error event; a failed request (its client waits for the result) then
    ends its connection, any other bad event leaves it serving; garbage ends one connection."""
    closing = ("audio-stop", "synthesize", "synthesize-stop")

    async def body(s: WyomingServices) -> list[str]:
        errors = []
        ports = {"asr": s.asr_port, "tts": s.tts_port}
        for kind, event, _ in HOSTILE:
            async with AsyncTcpClient("127.0.0.1", ports[kind]) as c:
                await c.write_event(event)
                reply = await read(c)
                assert reply.type == "error", (kind, event)
                errors.append(Error.from_event(reply).text)
                if event.type in closing:
                    assert await ended(c) == [], event
                else:
                    await c.write_event(Describe().event())
                    assert (await read(c)).type == "info", event
        # Odd byte counts, a format change mid-stream and too much audio, in one request each.
        fmt16, fmt8 = {"rate": 16000, "width": 2, "channels": 1}, {"rate": 8000, "width": 1, "channels": 1}
        too_long = bytes(int(rig.cfg.wyoming.max_audio_s * 8000) + 2)
        for start, chunk in ((fmt16, {**fmt16, "audio": b"\0\0\0"}), (fmt16, {**fmt8, "audio": b"\0"})):
            async with AsyncTcpClient("127.0.0.1", s.asr_port) as asr:
                await asr.write_event(AudioStart(**start).event())
                await asr.write_event(AudioChunk(**chunk).event())
                errors.append(Error.from_event(await read(asr)).text)
                await asr.write_event(AudioStop().event())
                assert await ended(asr) == []
        async with AsyncTcpClient("127.0.0.1", s.asr_port) as asr:
            await asr.write_event(AudioStart(**fmt8).event())
            await asr.write_event(AudioChunk(**fmt8, audio=too_long).event())
            errors.append(Error.from_event(await read(asr)).text)
        # A frame that is not JSON ends only its own connection.
        reader, writer = await asyncio.open_connection("127.0.0.1", s.tts_port)
        writer.write(b"\xff\xfe not json at all\n")
        await writer.drain()
        refused = await asyncio.wait_for(async_read_event(reader), READ_S)
        assert refused is not None and Error.from_event(refused).code == "bad-event"
        assert await asyncio.wait_for(reader.read(), READ_S) == b""
        writer.close()
        async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:
            await c.write_event(Synthesize(text="Hello.").event())
            assert (await read_until(c, "audio-stop"))[-1].type == "audio-stop"
        return errors

    errors = rig.serve(body)
    for (_, _, want), got in zip(HOSTILE, errors, strict=False):
        assert want in got, (want, got)
    assert "not whole frames" in errors[-3] and "format changed" in errors[-2] and "max_audio_s" in errors[-1]
    assert all("\n" not in e for e in errors)


@pytest.mark.parametrize("field", ["payload_length", "data_length"])
def test_a_frame_larger_than_any_request_is_refused_before_it_is_read(rig: Rig, field: str) -> None:
    """A frame header declaring a payload or data of a gigabyte gets an error event at once and its connection
    ends, unread (the service buffered whatever the client sent towards it: 600 MB sent, +650 MB of memory); the
    service then still serves."""

    async def body(s: WyomingServices) -> tuple[dict[str, Any], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.asr_port)
        header = {"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, field: 10**9}
        writer.write(json.dumps(header).encode() + b"\n" + bytes(4096))
        await writer.drain()
        head = json.loads(await asyncio.wait_for(reader.readline(), READ_S))
        data = json.loads(await asyncio.wait_for(reader.readexactly(head["data_length"]), READ_S))
        rest = await asyncio.wait_for(reader.read(), READ_S)
        writer.close()
        async with AsyncTcpClient("127.0.0.1", s.asr_port) as c:
            await c.write_event(Describe().event())
            assert (await read(c)).type == "info"
        return {"type": head["type"], **data}, rest

    error, rest = rig.serve(body)
    assert error["type"] == "error" and error["code"] == "frame-too-large"
    assert error["text"].startswith(f"a frame of {10**9} bytes is over the ")
    assert "send the audio in smaller chunks" in error["text"]
    assert rest == b""  # the connection ended


@pytest.mark.parametrize(
    ("frame", "want"),
    [
        (b"[1, 2]\n", 'an event header must be a JSON object with a string "type"'),
        (b'{"data": {}}\n', 'an event header must be a JSON object with a string "type"'),
        (b'{"type": "describe", "data_length": "12"}\n', '`data_length` must be a whole number of bytes, got "12"'),
        (b'{"type": "synthesize", "data": [1]}\n', "`data` must be a JSON object"),
        (b'{"type": "synthesize", "data_length": 3}\n[1]', "an event's data part must be a JSON object"),
    ],
)  # fmt: skip
def test_a_malformed_event_header_is_refused_without_a_traceback(
    rig: Rig, frame: bytes, want: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame whose header is JSON of the wrong shape (a list, no type, a string length, non-object data) gets an
    error event naming the problem and its connection ends, with no traceback in the log (the wyoming package
    raised AttributeError/TypeError/KeyError: "Unhandled exception in client_connected_cb"); the service serves."""

    with caplog.at_level(logging.WARNING):
        refused, rest = rig.serve(lambda s: _refused_then_served(s, frame))
    assert refused is not None and refused.type == "error"
    assert Error.from_event(refused).text.startswith(want) and Error.from_event(refused).code == "bad-event"
    assert rest == b""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def _refused_then_served(s: WyomingServices, frame: bytes) -> tuple[Event | None, bytes]:
    """Send raw `frame` to the TTS service: the event it answers and what follows until the connection ends; a new
    connection is then still served."""
    reader, writer = await asyncio.open_connection("127.0.0.1", s.tts_port)
    writer.write(frame)
    await writer.drain()
    refused = await asyncio.wait_for(async_read_event(reader), READ_S)
    rest = await asyncio.wait_for(reader.read(), READ_S)
    writer.close()
    async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:
        await c.write_event(Describe().event())
        assert (await read(c)).type == "info"
    return refused, rest


@pytest.mark.parametrize("newline", [b"\n", b""])
def test_a_header_line_over_the_limit_gets_an_error_naming_it(rig: Rig, newline: bytes) -> None:
    """An event header line longer than the 64 KiB a header may take (ended or not) gets an error event naming the
    limit before its connection ends (the stream reader's ValueError closed it with no answer); the service serves."""

    frame = json.dumps({"type": "synthesize", "data": {"text": "x" * (HEADER_LIMIT + 10)}}).encode() + newline
    refused, rest = rig.serve(lambda s: _refused_then_served(s, frame))
    assert refused is not None and refused.type == "error"
    error = Error.from_event(refused)
    assert error.code == "header-too-large" and f"over the {HEADER_LIMIT} bytes" in error.text
    assert "data part" in error.text  # the fix: long values go in the data part, which data_length announces
    assert rest == b""


def test_a_lone_surrogate_in_the_text_is_a_bad_request(rig: Rig) -> None:
    """A synthesize event whose text holds a lone surrogate escape gets an error naming it, then its connection
    ends as for any failed request (it answered with the tokenizer's `TypeError: TextInputSequence must be str`)."""

    async def body(s: WyomingServices) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.tts_port)
        writer.write(b'{"type": "synthesize", "data": {"text": "caf\\ud800"}}\n')
        await writer.drain()
        head = json.loads(await asyncio.wait_for(reader.readline(), READ_S))
        data = await asyncio.wait_for(reader.readexactly(head["data_length"]), READ_S)
        rest = await asyncio.wait_for(reader.read(), READ_S)
        writer.close()
        return data, rest

    data, rest = rig.serve(body)
    assert json.loads(data) == {
        "text": "text is not valid Unicode (a lone surrogate at character 3); send UTF-8 text",
        "code": "bad-request",
    }
    assert rest == b""


def test_two_clients_are_served_in_turn(rig: Rig) -> None:
    """Two clients synthesizing at once both hear their first audio before either one's audio ends."""

    async def one(s: WyomingServices, log: list[tuple[int, str]], n: int) -> None:
        async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:
            await c.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(name="vivian")).event())
            while True:
                e = await read(c)
                log.append((n, e.type))
                if e.type in ("audio-stop", "error"):
                    return

    async def body(s: WyomingServices) -> list[tuple[int, str]]:
        log: list[tuple[int, str]] = []
        await asyncio.gather(one(s, log, 0), one(s, log, 1))
        return log

    log = rig.serve(body)
    first_audio = {n: log.index((n, "audio-chunk")) for n in (0, 1)}
    first_stop = min(log.index((n, "audio-stop")) for n in (0, 1))
    assert max(first_audio.values()) < first_stop, log


def test_the_live_conversation_goes_first(rig: Rig) -> None:
    """A conversation job queued after a Wyoming job still runs before it (Wyoming work is BACKGROUND)."""
    order: list[str] = []
    gate = threading.Event()
    tts = rig.engines.tts

    class Recording:
        """The TTS, recording when a Wyoming request reaches it."""

        sample_rate = tts.sample_rate

        def voice(self, name: str | None) -> Any:
            order.append("wyoming")
            return tts.voice(name)

        def __getattr__(self, name: str) -> Any:
            return getattr(tts, name)

    async def body(s: WyomingServices) -> None:
        blocker = rig.compute.submit(gate.wait)  # the compute thread is busy
        async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:
            await c.write_event(Synthesize(text="Hello.").event())
            await observed.queued.wait()  # the Wyoming job is queued behind the blocker
            live = rig.compute.submit(order.append, "conversation", priority=Priority.REPLY)
            gate.set()
            await read_until(c, "audio-stop")
        blocker.result()
        live.result()

    class Observed:
        """The compute thread, telling when a Wyoming job has been queued."""

        def __init__(self) -> None:
            self.queued = asyncio.Event()

        async def run(self, fn: Any, *args: Any, priority: Priority = Priority.REPLY) -> Any:
            fut = rig.compute.submit(fn, *args, priority=priority)
            self.queued.set()
            return await asyncio.wrap_future(fut)

    async def main() -> None:
        nonlocal observed
        observed = Observed()
        engines = SpeechEngines(rig.engines.new_transcriber, Recording())
        async with WyomingServices(rig.cfg, engines, observed) as services:  # type: ignore[arg-type]
            await body(services)

    observed: Any = None
    asyncio.run(main())
    assert order == ["conversation", "wyoming"]


def test_wyoming_command_serves_until_sigterm(rig: Rig, tmp_path: Path) -> None:
    """`assistant wyoming` loads STT and TTS, serves describe on both ports, and exits 0 on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    ports = {"asr": free_port(), "tts": free_port()}
    sets = {
        "stt.model": rig.cfg.stt.model,
        "tts.model": rig.cfg.tts.model,
        "tts.voice": "vivian",
        "wyoming.asr_port": ports["asr"],
        "wyoming.tts_port": ports["tts"],
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "ASSISTANT_CONFIG": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant", *args, "wyoming"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once both ports are bound
        assert f":{ports['asr']}" in line and f":{ports['tts']}" in line, line

        async def describe() -> list[str]:
            kinds = []
            for port in ports.values():
                async with AsyncTcpClient("127.0.0.1", port) as c:
                    await c.write_event(Describe().event())
                    info = Info.from_event(await read(c))
                    kinds += [p.name for p in info.asr + info.tts]
            return kinds

        assert asyncio.run(describe()) == ["assistant-stt", "assistant-tts"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wyoming_command_says_what_it_serves(rig: Rig, tmp_path: Path) -> None:
    """`assistant wyoming` with the asr port off and a handle port set starts the tts service, prints the asr
    service as off (it printed `tcp://host:None`) and warns that the handle port is not served (it was ignored
    in silence); with both speech ports off it fails at once naming them (it served nothing, for ever)."""
    import os
    import signal
    import subprocess
    import sys

    tts_port = free_port()
    sets = {"stt.model": rig.cfg.stt.model, "tts.model": rig.cfg.tts.model, "tts.voice": "vivian"}
    sets |= {"wyoming.asr_port": 0, "wyoming.tts_port": tts_port, "wyoming.handle_port": 10600}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "ASSISTANT_CONFIG": "", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "assistant", *args, "wyoming"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the ports are bound
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert line.strip() == f"wyoming: asr off, tts on tcp://{rig.cfg.wyoming.host}:{tts_port}"
    assert "wyoming.handle_port = 10600 is not served: `assistant wyoming` loads no LLM" in err
    off = subprocess.run([*cmd, "--set", "wyoming.tts_port=0"], capture_output=True, text=True, env=env, timeout=60)
    assert off.returncode == 78
    assert off.stderr.strip() == (
        "assistant: error: wyoming.asr_port and wyoming.tts_port are both 0 (off): `assistant wyoming` has nothing "
        "to serve; set one (10300 and 10200 are the standard ports)"
    )


def handle_turn(rig: Rig, engines: SpeechEngines, texts: list[str]) -> list[list[Event]]:
    """Send each text as a transcript on one handle connection; the events answering each."""
    cfg = rig.cfg.replace({"wyoming.handle_port": free_port()})

    async def main() -> list[list[Event]]:
        async with WyomingServices(cfg, engines, rig.compute) as s:
            out = []
            async with AsyncTcpClient("127.0.0.1", s.handle_port) as c:
                await c.write_event(Describe().event())
                info = Info.from_event(await read(c))
                assert info.handle[0].name == "assistant-llm" and info.handle[0].supports_handled_streaming
                for text in texts:
                    await c.write_event(Transcript(text=text).event())
                    events = [await read(c)]
                    while events[-1].type not in ("handled", "not-handled", "error"):
                        events.append(await read(c))
                    out.append(events)
            return out

    return asyncio.run(main())


def test_handle_answers_with_the_local_llm(rig: Rig) -> None:
    """A transcript on the handle service streams handled-chunks whose text equals the in-process Chat's answer."""
    from assistant.llm import Chat
    from assistant.wyoming import speech_engines

    def load() -> tuple[Any, Any]:
        tr = rig.engines.new_transcriber()
        chat = Chat.load(rig.cfg.llm)
        return speech_engines(tr, rig.engines.tts, chat), Chat(chat.model, chat.tokenizer, chat.cfg)

    engines, reference = rig.compute.submit(load).result()
    questions = ["Hello, how are you today?", "Tell me a short story."]
    turns = handle_turn(rig, engines, questions)

    def expected() -> list[str]:
        out = []
        for q in questions:
            out.append("".join(reference.respond(q)).strip())
            reference.finish_turn(None)
        return out

    want = rig.compute.submit(expected).result()
    for events, answer in zip(turns, want, strict=True):
        types = [e.type for e in events]
        assert types[0] == "handled-start" and types[-2:] == ["handled-stop", "handled"], types
        chunks = "".join(e.data["text"] for e in events if e.type == "handled-chunk")
        assert chunks.strip() == events[-1].data["text"] == answer and answer


def test_handle_reports_a_failed_llm_server_and_recovers(rig: Rig) -> None:
    """With the remote backend, a server error answers not-handled with the reason; the next transcript is handled."""
    from http.server import BaseHTTPRequestHandler

    from assistant.llm_remote import RemoteChat
    from tests.llm.servers import Script, ScriptedServer, sse, text_chunk

    replies = iter(
        [lambda h: h.send_response(500) or h.end_headers(), lambda h: sse(h, [text_chunk("Hi "), text_chunk("there.")])]
    )

    def respond(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        next(replies)(h)

    with ScriptedServer(Script(respond)) as srv:
        chat = RemoteChat(rig.cfg.replace({"llm.backend": "openai", "llm.base_url": srv.base_url}).llm)
        engines = SpeechEngines(rig.engines.new_transcriber, rig.engines.tts, chat.new_conversation)
        failed, ok = handle_turn(rig, engines, ["hello", "hello again"])
    assert failed[-1].type == "not-handled" and "HTTP 500" in failed[-1].data["text"]
    assert [e.type for e in ok] == ["handled-start", "handled-chunk", "handled-chunk", "handled-stop", "handled"]
    assert ok[-1].data["text"] == "Hi there."


def test_a_failed_request_ends_its_connection_as_home_assistant_needs(rig: Rig) -> None:
    """Home Assistant ignores `error` events and waits for the transcript, audio-stop or synthesize-stopped, or for
    the connection to end: a request that fails gets its error once and then the connection ends (HA waited
    forever), for transcription with too much audio, a plain synthesize with an unknown voice, and a streaming
    synthesis (start, chunk, the compatibility synthesize, stop) with an unknown voice; a new connection serves."""

    async def body(s: WyomingServices) -> tuple[list[Event], list[Event], list[Event], list[str]]:
        async with AsyncTcpClient("127.0.0.1", s.asr_port) as c:  # HA's STT flow
            fmt = {"rate": 8000, "width": 1, "channels": 1}
            await c.write_event(Transcribe(language="en").event())
            await c.write_event(AudioStart(**fmt).event())
            await c.write_event(AudioChunk(**fmt, audio=bytes(int(rig.cfg.wyoming.max_audio_s * 8000) + 2)).event())
            await c.write_event(AudioChunk(**fmt, audio=bytes(800)).event())
            await c.write_event(AudioStop().event())
            asr = await ended(c)
        async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:  # HA's plain TTS flow
            await c.write_event(Synthesize(text="Hello.", voice=SynthesizeVoice(name="nobody")).event())
            plain = await ended(c)
        async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:  # HA's streaming TTS flow
            voice = SynthesizeVoice(name="nobody")
            await c.write_event(SynthesizeStart(voice=voice).event())
            await c.write_event(SynthesizeChunk(text="Hello there.").event())
            await c.write_event(Synthesize(text="Hello there.", voice=voice).event())
            await c.write_event(SynthesizeStop().event())
            streaming = await ended(c)
        async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:
            await c.write_event(Synthesize(text="Hello.").event())
            after = [e.type for e in await read_until(c, "audio-stop")]
        return asr, plain, streaming, after

    asr, plain, streaming, after = rig.serve(body)
    for events, want in ((asr, "max_audio_s"), (plain, "unknown voice"), (streaming, "unknown voice")):
        assert [e.type for e in events] == ["error"], [(e.type, e.data) for e in events]
        assert want in Error.from_event(events[0]).text
    assert after[0] == "audio-start" and after[-1] == "audio-stop"


def test_a_client_gone_mid_synthesis_ends_quietly(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """A client that hangs up while its speech streams (Home Assistant stops a reply) ends its handler without an
    error traceback in the daemon log (writing to it failed and was logged as `synthesis failed`), plain and
    streaming, and the service goes on serving."""

    async def body(s: WyomingServices) -> list[str]:
        plain, streaming = [Synthesize(text=TEXT * 3)], [SynthesizeStart(), SynthesizeChunk(text=TEXT * 3)]
        for request in (plain, streaming):
            reader, writer = await asyncio.open_connection("127.0.0.1", s.tts_port)
            for event in request:
                await async_write_event(event.event(), writer)
            while (got := await asyncio.wait_for(async_read_event(reader), READ_S)) and got.type != "audio-chunk":
                pass
            writer.transport.abort()  # gone, as a process that exits
            if s._handlers:  # the server's handler of that connection ends by itself
                await asyncio.wait(set(s._handlers), timeout=READ_S)
            assert not s._handlers
        async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:
            await c.write_event(Synthesize(text="Hello.").event())
            return [e.type for e in await read_until(c, "audio-stop")]

    with caplog.at_level(logging.INFO, logger="assistant.wyoming"):
        after = rig.serve(body)
    assert after[-1] == "audio-stop"
    noisy = [r for r in caplog.records if r.name.startswith("assistant.wyoming") and r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_a_connection_that_goes_silent_is_closed_after_the_idle_time(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that sends nothing for IDLE_S (a client whose machine lost power or network), before or after
    a request or mid-frame, is closed and its handler ends; before, each stayed for the life of the daemon."""
    monkeypatch.setattr(wyoming, "IDLE_S", 0.5)

    async def body(s: WyomingServices) -> list[list[str]]:
        seen = []
        for port, first in (
            (s.tts_port, b""),
            (s.asr_port, None),
            (s.tts_port, b'{"type": "synthesize", "data_length": 20}\n{"te'),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if first is None:  # a request answered, then silence
                await async_write_event(Describe().event(), writer)
            else:
                writer.write(first)
            got = []
            while (event := await asyncio.wait_for(async_read_event(reader), READ_S)) is not None:
                got.append(event.type)
            seen.append(got)
            writer.close()
        if s._handlers:
            await asyncio.wait(set(s._handlers), timeout=READ_S)
        assert not s._handlers
        return seen

    assert rig.serve(body) == [[], ["info"], ["error"]]


def test_a_client_that_never_reads_its_speech_is_dropped(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that stays connected but reads none of its speech for SEND_TIMEOUT_S is dropped and the service goes
    on serving; its handler (and its utterance) waited on it for good before."""
    monkeypatch.setattr(wyoming, "SEND_TIMEOUT_S", 0.3)

    async def body(s: WyomingServices) -> list[str]:
        for listening in (sock for server in s._servers for sock in server.sockets):
            if listening.getsockname()[1] == s.tts_port:  # its connections inherit small kernel buffers
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once: the server's writes stall
        sock.connect(("127.0.0.1", s.tts_port))
        _, writer = await asyncio.open_connection(sock=sock)
        await async_write_event(Synthesize(text="Hello.").event(), writer)  # seconds of audio, never read
        for _ in range(100):  # until the server has a handler for it (a safety net, never a timing assertion)
            if s._handlers:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait(set(s._handlers), timeout=READ_S)
        assert not s._handlers
        writer.close()
        async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:
            await c.write_event(Describe().event())
            return [(await read(c)).type]

    assert rig.serve(body) == ["info"]


def test_requests_leave_nothing_in_mlx_buffer_cache(rig: Rig) -> None:
    """After each Wyoming request (its connection ended) and each one-shot HTTP speech or transcription, MLX's
    buffer cache is empty again, as after a reply of the voice loop: `assistant wyoming`, which has no voice loop,
    held what its largest request had allocated for good."""
    import mlx.core as mx

    from assistant.oneshot import OneShot

    def cached() -> Awaitable[float]:
        return rig.compute.run(mx.get_cache_memory, priority=Priority.BACKGROUND)  # after the clear queued before

    async def body(s: WyomingServices) -> list[float]:
        seen, audio = [], speech(16000)[:8000]
        async with AsyncTcpClient("127.0.0.1", s.asr_port) as c:
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm(audio, 2, 1)).event())
            await c.write_event(AudioStop().event())
            await read_until(c, "transcript")
            seen.append(await cached())  # the request is answered, its connection still open
        if s._handlers:
            await asyncio.wait(set(s._handlers), timeout=READ_S)
        seen.append(await cached())
        transcriber = await rig.compute.run(rig.engines.new_transcriber)
        oneshot = OneShot(
            rig.cfg, cast(Any, SimpleNamespace(tts=rig.engines.tts, transcriber=transcriber)), rig.compute
        )
        assert [len(c) async for c in oneshot.speak("Hello.", None)]
        seen.append(await cached())
        await oneshot.transcribe(audio)
        seen.append(await cached())
        return seen

    open_connection, *after = rig.serve(body)
    assert open_connection > 0 and after == [0, 0, 0]


def test_handle_refuses_a_transcript_over_max_text_chars(rig: Rig) -> None:
    """A handle transcript longer than wyoming.max_text_chars, or empty, gets not-handled naming the problem (Home
    Assistant's agent waits for handled or not-handled and ignores `error`, which it got) and never reaches the LLM
    (it went whole into the prompt: megabytes of text to prefill); the next transcript is handled."""
    from http.server import BaseHTTPRequestHandler

    from assistant.llm_remote import RemoteChat
    from tests.llm.servers import Script, ScriptedServer, sse, text_chunk

    asked: list[str] = []

    def respond(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        asked.append(body["messages"][-1]["content"])
        sse(h, [text_chunk("Hi.")])

    with ScriptedServer(Script(respond)) as srv:
        chat = RemoteChat(rig.cfg.replace({"llm.backend": "openai", "llm.base_url": srv.base_url}).llm)
        engines = SpeechEngines(rig.engines.new_transcriber, rig.engines.tts, chat.new_conversation)
        too_long, empty, ok = handle_turn(rig, engines, ["x" * (rig.cfg.wyoming.max_text_chars + 1), " ", "hello"])
    assert [e.type for e in too_long] == [e.type for e in empty] == ["not-handled"]
    assert too_long[0].data["text"] == (
        f"transcript longer than wyoming.max_text_chars = {rig.cfg.wyoming.max_text_chars}; send less"
    )
    assert empty[0].data["text"] == "transcript text is empty; send what the user said"
    assert ok[-1].type == "handled" and ok[-1].data["text"] == "Hi." and asked == ["hello"]


def test_handle_reports_a_model_failure_and_keeps_serving(rig: Rig) -> None:
    """An LLM that fails with an unexpected error ends its answer with handled-stop and not-handled naming it (Home
    Assistant waits for handled or not-handled and ignored the `error` it got), and the same connection answers the
    next transcript."""

    class Failing:
        def __init__(self) -> None:
            self.calls = 0

        def respond(self, text: str) -> Any:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("Metal ran out of memory")
            yield "Fine."

        def finish_turn(self, heard: str | None) -> None:
            pass

    chat = Failing()
    engines = SpeechEngines(rig.engines.new_transcriber, rig.engines.tts, lambda: chat)
    failed, ok = handle_turn(rig, engines, ["hello", "hello again"])
    assert [e.type for e in failed] == ["handled-start", "handled-stop", "not-handled"]
    assert failed[-1].data["text"] == "answering failed: RuntimeError: Metal ran out of memory"
    assert [e.type for e in ok] == ["handled-start", "handled-chunk", "handled-stop", "handled"]


def test_a_voice_error_names_the_voices_that_fit_and_no_server_path(rig: Rig) -> None:
    """An unknown voice and a voice the loaded model cannot speak get errors naming the voices (those that fit),
    without the server's voices folder path (it sent `voices in /path/on/the/server/voices: ...`)."""

    async def body(s: WyomingServices) -> list[str]:
        out = []
        for name in ("nobody", "clone"):  # a failed synthesize ends its connection
            async with AsyncTcpClient("127.0.0.1", s.tts_port) as c:
                await c.write_event(Synthesize(text="Hello.", voice=SynthesizeVoice(name=name)).event())
                out.append(Error.from_event(await read(c)).text)
        return out

    unknown, unfit = rig.serve(body)
    assert unknown.startswith("unknown voice 'nobody'; voices: ") and "vivian" in unknown and "/" not in unknown
    assert unfit.startswith("voice 'clone' (clone) does not fit the custom_voice model of tts.model; voices that do: ")


def test_a_client_gone_mid_answer_ends_quietly(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """A handle client that hangs up while its answer streams ends its handler without an error traceback in the
    daemon log (writing to it failed and was logged as `answering failed`), the turn is finished with what was
    said, and the service goes on serving."""

    class Long:
        def __init__(self) -> None:
            self.finished: list[str | None] = []

        def respond(self, text: str) -> Any:
            yield from ["Word. "] * 2000

        def finish_turn(self, heard: str | None) -> None:
            self.finished.append(heard)

    chat = Long()
    engines = SpeechEngines(rig.engines.new_transcriber, rig.engines.tts, lambda: chat)
    cfg = rig.cfg.replace({"wyoming.handle_port": free_port()})

    async def main() -> list[str]:
        async with WyomingServices(cfg, engines, rig.compute) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.handle_port)
            await async_write_event(Transcript(text="Tell me everything.").event(), writer)
            while (got := await asyncio.wait_for(async_read_event(reader), READ_S)) and got.type != "handled-chunk":
                pass
            writer.transport.abort()  # gone, as Home Assistant when the user stops the pipeline
            if s._handlers:
                await asyncio.wait(set(s._handlers), timeout=READ_S)
            assert not s._handlers
            async with AsyncTcpClient("127.0.0.1", s.handle_port) as c:
                await c.write_event(Describe().event())
                return [(await read(c)).type]

    with caplog.at_level(logging.INFO, logger="assistant.wyoming"):
        after = asyncio.run(main())
    assert after == ["info"]
    assert len(chat.finished) == 1 and chat.finished[0] is not None and chat.finished[0].startswith("Word.")
    noisy = [r for r in caplog.records if r.name.startswith("assistant.wyoming") and r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_handle_keeps_a_home_assistant_conversation_across_its_connections(rig: Rig) -> None:
    """Home Assistant sends each utterance over a new connection, naming its conversation in the transcript's
    context: the next utterance of that conversation is answered by the chat that heard the first (every utterance
    started a fresh chat, so a follow-up question had no context); another conversation, or none, has its own
    chat; beyond MAX_CONVERSATIONS the least recent is forgotten."""
    from assistant.wyoming import MAX_CONVERSATIONS

    class Recorder:
        def __init__(self) -> None:
            self.heard: list[str] = []

        def respond(self, text: str) -> Any:
            self.heard.append(text)
            yield f"turn {len(self.heard)}"

        def finish_turn(self, heard: str | None) -> None:
            pass

    engines = SpeechEngines(rig.engines.new_transcriber, rig.engines.tts, Recorder)
    cfg = rig.cfg.replace({"wyoming.handle_port": free_port()})

    async def main() -> list[str]:
        async with WyomingServices(cfg, engines, rig.compute) as s:

            async def utterance(text: str, conversation: str | None) -> str:
                context = {"conversation_id": conversation, "device_id": "kitchen"} if conversation else None
                async with AsyncTcpClient("127.0.0.1", s.handle_port) as c:  # one per utterance, as HA does
                    await c.write_event(Transcript(text=text, context=context, language="en").event())
                    return str((await read_until(c, "handled"))[-1].data["text"])

            said = [await utterance("Who wrote Hamlet?", "01HA"), await utterance("When?", "01HA")]
            said += [await utterance("Hi.", "01HB"), await utterance("Hi.", None), await utterance("Hi.", None)]
            for i in range(MAX_CONVERSATIONS - 1):  # 01HB and these fill the kept conversations: 01HA goes
                await utterance("Hi.", f"other{i}")
            said.append(await utterance("And then?", "01HA"))
            return said

    assert asyncio.run(main()) == ["turn 1", "turn 2", "turn 1", "turn 1", "turn 1", "turn 1"]


def test_two_connections_of_a_new_conversation_share_one_chat(rig: Rig) -> None:
    """Two utterances of one new Home Assistant conversation arriving together each make a chat while the other
    waits: both are answered in the first one kept, and the other chat is closed, not left open."""

    class Closable:
        made: ClassVar[list[Closable]] = []

        def __init__(self) -> None:
            self.closed = False
            Closable.made.append(self)

        def close(self) -> None:
            self.closed = True

    engines = SpeechEngines(rig.engines.new_transcriber, rig.engines.tts, Closable)

    async def main() -> tuple[Any, Any, list[bool]]:
        async with WyomingServices(rig.cfg, engines, rig.compute) as s:  # (its close closes the kept chats)
            a, b = await asyncio.gather(s.conversation("01HA", Closable), s.conversation("01HA", Closable))
            return a.chat, b.chat, [c.closed for c in Closable.made]

    first, second, closed = asyncio.run(main())
    assert first is second and len(Closable.made) == 2
    assert closed == [c is not first for c in Closable.made]
