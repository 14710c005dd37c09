"""Reference outputs of the official qwen-tts 0.1.1 speech tokenizer and speaker encoder on tiny seeded weights.

Run in the reference environment (torch 2.13, transformers 4.57.3, qwen-tts 0.1.1 --no-deps, librosa):
    /work/refvenv-tts/bin/python tools/qwen3_tts_tokenizer_ref/make_fixtures.py
It writes tests/fixtures/qwen3_tts_tokenizer/: the test clip, the codes, and the official outputs (no weights: the
tests regenerate them from tools/qwen3_tts_tokenizer_ref/tiny.py).
"""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "qwen3_tts_tokenizer"
CLIP_TEXT = "Hello there. This is a short test of the voice."

sys.path.insert(0, str(REPO))
from tools.qwen3_tts_tokenizer_ref import tiny  # noqa: E402


def _stub_torchaudio() -> None:
    """qwen_tts imports torchaudio only for its 25 Hz tokenizer, and no build exists for this torch: stand it in."""
    for name in ("torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi"):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__path__ = []  # type: ignore[attr-defined]
        sys.modules[name] = mod


def espeak_clip() -> np.ndarray:
    """espeak-ng speech resampled to 24 kHz as the official wrapper does (librosa), as int16."""
    import librosa
    import soundfile as sf

    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "clip.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), CLIP_TEXT], check=True)
        audio, sr = sf.read(wav, dtype="float32")
    audio = librosa.resample(audio, orig_sr=sr, target_sr=24000)
    audio = 0.9 * audio / np.max(np.abs(audio))
    return np.round(audio * 32767).astype(np.int16)


def main() -> None:
    _stub_torchaudio()
    import torch
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSSpeakerEncoderConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSSpeakerEncoder, mel_spectrogram
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model
    from safetensors.torch import load_file

    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)

    # Speech tokenizer: the folder our loader reads, loaded strictly into the official model.
    with tempfile.TemporaryDirectory() as d:
        folder = tiny.write_speech_tokenizer(Path(d) / "speech_tokenizer")
        state = load_file(str(folder / "model.safetensors"))
        cfg_dict = json.loads((folder / "config.json").read_text())
    config = Qwen3TTSTokenizerV2Config(**{k: v for k, v in cfg_dict.items() if k != "architectures"})
    config._attn_implementation = "eager"
    config.decoder_config._attn_implementation = "eager"
    config.encoder_config._attn_implementation = "eager"
    model = Qwen3TTSTokenizerV2Model(config).eval().float()
    own = model.state_dict()
    assert set(own) == set(state), set(own) ^ set(state)
    for k, v in own.items():
        assert tuple(v.shape) == tuple(state[k].shape), (k, v.shape, state[k].shape)
    model.load_state_dict(state, strict=True)

    codes = tiny.test_codes()
    wav = model.decoder(torch.from_numpy(codes)).numpy()  # the direct forward, not chunked_decode
    np.save(OUT / "decoder_codes.npy", codes.astype(np.int16))
    np.save(OUT / "decoder_wav.npy", wav.astype(np.float32))
    print("decoder", wav.shape, "rms", float(np.sqrt((wav**2).mean())), "clipped", float((np.abs(wav) >= 1).mean()))

    clip = espeak_clip()
    np.save(OUT / "clip_24k.npy", clip)
    audio = clip.astype(np.float32) / 32768.0
    x = torch.from_numpy(audio)[None]
    enc = model.encode(x, padding_mask=torch.ones_like(x, dtype=torch.long), return_dict=True)
    ref_codes = enc.audio_codes[0].numpy()
    np.save(OUT / "encoder_codes.npy", ref_codes.astype(np.int16))
    print("encoder codes", ref_codes.shape, "distinct", len(np.unique(ref_codes)))

    # Speaker encoder: the official mel front end, then the ECAPA-TDNN.
    se_cfg = Qwen3TTSSpeakerEncoderConfig(**tiny.SPEAKER_ENCODER_CONFIG)
    se = Qwen3TTSSpeakerEncoder(se_cfg).eval().float()
    se_w = {k.removeprefix("speaker_encoder."): torch.from_numpy(v) for k, v in tiny.speaker_encoder_weights().items()}
    se.load_state_dict(se_w, strict=True)
    mels = mel_spectrogram(
        torch.from_numpy(audio).unsqueeze(0),
        n_fft=1024,
        num_mels=128,
        sampling_rate=24000,
        hop_size=256,
        win_size=1024,
        fmin=0,
        fmax=12000,
    ).transpose(1, 2)
    xvec = se(mels)[0].numpy()
    import librosa

    fb = librosa.filters.mel(sr=24000, n_fft=1024, n_mels=128, fmin=0, fmax=12000)  # what mel_spectrogram uses
    np.savez_compressed(OUT / "mel_filterbank.npz", filterbank=fb.astype(np.float32))
    np.save(OUT / "speaker_mel.npy", mels[0].numpy().astype(np.float32))
    np.save(OUT / "speaker_xvector.npy", xvec.astype(np.float32))
    print("mel", tuple(mels.shape), "xvector", xvec.shape, "norm", float(np.linalg.norm(xvec)))

    meta = {
        "seed": tiny.SEED,
        "clip_text": CLIP_TEXT,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "qwen_tts": "0.1.1",
    }
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
