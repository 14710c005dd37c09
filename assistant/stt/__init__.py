"""Streaming speech-to-text on MLX: Parakeet TDT (default, offline passes) and Nemotron (cache-aware streaming).

tr = load_transcriber(cfg.stt)        # ModelError with the fix when the model is missing or malformed
partial = tr.feed(block)              # every stt.partial_interval_ms of audio: the transcript so far
final = tr.finalize()                 # Transcript(text, language); then ready for the next utterance
"""

from __future__ import annotations

from assistant.config import SttConfig
from assistant.stt.types import Transcriber, Transcript

__all__ = ["Transcriber", "Transcript", "load_transcriber"]


def load_transcriber(cfg: SttConfig) -> Transcriber:
    """The configured engine with its model from a repo id (Hugging Face cache) or a folder; raises ModelError."""
    from assistant import hub
    from assistant.errors import ModelError
    from assistant.quantization import float_dtype
    from assistant.stt.model import load_model
    from assistant.stt.transcriber import OfflineTranscriber, StreamingTranscriber

    folder = hub.resolve(cfg.model_id, "STT model")
    try:
        lm = load_model(folder, None if cfg.dtype == "auto" else float_dtype(cfg.dtype))
    except hub.MALFORMED as e:
        raise hub.malformed("STT model", cfg.model_id, e) from e
    if cfg.engine == "nemotron":
        if not lm.model.encoder.streaming:
            raise ModelError(f"stt.engine = nemotron needs a cache-aware streaming model, but {cfg.model_id} is not")
        return StreamingTranscriber(lm, cfg)
    return OfflineTranscriber(lm, cfg)
