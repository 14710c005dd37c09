"""Qwen3-TTS text-to-speech."""

from assistant.tts.qwen3.engine import SAMPLE_RATE, Qwen3TTS, Utterance, ad_hoc_voice
from assistant.tts.qwen3.prompt import VoicePrompt

__all__ = ["SAMPLE_RATE", "Qwen3TTS", "Utterance", "VoicePrompt", "ad_hoc_voice"]
