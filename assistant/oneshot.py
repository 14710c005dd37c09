"""One-shot speech and transcription over the daemon's loaded engines: what the HTTP endpoints run.

Every model call goes to the one compute thread at background priority, one step per job (a TTS frame, a second
of audio into the transcriber), so the voice loop's steps always go first and wait at most one step. Each request
gets its own transcriber state over the shared weights; the TTS and its cached voices are shared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from assistant.audio.format import CAPTURE_RATE
from assistant.compute import Compute, Priority
from assistant.config import Config, parse_voice_aliases
from assistant.engines import Engines
from assistant.errors import InputError
from assistant.settings import check_voice, speakable
from assistant.text import sentences

FEED_SAMPLES = CAPTURE_RATE  # 16000 = one second of 16 kHz audio per compute job
BG = Priority.BACKGROUND


class OneShot:
    """The daemon's `AudioService`: models, voices, health, speech and transcription for the HTTP endpoints."""

    def __init__(self, cfg: Config, engines: Engines, compute: Compute) -> None:
        self.cfg = cfg
        # the concrete engines: the turn core's protocols do not name profiles, voices or transcriber weights
        self.tts: Any = engines.tts
        self.transcriber: Any = engines.transcriber
        self.compute = compute
        self.aliases = parse_voice_aliases(cfg.server.voice_aliases)  # checked at config load
        self.sample_rate = int(engines.tts.sample_rate)

    def models(self) -> dict[str, str]:
        """What each loaded engine is: {"stt": id, "llm": id, "tts": id}."""
        return {"stt": self.cfg.stt.model_id, "llm": self.cfg.llm.model, "tts": self.cfg.tts.model}

    def voices(self) -> list[str]:
        """The voice profiles the TTS model can speak with."""
        return speakable(self.tts)

    def voice_name(self, requested: str | None) -> str:
        """The profile that speaks for `requested`: itself, its alias, or (unknown or empty) tts.voice."""
        profiles = self.tts.profiles()
        name = (requested or "").strip()
        if name in profiles:
            return name
        alias = self.aliases.get(name.lower())
        if alias is not None and alias in profiles:
            return alias
        return self.cfg.tts.voice

    def known_voice(self, name: str) -> bool:
        """Whether `name` is a voice profile or a `server.voice_aliases` name of one."""
        profiles = self.tts.profiles()
        return name in profiles or self.aliases.get(name.lower()) in profiles

    def check_voice(self, requested: str | None) -> None:
        """ConfigError naming the voices that fit when the voice speaking for `requested` does not fit the model."""
        check_voice(self.tts, self.voice_name(requested), prefix="")

    def health(self) -> dict[str, Any]:
        audio = self.cfg.audio
        return {
            "models": self.models(),
            "devices": {"input": audio.input_device or "default", "output": audio.output_device or "default"},
        }

    async def speak(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        """float32 mono chunks at `sample_rate` of `text` spoken by `voice_name(voice)`, as they are made."""
        pieces = sentences(text)
        if not pieces:
            raise InputError("nothing to say: the input has no speakable words; send some text")
        tts = self.tts
        profile = self.voice_name(voice)
        spoken = await self.compute.run(tts.voice, profile or None, priority=BG)
        try:
            for sentence in pieces:
                utt = await self.compute.run(tts.start, spoken, sentence, priority=BG)
                while not utt.done:
                    chunk = await self.compute.run(utt.step, priority=BG)
                    if chunk is not None and len(chunk):
                        yield np.asarray(chunk, dtype=np.float32)
        finally:
            self.compute.clear_cache()  # what the request left in MLX's buffer cache, as after a voice-loop reply

    async def transcribe(self, audio: np.ndarray) -> tuple[str, str]:
        """(text, language) of float32 mono 16 kHz `audio`, fed a second at a time on the compute thread."""
        shared = self.transcriber
        cfg = dataclasses.replace(shared.cfg, partial_interval_ms=0)  # nobody reads partials: no wasted decodes
        tr = await self.compute.run(lambda: type(shared)(shared.lm, cfg), priority=BG)
        try:
            for start in range(0, len(audio), FEED_SAMPLES):
                await self.compute.run(tr.feed, audio[start : start + FEED_SAMPLES], priority=BG)
            final = await self.compute.run(tr.finalize, priority=BG)
        finally:
            self.compute.clear_cache()
        return final.text.strip(), final.language
