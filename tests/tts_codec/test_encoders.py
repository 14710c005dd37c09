"""Speaker encoder (x-vector, mel front end) and tokenizer encoder (Mimi codes) against the official code."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from assistant.errors import InputError
from assistant.tts.qwen3.speaker_encoder import SpeakerEncoder, SpeakerEncoderConfig, mel_features, mel_filterbank
from assistant.tts.qwen3.speech_tokenizer import SpeechTokenizer
from tools.qwen3_tts_tokenizer_ref import tiny

from .conftest import FIXTURES


def _speaker_encoder(pytorch_layout: bool) -> SpeakerEncoder:
    cfg = SpeakerEncoderConfig.from_dict({**tiny.SPEAKER_ENCODER_CONFIG, "unknown_key": 1})
    enc = SpeakerEncoder(cfg)
    weights = {k.removeprefix("speaker_encoder."): mx.array(v) for k, v in tiny.speaker_encoder_weights().items()}
    if not pytorch_layout:  # an mlx-community file: conv weights already [out, k, in]
        weights = {k: (v.transpose(0, 2, 1) if k.endswith(".weight") else v) for k, v in weights.items()}
    enc.load_weights(list(SpeakerEncoder.sanitize(weights, pytorch_layout).items()), strict=True)
    return enc


def test_mel_filterbank_matches_librosa() -> None:
    """Our Slaney filterbank equals librosa.filters.mel(sr=24000, n_fft=1024, n_mels=128, fmax=12000) to 1e-7."""
    ref = np.load(FIXTURES / "mel_filterbank.npz")["filterbank"]
    ours = mel_filterbank()
    assert ours.shape == ref.shape == (128, 513)
    assert np.abs(ours - ref).max() <= 1e-7


def test_mel_features_match_official(clip: np.ndarray) -> None:
    """Our numpy log-mel equals the official torch one: <= 1e-4 where the log-mel is above -7 (65% of bins), and
    <= 1e-3 in near-silent bins, where torch's float32 STFT rounding dominates (ours is float64)."""
    ref = np.load(FIXTURES / "speaker_mel.npy")
    ours = mel_features(clip)
    assert ours.shape == ref.shape == (284, 128)
    diff = np.abs(ours - ref)
    assert diff[ref > -7.0].max() <= 1e-4
    assert diff.max() <= 1e-3
    assert np.median(diff) <= 1e-5


def test_xvector_matches_official(clip: np.ndarray) -> None:
    """The x-vector from our mel and ECAPA-TDNN equals the official one within 1e-4 (fp32)."""
    ref = np.load(FIXTURES / "speaker_xvector.npy")
    ours = np.array(_speaker_encoder(True).embed(clip))
    assert ours.shape == ref.shape == (24,)
    assert np.abs(ours - ref).max() <= 1e-4


def test_xvector_from_official_mel_matches(clip: np.ndarray) -> None:
    """Fed the official mel features, the network alone matches the official x-vector within 1e-4."""
    ref = np.load(FIXTURES / "speaker_xvector.npy")
    mel = mx.array(np.load(FIXTURES / "speaker_mel.npy"))[None]
    assert np.abs(np.array(_speaker_encoder(True)(mel)[0]) - ref).max() <= 1e-4


def test_mlx_layout_weights_give_the_same_xvector(clip: np.ndarray) -> None:
    """Weights already in MLX conv layout (pytorch_layout=False) load to the identical embedding."""
    a = np.array(_speaker_encoder(True).embed(clip))
    b = np.array(_speaker_encoder(False).embed(clip))
    assert np.array_equal(a, b)


def test_speaker_encoder_rejects_bad_audio() -> None:
    """Too-short, multi-channel, integer and non-finite audio raise InputError."""
    enc = _speaker_encoder(True)
    for bad in (np.zeros(100, np.float32), np.zeros((2, 4800), np.float32), np.zeros(4800, np.int16)):
        with pytest.raises(InputError, match="24 kHz"):
            enc.embed(bad)
    with pytest.raises(InputError, match="NaN"):
        enc.embed(np.full(4800, np.nan, np.float32))


def test_tokenizer_encoder_codes_identical_to_official(tokenizer: SpeechTokenizer, clip: np.ndarray) -> None:
    """Codes of the clip equal the official `encode` exactly: first 16 quantizers, ceil(n / 1920) frames, full
    causal attention although the config names a 16-frame window (applying it would change ~40% of the codes)."""
    assert tokenizer.encoder is not None
    ref = np.load(FIXTURES / "encoder_codes.npy")
    ours = tokenizer.encoder.encode(clip)
    assert ours.dtype == mx.int32
    assert ours.shape == ref.shape == (-(-clip.size // 1920), 16)
    assert np.array_equal(np.array(ours), ref)
    assert len(np.unique(ref)) > 32  # codes spread over the codebooks, not a degenerate constant


def test_tokenizer_encoder_rejects_bad_audio(tokenizer: SpeechTokenizer) -> None:
    """Empty, stereo, integer and non-finite audio raise InputError."""
    assert tokenizer.encoder is not None
    for bad in (np.zeros(0, np.float32), np.zeros((2, 100), np.float32), np.zeros(100, np.int16)):
        with pytest.raises(InputError, match="mono float"):
            tokenizer.encoder.encode(bad)
    with pytest.raises(InputError, match="NaN"):
        tokenizer.encoder.encode(np.full(100, np.inf, np.float32))
