"""Our STT and TTS as Wyoming services, so Home Assistant's Assist pipeline can use them (port 10300 asr, 10200 tts).

The `wyoming` package does the protocol (event framing, info/asr/tts/audio types, the per-connection handler
loop); this module maps its events onto our engines. Every model call runs on the daemon's one compute thread at
`Priority.BACKGROUND`, so the live conversation always goes first; each connection keeps at most one job in
flight and equal priorities run in submission order, so several clients are served in turn. A bad event or bad
audio gets an `error` event; a failed request then ends its connection at the event whose answer its client awaits
(Home Assistant ignores `error` and waits for the result or the end of the connection); a malformed frame (not
JSON) ends that connection only, since the byte stream cannot be resynchronised.

ASR: `transcribe` (optional) + `audio-start` + `audio-chunk`* + `audio-stop` -> `transcript-start` and
`transcript-chunk` (appended text) while the audio arrives, then `transcript` (the final text) and
`transcript-stop`. Audio may come at any rate, sample width and channel count; it is mixed to mono and resampled
to 16 kHz as it streams.

HANDLE (optional, `wyoming.handle_port`): our LLM as a conversation agent. `transcript` -> `handled-start`,
`handled-chunk`* as the answer streams, `handled-stop`, then `handled` with the whole answer (`not-handled` with the
reason when the LLM fails or the transcript is refused: Home Assistant waits for one of the two and ignores `error`).
A transcript's `context.conversation_id` (Home Assistant sends one, over a new connection per utterance) names its
conversation, kept across connections; without one, each connection is its own conversation.

TTS: `synthesize` -> `audio-start`, `audio-chunk`*, `audio-stop` (24 kHz, 16-bit mono), the text made speakable and
spoken sentence by sentence exactly as `assistant say` does. Streaming: `synthesize-start`, `synthesize-chunk`*,
`synthesize-stop` -> the chunks go through the daemon's speakable-text stream chunker into one incremental utterance,
so the audio starts as soon as the first words are in; `audio-stop` and `synthesize-stopped` end it. The
`synthesize` a streaming client also sends (for older servers) is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    Describe,
    HandleModel,
    HandleProgram,
    Info,
    TtsProgram,
    TtsVoice,
)
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from assistant import __version__
from assistant.audio.files import MIN_SPEECH_RATE
from assistant.audio.format import CAPTURE_RATE, StreamResampler, float32_to_int16
from assistant.compute import Compute, Priority
from assistant.config import Config
from assistant.errors import AssistantError, InputError
from assistant.settings import VoiceCatalog, check_voice, speakable
from assistant.stt import Transcriber
from assistant.text import ClauseChunker, sentences

log = logging.getLogger("assistant.wyoming")

PRIORITY = Priority.BACKGROUND  # after every job of the live conversation
MAX_RATE = 192_000  # Hz: the highest rate any audio interface delivers
MAX_CHANNELS = 32
WIDTHS = (1, 2, 3, 4)  # bytes per sample: unsigned 8-bit, signed 16/24/32-bit little-endian (Wyoming's PCM)
OUT_WIDTH = 2  # we answer 16-bit PCM
# Parakeet TDT 0.6B v3 transcribes these 25 European languages; Nemotron streaming is English.
# The most one frame's data or payload may declare: 80 s of 48 kHz 16-bit stereo (Home Assistant sends ~2 KB
# chunks). The wyoming package reads a declared length whole before anyone looks at it.
FRAME_LIMIT = 16 * 1024 * 1024
# The longest event header line (asyncio's default stream limit): Wyoming clients send the data in the data part
# that the header's data_length announces, so a header is a few hundred bytes.
HEADER_LIMIT = 64 * 1024
# Home Assistant opens a connection per utterance and names the conversation in its context: the handle service
# keeps the chats (each with its prompt cache) of this many recent conversations, the least recent going first.
MAX_CONVERSATIONS = 4
# A connection that sends nothing for this long is closed: Home Assistant's requests stream their events seconds
# apart, and a client whose machine lost power or network leaves a connection that would otherwise stay for good
IDLE_S = 300.0
# ...and one that reads none of its answer for this long is dropped (it held its handler, socket and request state)
SEND_TIMEOUT_S = 60.0
PARAKEET_LANGUAGES = "bg cs da de el en es et fi fr hr hu it lt lv mt nl pl pt ro ru sk sl sv uk".split()


def _attribution(model: str) -> Attribution:
    """Who made the model: its Hugging Face page for a repo id, else the local folder."""
    if "/" in model and not model.startswith(("/", ".", "~")):
        return Attribution(name=model.split("/")[0], url=f"https://huggingface.co/{model}")
    return Attribution(name="local model", url=model)


class UtteranceLike(Protocol):
    done: bool

    @property
    def waiting_for_text(self) -> bool: ...
    def push_text(self, text: str) -> None: ...
    def end_text(self) -> None: ...
    def step(self) -> np.ndarray | None: ...


@dataclass(frozen=True)
class SpeechEngines:
    """What the services need: a fresh transcriber per ASR request, and the shared TTS engine (voices cached)."""

    new_transcriber: Callable[[], Transcriber]
    tts: Any  # Qwen3TTS: voice(name), start(voice, text | None), profiles(), sample_rate, loaded.config.languages
    new_chat: Callable[[], Any] | None = None  # a fresh conversation over the loaded LLM (the handle service)


# ---- audio and info ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PcmFormat:
    rate: int
    width: int
    channels: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> PcmFormat:
        """The format an audio-start/-chunk declares; InputError naming the bad field."""
        try:
            fmt = cls(int(data["rate"]), int(data["width"]), int(data["channels"]))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"audio event needs integer rate, width and channels, got {data!r}") from e
        if not MIN_SPEECH_RATE <= fmt.rate <= MAX_RATE:  # below 8 kHz the words are not in the audio
            raise InputError(
                f"audio rate {fmt.rate} Hz is out of range ({MIN_SPEECH_RATE}..{MAX_RATE}); send 16000 Hz audio"
            )
        if fmt.width not in WIDTHS:
            raise InputError(f"audio width {fmt.width} bytes is not supported; use 1, 2, 3 or 4")
        if not 1 <= fmt.channels <= MAX_CHANNELS:
            raise InputError(f"audio channels {fmt.channels} is out of range (1..{MAX_CHANNELS})")
        return fmt

    def decode(self, raw: bytes) -> np.ndarray:
        """Mono float32 in [-1, 1] of little-endian PCM `raw`; InputError when it is not whole frames."""
        frame = self.width * self.channels
        if len(raw) % frame:
            raise InputError(f"audio chunk of {len(raw)} bytes is not whole frames of {frame} bytes")
        if self.width == 1:
            x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif self.width == 2:
            x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
        elif self.width == 3:
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
            x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2.0**23
        else:
            x = np.frombuffer(raw, "<i4").astype(np.float32) / 2.0**31
        mono: np.ndarray = x.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return mono


def stt_languages(cfg: Config) -> list[str]:
    if cfg.stt.language != "auto":
        return [cfg.stt.language]
    return list(PARAKEET_LANGUAGES) if cfg.stt.engine == "parakeet" else ["en"]


def _described(model: str, description: str) -> dict[str, Any]:
    """What every Wyoming model, voice and program entry says of itself besides its name."""
    return {"attribution": _attribution(model), "installed": True, "version": __version__, "description": description}


def asr_info(cfg: Config) -> Info:
    model_id = cfg.stt.model_id
    model = AsrModel(name=model_id, languages=stt_languages(cfg), **_described(model_id, f"{cfg.stt.engine} on MLX"))
    program = AsrProgram(
        name="assistant-stt",
        models=[model],
        supports_transcript_streaming=True,
        **_described(model_id, "streaming speech-to-text of the assistant daemon"),
    )
    return Info(asr=[program])


def tts_info(cfg: Config, tts: Any) -> Info:
    languages = [lang for lang in tts.loaded.config.languages if lang != "auto"]
    fits = speakable(cast(VoiceCatalog, tts))  # a voice the model cannot speak would fail when picked
    voices = [
        TtsVoice(
            name=name,
            languages=[profile.language] if profile.language != "auto" else languages,
            **_described(cfg.tts.model, profile.description or f"{profile.mode} voice"),
        )
        for name, profile in sorted(tts.profiles().items())
        if name in fits
    ]
    program = TtsProgram(
        name="assistant-tts",
        voices=voices,
        supports_synthesize_streaming=True,
        **_described(cfg.tts.model, f"streaming Qwen3-TTS ({cfg.tts.model}) of the assistant daemon"),
    )
    return Info(tts=[program])


def handle_info(cfg: Config) -> Info:
    model_id = cfg.llm.model
    # languages: whatever the model speaks
    model = HandleModel(name=model_id, languages=[], **_described(model_id, f"the assistant's LLM ({cfg.llm.backend})"))
    program = HandleProgram(
        name="assistant-llm",
        models=[model],
        supports_handled_streaming=True,
        **_described(model_id, "the assistant's LLM as a conversation agent"),
    )
    return Info(handle=[program])


def _error(text: str, code: str) -> Event:
    return Error(text=text, code=code).event()


BAD_REQUEST = (AssistantError, KeyError, TypeError, ValueError)  # the client's fault: answered, never a traceback


def _bad_request(event: Event, e: Exception) -> Event:
    if isinstance(e, AssistantError):
        msg = str(e)
    elif isinstance(e, KeyError):  # the wyoming package's from_event reads required fields by key
        msg = f"malformed {event.type} event: its data has no `{e.args[0] if e.args else '?'}` field; add it"
    else:
        msg = f"malformed {event.type} event: {type(e).__name__}: {e}"
    return _error(msg, "bad-request")


def _not_handled(event: Event, error: Event) -> Event:
    """A failed `transcript` is answered `not-handled` with the error's text: Home Assistant's conversation agent
    waits for handled or not-handled and ignores `error` (it waited forever); other events keep the error."""
    return NotHandled(text=Error.from_event(error).text).event() if Transcript.is_type(event.type) else error


def _service_reply(event: Event, info: Info) -> Event | None:
    """What every Wyoming service answers alike: describe -> its info, ping -> pong; None for other events."""
    if Describe.is_type(event.type):
        return info.event()
    if Ping.is_type(event.type):
        return Pong(text=Ping.from_event(event).text).event()
    return None


class _Handler(AsyncEventHandler):
    """A connection of any of the services: its writes give up on a client that reads nothing for SEND_TIMEOUT_S."""

    async def write_event(self, event: Event) -> None:
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await async_write_event(event, self.writer)
        except TimeoutError:
            self.writer.transport.abort()  # a close would wait for it to read what is queued
            raise ConnectionResetError(f"the client read nothing for {SEND_TIMEOUT_S:g} s") from None


# ---- ASR -----------------------------------------------------------------------------------------------------


class AsrHandler(_Handler):
    """One ASR connection: a transcriber of its own, fed as audio arrives, partials streamed back."""

    def __init__(self, reader: Any, writer: Any, service: WyomingServices) -> None:
        super().__init__(reader, writer)
        self.svc = service
        self.transcriber: Transcriber | None = None
        self.fmt: PcmFormat | None = None
        self.resampler: StreamResampler | None = None
        self.samples = 0  # input samples of this request, for the length limit
        self.sent = ""  # transcript text already sent as chunks
        self.streaming = False  # transcript-start sent
        self.failed = False  # this request already got an error: its remaining audio is ignored

    async def handle_event(self, event: Event) -> bool:
        if self.failed and AudioStop.is_type(event.type):
            return False  # the request's error went out with the audio that failed; the connection's end says so
        try:
            await self._handle(event)
        except BAD_REQUEST as e:
            await self.write_event(_bad_request(event, e))
            return self._failed(event)
        except ConnectionError:
            return False  # the client went away while we answered: nothing to tell, nothing to log
        except Exception as e:  # a bug or a model failure: the client hears why, the server keeps serving
            log.exception("wyoming asr: %s failed", event.type)
            await self.write_event(_error(f"transcription failed: {type(e).__name__}: {e}", "internal"))
            return self._failed(event)
        return True

    def _failed(self, event: Event) -> bool:
        """After `event` failed: whether the connection goes on. A client waits for the transcript after audio-stop
        and Home Assistant ignores error events, so a failed request ends the connection at its audio-stop (the
        rest of its audio is ignored); other events fail alone."""
        self._end()
        if AudioStop.is_type(event.type):
            return False
        self.failed = event.type in ("audio-start", "audio-chunk")
        return True

    async def _handle(self, event: Event) -> None:
        if (reply := _service_reply(event, self.svc.asr_info)) is not None:
            await self.write_event(reply)
        elif Transcribe.is_type(event.type):
            Transcribe.from_event(event)  # validates; language and model are fixed by the config
            self._end()
        elif AudioStart.is_type(event.type):
            await self._begin(PcmFormat.of(event.data))
        elif AudioChunk.is_type(event.type):
            await self._chunk(event)
        elif AudioStop.is_type(event.type):
            await self._stop()
        elif event.type in ("select-program", "pong"):
            pass  # one program per port; pong answers nothing
        else:
            raise InputError(f"unexpected event `{event.type}` on the asr service; send describe or transcribe")

    async def _begin(self, fmt: PcmFormat) -> None:
        self._end()
        # A transcriber's streaming state may hold MLX arrays: it is made on the compute thread like all model work.
        self.transcriber = await self.svc.compute.run(self.svc.engines.new_transcriber, priority=PRIORITY)
        self.fmt, self.resampler = fmt, StreamResampler(fmt.rate, CAPTURE_RATE)
        self.failed = False

    def _end(self) -> None:
        self.fmt = self.resampler = self.transcriber = None
        self.samples, self.sent, self.streaming = 0, "", False

    async def _chunk(self, event: Event) -> None:
        if self.failed:
            return
        fmt = PcmFormat.of(event.data)
        if self.fmt is None:
            raise InputError("audio-chunk before audio-start; send audio-start with the audio format first")
        if fmt != self.fmt:
            raise InputError(f"audio format changed mid-stream from {self.fmt} to {fmt}; start a new request")
        x = fmt.decode(event.payload or b"")
        self.samples += len(x)
        if self.samples > self.svc.cfg.max_audio_s * fmt.rate:
            raise InputError(f"audio longer than wyoming.max_audio_s = {self.svc.cfg.max_audio_s:g} s; send less")
        assert self.resampler is not None and self.transcriber is not None
        block = self.resampler.push(x)
        if len(block):
            partial = await self.svc.compute.run(self.transcriber.feed, block, priority=PRIORITY)
            if partial:
                await self._partial(partial)

    async def _partial(self, text: str) -> None:
        """Send what the partial adds to the text already sent (a revision of earlier words waits for the final)."""
        if not self.streaming:
            await self.write_event(TranscriptStart().event())
            self.streaming = True
        if text.startswith(self.sent) and len(text) > len(self.sent):
            await self.write_event(TranscriptChunk(text=text[len(self.sent) :]).event())
            self.sent = text

    async def _stop(self) -> None:
        if self.transcriber is None:
            raise InputError("audio-stop without audio-start; send audio-start, audio-chunk(s), then audio-stop")
        transcriber, tail = self.transcriber, self.resampler.flush() if self.resampler else np.zeros(0, np.float32)
        if len(tail):
            await self.svc.compute.run(transcriber.feed, tail, priority=PRIORITY)
        final = await self.svc.compute.run(transcriber.finalize, priority=PRIORITY)
        text = final.text.strip()
        if self.streaming:
            if text.startswith(self.sent) and len(text) > len(self.sent):
                await self.write_event(TranscriptChunk(text=text[len(self.sent) :]).event())
        await self.write_event(Transcript(text=text, language=final.language or None).event())
        if self.streaming:
            await self.write_event(TranscriptStop().event())
        self._end()


# ---- TTS -----------------------------------------------------------------------------------------------------


class TtsHandler(_Handler):
    """One TTS connection: plain `synthesize`, or a streaming request whose text arrives in chunks."""

    def __init__(self, reader: Any, writer: Any, service: WyomingServices) -> None:
        super().__init__(reader, writer)
        self.svc = service
        self.utt: UtteranceLike | None = None
        self.more_text = asyncio.Event()  # set when text (or its end) arrives for the streaming utterance
        self.speaking: asyncio.Task[None] | None = None
        self.streaming = False
        self.chars = 0
        self.chunker = ClauseChunker("stream")  # the daemon's incremental-text path: speakable words as completed
        self.failed = False  # a streaming request failed: its remaining text is ignored until its synthesize-stop

    async def handle_event(self, event: Event) -> bool:
        if self.failed and (SynthesizeChunk.is_type(event.type) or Synthesize.is_type(event.type)):
            return True
        if self.failed and SynthesizeStop.is_type(event.type):
            return False  # its error went out when it failed; the connection's end says so
        if SynthesizeStart.is_type(event.type):
            self.failed = False
        try:
            await self._handle(event)
        except BAD_REQUEST as e:
            await self.write_event(_bad_request(event, e))
            return await self._failed(event)
        except ConnectionError:
            return False  # the client hung up while its speech streamed (Home Assistant stops a reply)
        except Exception as e:
            log.exception("wyoming tts: %s failed", event.type)
            await self.write_event(_error(f"synthesis failed: {type(e).__name__}: {e}", "internal"))
            return await self._failed(event)
        return True

    async def _failed(self, event: Event) -> bool:
        """After `event` failed: whether the connection goes on. A client waits for audio-stop (synthesize) or
        synthesize-stopped (a streaming request) and Home Assistant ignores error events, so a failed request ends
        the connection: at once for synthesize and synthesize-stop, at its synthesize-stop for a streaming request
        that failed at its start or a chunk (its other text is ignored); other events fail alone."""
        if Synthesize.is_type(event.type) or SynthesizeStop.is_type(event.type):
            return False
        if SynthesizeStart.is_type(event.type) or (SynthesizeChunk.is_type(event.type) and self.streaming):
            await self.disconnect()  # the speech of a request that failed is not sent
            self.streaming, self.utt, self.speaking, self.failed = False, None, None, True
        return True

    async def disconnect(self) -> None:
        if self.speaking is not None:
            self.speaking.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.speaking

    async def _handle(self, event: Event) -> None:
        if (reply := _service_reply(event, self.svc.tts_info)) is not None:
            await self.write_event(reply)
        elif Synthesize.is_type(event.type):
            if self.streaming:
                return  # the whole text a streaming client also sends for servers without streaming
            request = Synthesize.from_event(event)
            pieces = sentences(self._check_text(request.text, 0))
            if not pieces:
                raise InputError("nothing to say: the text has no speakable words (only emoji, symbols or markup)")
            voice = await self._voice(request.voice.name if request.voice else None)
            await self._speak(voice, pieces)
        elif SynthesizeStart.is_type(event.type):
            start = SynthesizeStart.from_event(event)
            if self.streaming:
                raise InputError("synthesize-start while a streaming request is open; send synthesize-stop first")
            voice = await self._voice(start.voice.name if start.voice else None)
            utt = await self.svc.compute.run(self.svc.engines.tts.start, voice, None, priority=PRIORITY)
            self.utt, self.streaming, self.chars = utt, True, 0
            self.chunker = ClauseChunker("stream")
            self.more_text.clear()
            self.speaking = asyncio.create_task(self._speak_streaming(utt))
        elif SynthesizeChunk.is_type(event.type):
            if not self.streaming or self.utt is None:
                raise InputError("synthesize-chunk without synthesize-start; start a streaming request first")
            text = self._check_text(SynthesizeChunk.from_event(event).text, self.chars, allow_empty=True)
            self.chars += len(text)
            await self._push(self.chunker.push(text))
        elif SynthesizeStop.is_type(event.type):
            if not self.streaming or self.utt is None or self.speaking is None:
                raise InputError("synthesize-stop without synthesize-start")
            await self._push(self.chunker.flush())
            await self.svc.compute.run(self.utt.end_text, priority=PRIORITY)
            self.more_text.set()
            try:
                await self.speaking
            finally:
                self.streaming, self.utt, self.speaking = False, None, None
            await self.write_event(SynthesizeStopped().event())
        elif event.type in ("select-program", "pong"):
            pass
        else:
            raise InputError(f"unexpected event `{event.type}` on the tts service; send describe or synthesize")

    async def _push(self, pieces: list[str]) -> None:
        assert self.utt is not None
        for piece in pieces:
            if piece:
                await self.svc.compute.run(self.utt.push_text, piece, priority=PRIORITY)
                self.more_text.set()

    def _check_text(self, text: Any, before: int, allow_empty: bool = False) -> str:
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate escape: no tokenizer takes it
            raise InputError(
                f"text is not valid Unicode (a lone surrogate at character {e.start}); send UTF-8 text"
            ) from e
        if not allow_empty and not text.strip():
            raise InputError("nothing to say: the text is empty")
        if before + len(text) > self.svc.cfg.max_text_chars:
            raise InputError(f"text longer than wyoming.max_text_chars = {self.svc.cfg.max_text_chars}; send less")
        return text

    async def _voice(self, name: str | None) -> Any:
        if name is not None and not isinstance(name, str):
            raise InputError(f"voice name must be a string, got {name!r}")
        if name:  # the voices that fit, and no path of this machine (the TTS's own message names its folder)
            check_voice(cast(VoiceCatalog, self.svc.engines.tts), name, prefix="")
        return await self.svc.compute.run(self.svc.engines.tts.voice, name or None, priority=PRIORITY)

    async def _send_audio(self, chunk: np.ndarray, started: bool) -> None:
        rate = self.svc.engines.tts.sample_rate
        if not started:
            await self.write_event(AudioStart(rate=rate, width=OUT_WIDTH, channels=1).event())
        pcm = float32_to_int16(np.asarray(chunk, dtype=np.float32)).astype("<i2").tobytes()
        await self.write_event(AudioChunk(rate=rate, width=OUT_WIDTH, channels=1, audio=pcm).event())

    async def _speak(self, voice: Any, pieces: list[str]) -> None:
        """Each sentence as a whole-text utterance (as `assistant say`), one audio stream, chunks sent as decoded."""
        started = False
        for sentence in pieces:
            utt = await self.svc.compute.run(self.svc.engines.tts.start, voice, sentence, priority=PRIORITY)
            while not utt.done:
                chunk = await self.svc.compute.run(utt.step, priority=PRIORITY)
                if chunk is not None and len(chunk):
                    await self._send_audio(chunk, started)
                    started = True
        await self._finish_audio(started)

    async def _speak_streaming(self, utt: UtteranceLike) -> None:
        """Step while the TTS has text; sleep on `more_text` when it waits for the next synthesize-chunk."""
        started = False
        while not utt.done:
            self.more_text.clear()
            chunk = await self.svc.compute.run(utt.step, priority=PRIORITY)
            if chunk is not None and len(chunk):
                await self._send_audio(chunk, started)
                started = True
            elif utt.waiting_for_text and not utt.done:
                await self.more_text.wait()
        await self._finish_audio(started)

    async def _finish_audio(self, started: bool) -> None:
        if not started:  # nothing decoded (e.g. the model ended at once): still a well-formed, empty stream
            rate = self.svc.engines.tts.sample_rate
            await self.write_event(AudioStart(rate=rate, width=OUT_WIDTH, channels=1).event())
        await self.write_event(AudioStop().event())


# ---- HANDLE --------------------------------------------------------------------------------------------------


class HandleHandler(_Handler):
    """One conversation-agent connection: its own chat over the loaded LLM, answers streamed as handled-chunks."""

    def __init__(self, reader: Any, writer: Any, service: WyomingServices) -> None:
        super().__init__(reader, writer)
        self.svc = service
        self.chat: Any | None = None

    async def handle_event(self, event: Event) -> bool:
        try:
            await self._handle(event)
        except BAD_REQUEST as e:
            await self.write_event(_not_handled(event, _bad_request(event, e)))
        except ConnectionError:
            return False  # the client hung up while its answer streamed: nothing to tell, nothing to log
        except Exception as e:  # a bug or a model failure: the client hears why, the server keeps serving
            log.exception("wyoming handle: %s failed", event.type)
            await self.write_event(
                _not_handled(event, _error(f"answering failed: {type(e).__name__}: {e}", "internal"))
            )
        return True

    async def disconnect(self) -> None:
        if self.chat is not None and hasattr(self.chat, "close"):
            self.chat.close()

    async def _handle(self, event: Event) -> None:
        if (reply := _service_reply(event, self.svc.handle_info)) is not None:
            await self.write_event(reply)
        elif Transcript.is_type(event.type):
            transcript = Transcript.from_event(event)
            text = transcript.text
            if not isinstance(text, str) or not text.strip():
                raise InputError("transcript text is empty; send what the user said")
            if len(text) > self.svc.cfg.max_text_chars:  # it goes whole into the prompt
                raise InputError(
                    f"transcript longer than wyoming.max_text_chars = {self.svc.cfg.max_text_chars}; send less"
                )
            await self._answer(text, _conversation_id(transcript.context))
        elif event.type in ("select-program", "pong"):
            pass
        else:
            raise InputError(f"unexpected event `{event.type}` on the handle service; send describe or transcript")

    async def _step(self, chat: Any, gen: Any) -> Any:
        """One answer step: mlx-lm on the compute thread (after the live conversation); a remote answer's network
        wait on a worker thread, so it never holds the MLX thread."""
        from assistant.compute import StepResult
        from assistant.llm_remote import RemoteChat

        if isinstance(chat, RemoteChat):
            return await asyncio.to_thread(_next_step, gen)
        result: StepResult = await self.svc.compute.step(gen, priority=PRIORITY)
        return result

    async def _answer(self, text: str, conversation_id: str | None) -> None:
        """Answer in the chat of `conversation_id` (Home Assistant's, kept across its connections), or without one
        in this connection's own chat."""
        make = self.svc.engines.new_chat
        if make is None:
            raise InputError("this server has no LLM loaded; the handle service needs the daemon's engines")
        if conversation_id is not None:
            conversation = await self.svc.conversation(conversation_id, make)
        else:
            if self.chat is None:
                self.chat = await self.svc.compute.run(make, priority=PRIORITY)
            conversation = _Conversation(self.chat)
        async with conversation.turn:  # one answer at a time per chat
            await self._answer_in(conversation.chat, text)

    async def _answer_in(self, chat: Any, text: str) -> None:
        await self.write_event(HandledStart().event())
        parts: list[str] = []
        try:
            gen = await self.svc.compute.run(chat.respond, text, priority=PRIORITY)
            while not (step := await self._step(chat, gen)).done:
                if step.value:
                    parts.append(step.value)
                    await self.write_event(HandledChunk(text=step.value).event())
        except Exception as e:  # e.g. the LLM server is down: the agent says why, the next request retries
            await self.svc.compute.run(chat.finish_turn, "".join(parts), priority=PRIORITY)  # the next starts clean
            if isinstance(e, ConnectionError):
                raise
            if not isinstance(e, AssistantError):
                log.exception("wyoming handle: answering failed")
            why = str(e) if isinstance(e, AssistantError) else f"answering failed: {type(e).__name__}: {e}"
            await self.write_event(HandledStop().event())
            await self.write_event(NotHandled(text=why).event())
            return
        await self.svc.compute.run(chat.finish_turn, None, priority=PRIORITY)
        await self.write_event(HandledStop().event())
        await self.write_event(Handled(text="".join(parts).strip()).event())


@dataclass
class _Conversation:
    """One handle conversation: its chat, and the lock that lets one answer at a time use it."""

    chat: Any
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)


