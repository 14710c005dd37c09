"""Qwen3-TTS text-to-speech."""

from assistant.tts.qwen3 import Qwen3TTS, Utterance, VoicePrompt
from assistant.tts.voices import Voice, VoiceProfile, load_profiles

__all__ = ["Qwen3TTS", "Utterance", "Voice", "VoiceProfile", "VoicePrompt", "load_profiles"]
