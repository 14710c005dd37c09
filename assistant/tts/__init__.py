"""Streaming text-to-speech: Qwen3-TTS 12 Hz (the one engine today), behind the `Tts` protocol.

tts = load_tts(cfg.tts)                 # ModelError with the fix when the model is missing or malformed
utt = tts.start(tts.voice(), None)      # then push_text()/end_text(), and step() for audio chunks
"""

from __future__ import annotations

from assistant.config import TtsConfig
from assistant.tts.types import SpeechUtterance, Tts

__all__ = ["SpeechUtterance", "Tts", "load_tts"]


def load_tts(cfg: TtsConfig) -> Tts:
    """The engine named by `tts.engine` with its model from `tts.model`; raises ModelError."""
    from assistant.tts.qwen3 import Qwen3TTS

    return Qwen3TTS.load(cfg)
