"""Talker + the tts-codec engineer's speech tokenizer, end to end (skipped until both branches are merged).

Checks the contract between the two halves: streamed chunks equal one full decoder forward of the generated
codes (with in-context cloning, of reference + generated codes minus the reference audio, spec 5.3), and clone
profiles run the real speaker encoder and tokenizer encoder once, then come from the cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

import tools.qwen3_tts_tokenizer_ref.tiny as ctiny
from assistant.config import TtsConfig
from assistant.tts.qwen3.generate import generate_codes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def full_checkpoint(checkpoints: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny Base checkpoint plus a tiny speech tokenizer whose codebooks hold all 2048 codes."""
    folder = tmp_path / "base"
    shutil.copytree(checkpoints("base"), folder)
    monkeypatch.setitem(ctiny.DECODER_CONFIG, "codebook_size", 2048)
    monkeypatch.setitem(ctiny.ENCODER_CONFIG, "codebook_size", 2048)
    ctiny.write_speech_tokenizer(folder / "speech_tokenizer")
    voices = tmp_path / "voices"
    (voices / "ref").mkdir(parents=True)
    for name in ("clone.toml", "clone_icl.toml", "ref/espeak_en.wav"):
        shutil.copy(REPO / "voices" / name, voices / name)
    return folder


@pytest.mark.parametrize("voice_name", ["clone", "clone_icl"])
def test_streamed_chunks_equal_full_decode(full_checkpoint: Path, voice_name: str) -> None:
    """Chunks from Utterance.step() equal the decoder's full forward of the same codes (<= 1e-5)."""
    from assistant.tts.qwen3 import Qwen3TTS

    cfg = TtsConfig(
        model=str(full_checkpoint),
        voices_dir=str(full_checkpoint.parent / "voices"),
        temperature=0.0,
        subtalker_temperature=0.0,
        max_frames=12,
        chunk_frames=3,
    )
    tts = Qwen3TTS.load(cfg)
    voice = tts.voice(voice_name)
    from assistant.paths import voice_cache_dir

    assert list(voice_cache_dir().glob(f"{voice_name}-*.npz"))  # the user's cache, not the profiles' folder
    assert not (full_checkpoint.parent / "voices" / ".cache").exists()
    utt = tts.start(voice, "Testing the whole pipeline with a real decoder.")
    chunks = []
    while not utt.done:
        chunk = utt.step()
        if chunk is not None:
            chunks.append(chunk)
    audio = np.concatenate(chunks)
    # the same greedy codes again, code-level, to decode in one forward
    gen = tts.frames(voice, "Testing the whole pipeline with a real decoder.")
    codes = np.stack(list(generate_codes(gen)))
    ref = voice.prompt.ref_codes
    all_codes = codes if ref is None else np.concatenate([ref, codes])
    full = np.array(tts.speech_tokenizer.decoder(mx.array(all_codes.T[None], dtype=mx.int32))).reshape(-1)
    skip = 0 if ref is None else ref.shape[0] * 1920
    assert audio.shape == (codes.shape[0] * 1920,)
    assert np.abs(audio - full[skip:]).max() <= 1e-5


def test_speaker_encoder_same_in_both_layouts(checkpoints: Any) -> None:
    """The official and mlx-community layouts (told apart by rule) give the same x-vector for a clip."""
    from assistant.tts.qwen3.load import load_model, load_speaker_encoder
    from assistant.tts.voices import read_wav_24k

    wav = read_wav_24k(REPO / "voices" / "ref" / "espeak_en.wav")
    vecs = []
    for layout in ("pytorch", "mlx"):
        lm = load_model(checkpoints("base", layout))
        assert lm.layout == layout
        enc = load_speaker_encoder(lm)
        assert enc is not None
        vecs.append(np.array(enc.embed(wav)))
    assert vecs[0].shape == (64,)
    assert np.abs(vecs[0] - vecs[1]).max() <= 1e-5
