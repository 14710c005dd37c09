"""Load the `speech_tokenizer/` folder of a Qwen3-TTS 12 Hz checkpoint: the codec decoder and the Mimi encoder.

The folder holds `config.json` (model_type `qwen3_tts_tokenizer_12hz`) and `model.safetensors` in the official
PyTorch key layout; the mlx-community conversions copy it verbatim (spec §6.3). Weights are converted by rule:
codebooks become embedding_sum / clamp(cluster_usage, 1e-5); every Conv1d goes [out, in, k] -> [out, k, in]; every
ConvTranspose1d goes [in, out, k] -> [out, k, in]. Which tensors are convolutions follows from the key names,
never from shapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from assistant.errors import ModelError
from assistant.tts.qwen3.codec import CodecDecoder, DecoderConfig
from assistant.tts.qwen3.tokenizer_encoder import EncoderConfig, TokenizerEncoder

MODEL_TYPE = "qwen3_tts_tokenizer_12hz"

# Decoder ConvTranspose1d weights: `upsample.{i}.0.conv` and the second layer of each vocoder block.
_DECODER_TRANSCONV = re.compile(r"^(upsample\.\d+\.0|decoder\.\d+\.block\.1)\.conv\.weight$")
# Decoder Conv1d weights: the causal convs (`….conv.conv.weight`, `pre_conv`, `dwconv`) and the 1x1 projections.
_DECODER_CONV = re.compile(r"(\.conv\.weight|_proj\.weight)$")


@dataclass
class SpeechTokenizer:
    """The loaded speech tokenizer; `encoder` is None when the folder has no `encoder.*` weights."""

    decoder: CodecDecoder
    encoder: TokenizerEncoder | None
    sample_rate: int
    samples_per_frame: int


def sanitize_decoder(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Official `decoder.*` tensors (prefix removed) -> `CodecDecoder` parameters."""
    out: dict[str, mx.array] = {}
    usage = {k: v for k, v in weights.items() if k.endswith("._codebook.cluster_usage")}
    for key, w in weights.items():
        if key in usage:
            continue
        if key.endswith("._codebook.embedding_sum"):
            base = key.removesuffix("._codebook.embedding_sum")
            u = usage.get(f"{base}._codebook.cluster_usage")
            if u is None:
                raise KeyError(f"{base}._codebook.cluster_usage")
            out[f"{base}.codebook.embed"] = w / mx.maximum(u, 1e-5)[:, None]
        elif _DECODER_TRANSCONV.search(key):
            out[key] = w.transpose(1, 2, 0)
        elif _DECODER_CONV.search(key) and not key.startswith("pre_transformer."):
            out[key] = w.transpose(0, 2, 1)
        else:
            out[key] = w
    return out


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ModelError(
            f"{path} is missing; the speech tokenizer folder is incomplete, download the model again"
        ) from e
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON ({e}); download the model again") from e
    if not isinstance(cfg, dict) or cfg.get("model_type") != MODEL_TYPE:
        got = cfg.get("model_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise ModelError(f"{path} has model_type {got!r}, expected {MODEL_TYPE!r}; point tts.model at a 12 Hz model")
    if not isinstance(cfg.get("decoder_config"), dict):
        raise ModelError(f"{path} has no decoder_config section; download the model again")
    return cfg


def _read_weights(folder: Path) -> dict[str, mx.array]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder / 'model.safetensors'} is missing; download the model again")
    weights: dict[str, mx.array] = {}
    for f in files:
        try:
            loaded = mx.load(str(f))
        except Exception as e:  # mlx raises RuntimeError/ValueError for truncated or foreign files
            raise ModelError(f"{f} is not a readable safetensors file ({e}); download the model again") from e
        assert isinstance(loaded, dict)
        weights.update(loaded)
    return weights


def load_speech_tokenizer(folder: Path) -> SpeechTokenizer:
    """The decoder (and the encoder, if present) of a `speech_tokenizer/` folder, in float32. Raises ModelError."""
    folder = Path(folder)
    cfg = _read_config(folder)
    weights = _read_weights(folder)
    try:
        dcfg = DecoderConfig.from_dict(cfg["decoder_config"])
    except (TypeError, ValueError, KeyError) as e:
        raise ModelError(f"{folder / 'config.json'}: bad decoder_config ({e}); download the model again") from e
    decoder = CodecDecoder(dcfg)
    dec_w = {k.removeprefix("decoder."): v.astype(mx.float32) for k, v in weights.items() if k.startswith("decoder.")}
    try:
        decoder.load_weights(list(sanitize_decoder(dec_w).items()), strict=True)
    except (ValueError, KeyError) as e:
        raise ModelError(f"{folder / 'model.safetensors'}: decoder weights do not match config.json ({e})") from e
    decoder.eval()
    decoder.fuse()

    encoder = None
    enc_w = {k.removeprefix("encoder."): v.astype(mx.float32) for k, v in weights.items() if k.startswith("encoder.")}
    if enc_w:
        if not isinstance(cfg.get("encoder_config"), dict):
            raise ModelError(f"{folder / 'config.json'} has encoder weights but no encoder_config; download it again")
        try:
            ecfg = EncoderConfig.from_dict(cfg["encoder_config"], int(cfg.get("encoder_valid_num_quantizers", 16)))
            encoder = TokenizerEncoder(ecfg)
            encoder.load_weights(list(TokenizerEncoder.sanitize(enc_w).items()), strict=True)
        except (TypeError, ValueError, KeyError) as e:
            raise ModelError(f"{folder / 'model.safetensors'}: encoder weights do not match config.json ({e})") from e
        encoder.eval()
    rate = int(cfg.get("output_sample_rate", 24000))
    return SpeechTokenizer(decoder, encoder, rate, int(cfg.get("decode_upsample_rate", dcfg.samples_per_frame)))