def _conversation_id(context: Any) -> str | None:
    """Home Assistant's conversation id in a transcript's context (None when absent or not a short string)."""
    value = context.get("conversation_id") if isinstance(context, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def _next_step(gen: Any) -> Any:
    from assistant.compute import StepResult

    try:
        return StepResult(False, next(gen))
    except StopIteration:
        return StepResult(True)


# ---- the services --------------------------------------------------------------------------------------------


def _read_header(line: bytes) -> dict[str, Any] | str:
    """An event header line as its JSON object, or what is wrong with it: one line of JSON, an object with a
    string `type`, whole byte counts and a `data` object (the wyoming package raised AttributeError/TypeError/
    KeyError on the rest, a traceback in the daemon log)."""
    try:
        header = json.loads(line)
    except ValueError:
        return "an event header must be one line of JSON"
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        return 'an event header must be a JSON object with a string "type"'
    for key in ("data_length", "payload_length"):
        n = header.get(key)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            return f"`{key}` must be a whole number of bytes, got {json.dumps(n)[:40]}"
    if header.get("data") is not None and not isinstance(header["data"], dict):
        return "`data` must be a JSON object"
    return header


class _BoundedReader:
    """A connection's reader as the wyoming package uses it (readline, readexactly), which refuses a malformed
    event header or one over HEADER_LIMIT, a data part that is not a JSON object, and a frame whose declared data
    or payload exceeds FRAME_LIMIT before reading it: the client gets an error event, and the ValueError ends the
    connection (the package reads it as the end of the stream). Nothing for IDLE_S ends the connection too."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._data_length: int | None = None  # the next readexactly of this many bytes is the header's data part

    async def _refuse(self, text: str, code: str) -> ValueError:
        with contextlib.suppress(ConnectionError):
            await async_write_event(_error(text, code), self.writer)
        return ValueError(text)

    async def readline(self) -> bytes:
        try:
            async with asyncio.timeout(IDLE_S):
                line = await self.reader.readline()
        except TimeoutError:
            log.info("closed a wyoming connection that sent nothing for %g s", IDLE_S)
            return b""  # read as the end of the stream
        except ValueError:  # over the stream's limit (LimitOverrunError); the line is dropped, not read
            text = (
                f"an event header line is over the {HEADER_LIMIT} bytes a header may take; send the event's data in "
                "its data part (data_length), as Wyoming client libraries do"
            )
            raise await self._refuse(text, "header-too-large") from None
        if not line.strip():
            return line  # the end of the stream (the package reads an empty line the same way)
        header = _read_header(line)
        if isinstance(header, str):
            raise await self._refuse(f"{header}; send Wyoming events (a Wyoming client library)", "bad-event")
        n = header.get("data_length")
        self._data_length = n if n else None
        return line

    async def readexactly(self, n: int) -> bytes:
        if n > FRAME_LIMIT:
            text = (
                f"a frame of {n} bytes is over the {FRAME_LIMIT} one event may carry; send the audio in smaller "
                "chunks (and text within wyoming.max_text_chars)"
            )
            raise await self._refuse(text, "frame-too-large")
        try:
            async with asyncio.timeout(IDLE_S):
                data = await self.reader.readexactly(n)
        except TimeoutError:
            raise await self._refuse(f"an event's data did not arrive within {IDLE_S:g} s", "timeout") from None
        if n == self._data_length:
            self._data_length = None
            try:
                is_object = isinstance(json.loads(data), dict)
            except ValueError:
                is_object = False
            if not is_object:
                raise await self._refuse("an event's data part must be a JSON object", "bad-event")
        return data


class WyomingServices:
    """The asr and tts Wyoming servers; an async context manager (a daemon service) that binds and closes them."""

    def __init__(self, config: Config, engines: SpeechEngines, compute: Compute) -> None:
        self.config, self.cfg, self.engines, self.compute = config, config.wyoming, engines, compute
        self.asr_info = asr_info(config)
        self.tts_info = tts_info(config, engines.tts)
        self.handle_info = handle_info(config)
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()  # handle chats, least recent first
        self.asr_port: int | None = None
        self.tts_port: int | None = None
        self.handle_port: int | None = None

    async def __aenter__(self) -> WyomingServices:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind the configured ports (0 = off); raises AssistantError when a port is taken."""
        kinds: dict[str, tuple[int, type[AsrHandler | TtsHandler | HandleHandler]]] = {
            "asr": (self.cfg.asr_port, AsrHandler),
            "tts": (self.cfg.tts_port, TtsHandler),
        }
        if self.engines.new_chat is not None:
            kinds["handle"] = (self.cfg.handle_port, HandleHandler)
        for kind, (port, handler) in kinds.items():
            if port == 0:
                continue
            try:
                server = await asyncio.start_server(self._connection(handler), self.cfg.host, port, limit=HEADER_LIMIT)
            except OSError as e:
                await self.close()
                raise AssistantError(
                    f"wyoming {kind} port {self.cfg.host}:{port} is not free ({e.strerror}); stop what uses it "
                    f"or set wyoming.{kind}_port"
                ) from e
            self._servers.append(server)
            bound = int(server.sockets[0].getsockname()[1])
            setattr(self, f"{kind}_port", bound)
            log.info("wyoming %s service on tcp://%s:%d", kind, self.cfg.host, bound)

    def _connection(self, handler: type[AsrHandler | TtsHandler | HandleHandler]) -> Callable[..., Any]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            try:
                await handler(_BoundedReader(reader, writer), writer, self).run()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client went away mid-event
            except asyncio.CancelledError:
                pass  # close() ends the connections; ending quietly keeps asyncio's stream callback from logging it
            finally:
                self._handlers.discard(task)
                # a request per connection: free what it left in MLX's buffer cache, as the voice loop does after
                # each reply (`assistant wyoming` has no voice loop, and its memory grew to its largest request's)
                self.compute.clear_cache()

        return serve

    async def conversation(self, conversation_id: str, make: Callable[[], Any]) -> _Conversation:
        """The handle conversation named `conversation_id`, made with `make` the first time; the least recently
        used beyond MAX_CONVERSATIONS is forgotten (its chat closed unless an answer still runs in it)."""
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            chat = await self.compute.run(make, priority=PRIORITY)
            conversation = self._conversations.setdefault(conversation_id, _Conversation(chat))
            if conversation.chat is not chat and hasattr(chat, "close"):
                chat.close()  # another connection of this conversation made its chat while we made ours
        self._conversations.move_to_end(conversation_id)
        while len(self._conversations) > MAX_CONVERSATIONS:
            _, old = self._conversations.popitem(last=False)
            if not old.turn.locked() and hasattr(old.chat, "close"):
                old.chat.close()
        return conversation

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for conversation in self._conversations.values():  # no answer runs in them now
            if hasattr(conversation.chat, "close"):
                conversation.chat.close()
        self._conversations.clear()
        for server in self._servers:
            await server.wait_closed()
        self._servers = []


def speech_engines(transcriber: Transcriber, tts: Any, chat: Any = None) -> SpeechEngines:
    """SpeechEngines over loaded engines: each request gets a transcriber of the same kind over the same weights,
    and (with `chat`) each handle connection a conversation of its own over the same LLM."""
    from assistant.llm import Chat
    from assistant.llm_remote import RemoteChat
    from assistant.stt.transcriber import OfflineTranscriber, StreamingTranscriber

    tr = transcriber
    assert isinstance(tr, OfflineTranscriber | StreamingTranscriber)
    new_chat: Callable[[], Any] | None = None
    if isinstance(chat, RemoteChat):
        new_chat = chat.new_conversation
    elif isinstance(chat, Chat):
        local = chat

        def new_local() -> Chat:
            return Chat(local.model, local.tokenizer, local.cfg)

        new_chat = new_local
    return SpeechEngines(new_transcriber=lambda: type(tr)(tr.lm, tr.cfg), tts=tts, new_chat=new_chat)
