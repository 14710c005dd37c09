"""The streaming TTS engine: voices with cached prefixes, utterances stepped one frame at a time, audio chunks.

Synchronous and sliceable: `Utterance.step()` does at most one codec frame of work, so the daemon's single MLX
thread can interleave it with other work and cancel between frames.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from assistant import hub
from assistant.audio.tempo import TimeStretch
from assistant.config import TtsConfig
from assistant.errors import InputError, ModelError
from assistant.tts.qwen3.generate import FrameGenerator, Layout, PrefixState, generate_codes
from assistant.tts.qwen3.load import LoadedModel, load_model, load_speaker_encoder, load_speech_tokenizer_of
from assistant.tts.qwen3.prompt import PromptBuilder, VoicePrompt, check_ref_codes
from assistant.tts.qwen3.sampling import SamplingParams
from assistant.tts.voices import Voice, VoiceProfile, load_profiles, resolve_voice_dir

log = logging.getLogger("assistant.tts")

SAMPLE_RATE = 24_000
FRAME_SAMPLES = 1920  # 80 ms at 24 kHz: one 12.5 Hz codec frame
WARM_TEXT_TOKENS = 256  # text tokens a prefill may add beyond the voice prefix, for the warm-up's buffer lengths


def sampling_of(cfg: TtsConfig) -> SamplingParams:
    return SamplingParams(
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        repetition_penalty=cfg.repetition_penalty,
        subtalker_temperature=cfg.subtalker_temperature,
        subtalker_top_k=cfg.subtalker_top_k,
        subtalker_top_p=cfg.subtalker_top_p,
        seed=None if cfg.seed < 0 else cfg.seed,
    )


class Utterance:
    """One utterance: text in (whole, or pieces via push_text/end_text), float32 24 kHz chunks out of step().

    At `speed` != 1.0 the chunks are time-stretched (pitch kept), so a frame is 1920 / speed samples on average
    and each chunk lags its frames by up to 37.5 ms of audio (the stretcher's look-ahead).
    """

    def __init__(
        self,
        gen: FrameGenerator,
        decoder: Any | None,
        prime: np.ndarray | None,
        first: int,
        every: int,
        speed: float = 1.0,
    ):
        self.gen = gen
        self.decoder = decoder
        self.state = decoder.new_state() if decoder is not None else None
        if decoder is not None and prime is not None:  # ICL: the reference codes prime the decoder (spec 5.3)
            mx.eval(decoder.step(mx.array(prime, dtype=mx.int32), self.state))
        self.first, self.every = first, every
        self.frames: list[np.ndarray] = []  # generated, not yet decoded
        self.chunks_out = 0
        self.frames_emitted = 0
        self.done = False
        self.speed = speed
        self.stretch = TimeStretch(speed, SAMPLE_RATE) if speed != 1.0 else None

    @property
    def waiting_for_text(self) -> bool:
        return self.gen.waiting_for_text

    def push_text(self, text: str) -> None:
        self.gen.push_text(text)

    def chars_at_frame(self, frame: int) -> int:
        """Characters of the text pushed so far that the talker had consumed when it produced codec frame
        `frame` (frame k = samples [k * 1920, (k + 1) * 1920) before any time stretch)."""
        return self.gen.chars_at_frame(frame)

    def end_text(self) -> None:
        self.gen.end_text()

    def _decode(self) -> np.ndarray:
        codes = np.stack(self.frames)
        self.frames = []
        self.chunks_out += 1
        if self.decoder is None:
            raise ModelError("no speech-tokenizer decoder is loaded; use codes() or load a full checkpoint")
        audio = self.decoder.step(codes, self.state)  # numpy: checked on the host, no device wait
        return np.array(audio.astype(mx.float32)).reshape(-1)

    def _out(self, audio: np.ndarray | None) -> np.ndarray | None:
        """Decoded audio through the time stretch (its tail once the utterance is done); None when empty."""
        if self.stretch is not None:
            parts = [self.stretch.push(audio)] if audio is not None else []
            if self.done:
                parts.append(self.stretch.flush())
            audio = np.concatenate(parts) if parts else None
        return audio if audio is not None and len(audio) else None

    def step(self, decode: bool | None = None) -> np.ndarray | None:
        """At most one frame of work, and a chunk of the frames made so far when they are due.

        `decode` None: the fixed schedule, for a caller that cannot see the listener's buffer: a chunk when
        first_chunk_frames frames are ready, then each time as many again, then twice as many, and so on up to
        chunk_frames (1, 1, 2, 4, 4, ... by default). True: decode after this step's frame (the listener's buffer
        would run dry before another frame and its decode); False: hold the frames, up to chunk_frames (fewer,
        larger decodes). The first chunk always comes at first_chunk_frames, the last when the text is spoken."""
        if self.done:
            return None
        frame = self.gen.step()
        if frame is not None:
            self.frames.append(frame)
            self.frames_emitted += 1
            # then 1, 2, 4... times first, up to every: a second chunk of `every` frames took longer to make than the
            # first one plays (at the start each frame waits for an LLM token), and the sink ran dry after 80 ms
            due = self.first if self.chunks_out == 0 else min(self.every, self.first << (self.chunks_out - 1))
            if self.chunks_out and decode is not None:
                due = 1 if decode else self.every
            if len(self.frames) >= due:
                return self._out(self._decode())
            return None
        if self.gen.done:
            self.done = True
            return self._out(self._decode() if self.frames else None)
        return None


@dataclass(frozen=True, eq=False)
class _Cached:
    voice: Voice
    prefix: PrefixState


class Qwen3TTS:
    sample_rate: int = SAMPLE_RATE

    def __init__(self, loaded: LoadedModel, cfg: TtsConfig, speech_tokenizer: Any | None = None):
        self.loaded, self.cfg = loaded, cfg
        self.talker = loaded.model.talker
        self.builder = PromptBuilder(self.talker, loaded.config, loaded.tokenizer)
        self.speech_tokenizer = speech_tokenizer
        self.voices_dir = resolve_voice_dir(cfg.voices_dir)
        self._cache: dict[str, _Cached] = {}
        self._speaker_encoder: Any | None = None
        self._broken: set[str] = set()  # problems of the broken voice profiles logged so far

    @classmethod
    def load(cls, cfg: TtsConfig) -> Qwen3TTS:
        """Talker, predictor, tokenizer and the speech-tokenizer decoder from `tts.model`. Raises ModelError."""
        try:
            loaded = load_model(cfg.model, dtype=cfg.dtype)
            return cls(loaded, cfg, load_speech_tokenizer_of(loaded))
        except hub.MALFORMED as e:
            raise hub.malformed("TTS model", cfg.model, e) from e

    @property
    def model_type(self) -> str:
        return self.loaded.config.tts_model_type

    @property
    def speakers(self) -> list[str]:
        return self.loaded.config.speakers

    @property
    def languages(self) -> list[str]:
        return self.loaded.config.languages

    def profiles(self) -> dict[str, VoiceProfile]:
        """The voice profiles that load; a broken one is skipped and logged (once while it stays broken)."""
        broken: dict[str, str] = {}
        found = load_profiles(self.voices_dir, broken)
        for problem in set(broken.values()) - self._broken:
            log.warning("%s; that voice is skipped until it is fixed", problem)
        self._broken = set(broken.values())
        return found

    def voice_names(self) -> list[str]:
        return sorted(self.profiles())

    def voice(self, name: str | None = None) -> Voice:
        """A voices/ profile resolved for this model; its prefix KV state is computed once and cached."""
        name = name or self.cfg.voice
        if name in self._cache:
            return self._cache[name].voice
        profiles = self.profiles()
        if name not in profiles:
            raise InputError(f"unknown voice {name!r}; voices in {self.voices_dir}: {', '.join(sorted(profiles))}")
        return self.use_voice(profiles[name].resolve(self))

    def use_voice(self, voice: Voice) -> Voice:
        """Register a resolved voice (profile or ad hoc) and compute its prefix once."""
        prefix = PrefixState.compute(self.talker, self.builder, voice.prompt)
        self._cache[voice.name] = _Cached(voice, prefix)
        return voice

    def speaker_encoder(self) -> Any:
        if self._speaker_encoder is None:
            self._speaker_encoder = load_speaker_encoder(self.loaded)
            if self._speaker_encoder is None:
                raise ModelError(f"{self.loaded.repo} has no speaker encoder; voice cloning needs a Base model")
        return self._speaker_encoder

    def _prefix(self, voice: Voice) -> PrefixState:
        cached = self._cache.get(voice.name)
        if cached is None or cached.voice is not voice:
            self.use_voice(voice)
            cached = self._cache[voice.name]
        return cached.prefix

    def frames(self, voice: Voice, text: str | None = None, layout: Layout | None = None) -> FrameGenerator:
        """Code-level generation (no decoder): a FrameGenerator for this voice."""
        if text is not None and not text.strip():
            raise InputError("nothing to say: the text is empty")
        if layout is None:  # the official defaults: whole-text layout, except streaming for clones
            layout = "stream" if voice.prompt.xvector is not None else "full"
        return FrameGenerator(
            self.talker,
            self.builder,
            self._prefix(voice),
            sampling_of(self.cfg),
            self.cfg.max_frames + 1,  # max_new_tokens: the last sampled token is never decoded
            text,
            layout,
        )

    def start(self, voice: Voice, text: str | None = None, layout: Layout | None = None) -> Utterance:
        """text given: whole-text layout; None: incremental text through push_text/end_text."""
        gen = self.frames(voice, text, layout)
        decoder = self.speech_tokenizer.decoder if self.speech_tokenizer is not None else None
        prime = voice.prompt.ref_codes if voice.prompt.icl else None
        first, every = self.cfg.first_chunk_frames, self.cfg.chunk_frames
        return Utterance(gen, decoder, prime, first, every, voice.speed)

    def warmup(self) -> None:
        """Compile what utterances run (on the compute thread, at start-up): the configured voice's prefix, the
        frame kernel for the configured sampling, the talker step at every KV buffer length up to max_frames, and
        the decoder at every chunk size (first_chunk_frames, chunk_frames and each shorter last chunk)."""
        first, every = self.cfg.first_chunk_frames, self.cfg.chunk_frames
        frames = first + every
        sampling = dataclasses.replace(sampling_of(self.cfg), min_new_tokens=frames + 1)
        voice = self.voice()
        gen = FrameGenerator(self.talker, self.builder, self._prefix(voice), sampling, frames + 1, "Hello.", "stream")
        codes = np.stack(list(generate_codes(gen)))
        self.talker.warm_steps(gen.prefix.length + self.cfg.max_frames + WARM_TEXT_TOKENS)
        if self.speech_tokenizer is None:
            return
        decoder = self.speech_tokenizer.decoder
        for n in sorted({first, *range(1, every + 1)}):
            mx.eval(decoder.step(mx.array(codes[:n], dtype=mx.int32), decoder.new_state()))

    def stream(self, text: str, voice: Voice | None = None) -> Iterator[np.ndarray]:
        """float32 24 kHz chunks of `text` as frames decode."""
        utt = self.start(voice or self.voice(), text)
        while not utt.done:
            chunk = utt.step()
            if chunk is not None:
                yield chunk

    def stream_text(self, pieces: Iterable[str], voice: Voice | None = None) -> Iterator[np.ndarray]:
        """Incremental text (e.g. LLM deltas): speaks before the text is complete, stalling when it runs dry."""
        utt = self.start(voice or self.voice())
        for piece in pieces:
            utt.push_text(piece)
            while not (utt.done or utt.waiting_for_text):
                chunk = utt.step()
                if chunk is not None:
                    yield chunk
        utt.end_text()
        while not utt.done:
            chunk = utt.step()
            if chunk is not None:
                yield chunk


def ad_hoc_voice(name: str, prompt: VoicePrompt, groups: int = 16) -> Voice:
    """A voice not backed by a profile (tests, benchmarks)."""
    if prompt.ref_codes is not None:
        prompt = VoicePrompt(
            prompt.language,
            prompt.speaker,
            prompt.instruct,
            prompt.xvector,
            check_ref_codes(prompt.ref_codes, groups),
            prompt.ref_text,
        )
    return Voice(name, prompt, None, Path())
