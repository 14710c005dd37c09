"""Tiny seeded Qwen3-TTS speech-tokenizer and speaker-encoder checkpoints in the official on-disk layout.

Pure numpy (no torch, no mlx): the reference script (run in the official package's virtual environment) and our
tests both import it, so the tests rebuild exactly the weights the committed reference outputs came from. Every
tensor is drawn from `numpy.random.default_rng([seed, crc32(name)])`.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

SEED = 20260311

# Small dims, real structure: 16 quantizers, 1920 samples per frame, ConvNeXt and Snake blocks, GQA, and a
# sliding window (8) shorter than the 30-frame test sequence.
DECODER_CONFIG: dict[str, object] = {
    "codebook_size": 64,
    "codebook_dim": 16,
    "latent_dim": 32,
    "decoder_dim": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "head_dim": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "layer_scale_initial_scale": 0.01,
    "rope_theta": 10000,
    "max_position_embeddings": 8000,
    "sliding_window": 8,
    "num_quantizers": 16,
    "num_semantic_quantizers": 1,
    "semantic_codebook_size": 4096,
    "vector_quantization_hidden_dimension": 16,
    "upsample_rates": [8, 5, 4, 3],
    "upsampling_ratios": [2, 2],
    "attention_bias": False,
    "attention_dropout": 0.0,
}

# A tiny Mimi: 4 filters, hidden 32, 2 layers, 20 quantizers of which the first 16 are kept. Its configured
# sliding window (16) is shorter than the clip's 76 transformer frames: the official path ignores it (spec §5.2).
ENCODER_CONFIG: dict[str, object] = {
    "sampling_rate": 24000,
    "frame_rate": 12.5,
    "audio_channels": 1,
    "hidden_size": 32,
    "num_filters": 4,
    "num_residual_layers": 1,
    "upsampling_ratios": [8, 6, 5, 4],
    "kernel_size": 7,
    "last_kernel_size": 3,
    "residual_kernel_size": 3,
    "dilation_growth_rate": 2,
    "use_causal_conv": True,
    "pad_mode": "constant",
    "compress": 2,
    "trim_right_ratio": 1.0,
    "codebook_size": 64,
    "codebook_dim": 16,
    "num_quantizers": 20,
    "use_conv_shortcut": False,
    "vector_quantization_hidden_dimension": 16,
    "num_semantic_quantizers": 1,
    "upsample_groups": 32,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 8,
    "hidden_act": "gelu",
    "max_position_embeddings": 8000,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 16,
    "layer_scale_initial_scale": 0.01,
    "attention_bias": False,
    "use_cache": False,
    "use_streaming": False,
}

SPEECH_TOKENIZER_CONFIG: dict[str, object] = {
    "architectures": ["Qwen3TTSTokenizerV2Model"],
    "model_type": "qwen3_tts_tokenizer_12hz",
    "encoder_valid_num_quantizers": 16,
    "input_sample_rate": 24000,
    "output_sample_rate": 24000,
    "decode_upsample_rate": 1920,
    "encode_downsample_rate": 1920,
    "decoder_config": DECODER_CONFIG,
    "encoder_config": ENCODER_CONFIG,
}

# The speaker encoder section of the main config.json (ECAPA-TDNN); enc_channels[-1] = 3 * the block width.
SPEAKER_ENCODER_CONFIG: dict[str, object] = {
    "mel_dim": 128,
    "enc_dim": 24,
    "enc_channels": [32, 32, 32, 32, 96],
    "enc_kernel_sizes": [5, 3, 3, 3, 1],
    "enc_dilations": [1, 2, 3, 4, 1],
    "enc_attention_channels": 16,
    "enc_res2net_scale": 4,
    "enc_se_channels": 8,
    "sample_rate": 24000,
}

# Roles decide the draw: weights scale with 1/sqrt(fan_in); the rest keep the signal in a useful range.
Spec = tuple[str, tuple[int, ...], str]


def _conv(name: str, out: int, inp: int, k: int, bias: bool = True) -> list[Spec]:
    specs: list[Spec] = [(f"{name}.weight", (out, inp, k), "weight")]
    return [*specs, (f"{name}.bias", (out,), "bias")] if bias else specs


def _linear(name: str, out: int, inp: int, bias: bool) -> list[Spec]:
    specs: list[Spec] = [(f"{name}.weight", (out, inp), "weight")]
    return [*specs, (f"{name}.bias", (out,), "bias")] if bias else specs


def _snake(name: str, ch: int) -> list[Spec]:
    return [(f"{name}.alpha", (ch,), "snake"), (f"{name}.beta", (ch,), "snake")]


def decoder_specs(c: dict) -> list[Spec]:
    """Every tensor of the official `Qwen3TTSTokenizerV2Decoder` state dict (keys without the `decoder.` prefix)."""
    s: list[Spec] = []
    dim, cbd, bins = c["codebook_dim"] // 2, c["codebook_dim"], c["codebook_size"]
    for part, n in (("rvq_first", 1), ("rvq_rest", c["num_quantizers"] - 1)):
        for q in range(n):
            base = f"quantizer.{part}.vq.layers.{q}._codebook"
            s += [(f"{base}.cluster_usage", (bins,), "usage"), (f"{base}.embedding_sum", (bins, dim), "codebook")]
        s += _conv(f"quantizer.{part}.input_proj", dim, cbd, 1, bias=False)
        s += _conv(f"quantizer.{part}.output_proj", cbd, dim, 1, bias=False)
    lat, hid, hd = c["latent_dim"], c["hidden_size"], c["head_dim"]
    s += _conv("pre_conv.conv", lat, cbd, 3)
    t = "pre_transformer"
    s += _linear(f"{t}.input_proj", hid, lat, True) + _linear(f"{t}.output_proj", lat, hid, True)
    for i in range(c["num_hidden_layers"]):
        ly = f"{t}.layers.{i}"
        qd, kvd = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
        s += _linear(f"{ly}.self_attn.q_proj", qd, hid, False) + _linear(f"{ly}.self_attn.k_proj", kvd, hid, False)
        s += _linear(f"{ly}.self_attn.v_proj", kvd, hid, False) + _linear(f"{ly}.self_attn.o_proj", hid, qd, False)
        inter = c["intermediate_size"]
        s += _linear(f"{ly}.mlp.gate_proj", inter, hid, False) + _linear(f"{ly}.mlp.up_proj", inter, hid, False)
        s += _linear(f"{ly}.mlp.down_proj", hid, inter, False)
        s += [
            (f"{ly}.input_layernorm.weight", (hid,), "norm"),
            (f"{ly}.post_attention_layernorm.weight", (hid,), "norm"),
        ]
        s += [(f"{ly}.self_attn_layer_scale.scale", (hid,), "scale"), (f"{ly}.mlp_layer_scale.scale", (hid,), "scale")]
    s += [(f"{t}.norm.weight", (hid,), "norm")]
    for i, r in enumerate(c["upsampling_ratios"]):
        s += [(f"upsample.{i}.0.conv.weight", (lat, lat, r), "tweight"), (f"upsample.{i}.0.conv.bias", (lat,), "bias")]
        cn = f"upsample.{i}.1"
        s += _conv(f"{cn}.dwconv.conv", lat, 1, 7)
        s += [(f"{cn}.norm.weight", (lat,), "norm"), (f"{cn}.norm.bias", (lat,), "bias")]
        s += _linear(f"{cn}.pwconv1", 4 * lat, lat, True) + _linear(f"{cn}.pwconv2", lat, 4 * lat, True)
        s += [(f"{cn}.gamma", (lat,), "scale")]
    dd = c["decoder_dim"]
    s += _conv("decoder.0.conv", dd, lat, 7)
    for i, r in enumerate(c["upsample_rates"]):
        cin, cout, b = dd // 2**i, dd // 2 ** (i + 1), f"decoder.{i + 1}.block"
        s += _snake(f"{b}.0", cin)
        s += [(f"{b}.1.conv.weight", (cin, cout, 2 * r), "tweight"), (f"{b}.1.conv.bias", (cout,), "bias")]
        for j in (2, 3, 4):
            s += _snake(f"{b}.{j}.act1", cout) + _conv(f"{b}.{j}.conv1.conv", cout, cout, 7)
            s += _snake(f"{b}.{j}.act2", cout)
            s += [
                (f"{b}.{j}.conv2.conv.weight", (cout, cout, 1), "small"),
                (f"{b}.{j}.conv2.conv.bias", (cout,), "bias"),
            ]
    n = len(c["upsample_rates"])
    s += _snake(f"decoder.{n + 1}", dd // 2**n)
    s += [(f"decoder.{n + 2}.conv.weight", (1, dd // 2**n, 7), "small"), (f"decoder.{n + 2}.conv.bias", (1,), "bias")]
    return s


def encoder_specs(c: dict) -> list[Spec]:
    """Every tensor of the official encoder (HF `MimiModel` without its decoder parts), keys without `encoder.`."""
    s: list[Spec] = []
    f = c["num_filters"]
    s += _conv("encoder.layers.0.conv", f, c["audio_channels"], c["kernel_size"])
    idx, scale = 1, 1
    for ratio in reversed(c["upsampling_ratios"]):
        dim = scale * f
        for _ in range(c["num_residual_layers"]):
            hidden = dim // c["compress"]
            s += _conv(f"encoder.layers.{idx}.block.1.conv", hidden, dim, c["residual_kernel_size"])
            s += _conv(f"encoder.layers.{idx}.block.3.conv", dim, hidden, 1)
            idx += 1
        s += _conv(f"encoder.layers.{idx + 1}.conv", dim * 2, dim, 2 * ratio)
        idx += 2
        scale *= 2
    s += _conv(f"encoder.layers.{idx + 1}.conv", c["hidden_size"], scale * f, c["last_kernel_size"])
    hid, hd = c["hidden_size"], c["head_dim"]
    for i in range(c["num_hidden_layers"]):
        ly = f"encoder_transformer.layers.{i}"
        qd, kvd = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
        s += _linear(f"{ly}.self_attn.q_proj", qd, hid, False) + _linear(f"{ly}.self_attn.k_proj", kvd, hid, False)
        s += _linear(f"{ly}.self_attn.v_proj", kvd, hid, False) + _linear(f"{ly}.self_attn.o_proj", hid, qd, False)
        s += _linear(f"{ly}.mlp.fc1", c["intermediate_size"], hid, False)
        s += _linear(f"{ly}.mlp.fc2", hid, c["intermediate_size"], False)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            s += [(f"{ly}.{norm}.weight", (hid,), "norm"), (f"{ly}.{norm}.bias", (hid,), "bias")]
        s += [(f"{ly}.self_attn_layer_scale.scale", (hid,), "scale"), (f"{ly}.mlp_layer_scale.scale", (hid,), "scale")]
    s += _conv("downsample.conv", hid, hid, 4, bias=False)
    vqd, bins, cbd = c["vector_quantization_hidden_dimension"], c["codebook_size"], c["codebook_dim"]
    nsem = c["num_semantic_quantizers"]
    for part, n in (("semantic", nsem), ("acoustic", c["num_quantizers"] - nsem)):
        base = f"quantizer.{part}_residual_vector_quantizer"
        s += _conv(f"{base}.input_proj", vqd, hid, 1, bias=False) + _conv(
            f"{base}.output_proj", hid, vqd, 1, bias=False
        )
        for q in range(n):
            cb = f"{base}.layers.{q}.codebook"
            s += [(f"{cb}.initialized", (1,), "ones"), (f"{cb}.cluster_usage", (bins,), "usage")]
            s += [(f"{cb}.embed_sum", (bins, cbd), "codebook")]
    return s


def speaker_encoder_specs(c: dict) -> list[Spec]:
    """Every tensor of the official `Qwen3TTSSpeakerEncoder` (keys without `speaker_encoder.`)."""
    ch, ks, scale = c["enc_channels"], c["enc_kernel_sizes"], c["enc_res2net_scale"]
    s = _conv("blocks.0.conv", ch[0], c["mel_dim"], ks[0])
    for i in range(1, len(ch) - 1):
        b = f"blocks.{i}"
        s += _conv(f"{b}.tdnn1.conv", ch[i], ch[i - 1], 1)
        for j in range(scale - 1):
            s += _conv(f"{b}.res2net_block.blocks.{j}.conv", ch[i] // scale, ch[i] // scale, ks[i])
        s += _conv(f"{b}.tdnn2.conv", ch[i], ch[i], 1)
        s += _conv(f"{b}.se_block.conv1", c["enc_se_channels"], ch[i], 1)
        s += _conv(f"{b}.se_block.conv2", ch[i], c["enc_se_channels"], 1)
    s += _conv("mfa.conv", ch[-1], ch[-1], ks[-1])
    s += _conv("asp.tdnn.conv", c["enc_attention_channels"], ch[-1] * 3, 1)
    s += _conv("asp.conv", ch[-1], c["enc_attention_channels"], 1)
    s += _conv("fc", c["enc_dim"], ch[-1] * 2, 1)
    return s


def draw(specs: list[Spec], seed: int = SEED, prefix: str = "") -> dict[str, np.ndarray]:
    """float32 tensors keyed `prefix + name`, each from `default_rng([seed, crc32(prefix + name)])`."""
    out: dict[str, np.ndarray] = {}
    for name, shape, role in specs:
        key = prefix + name
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        if role in ("weight", "tweight", "small"):
            # a transposed conv with k = 2s sums two input samples into each output sample
            fan_in = 2 * shape[0] if role == "tweight" else int(np.prod(shape[1:]))
            a = rng.standard_normal(shape) / np.sqrt(fan_in) * (0.25 if role == "small" else 1.0)
        elif role == "usage":
            a = rng.uniform(0.5, 2.0, shape)
        elif role == "codebook":
            a = rng.standard_normal(shape)
        elif role == "snake":
            a = 0.3 * rng.standard_normal(shape)
        elif role == "norm":
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif role == "scale":
            a = rng.uniform(0.1, 0.5, shape)
        elif role == "ones":
            a = np.ones(shape)
        else:  # bias
            a = 0.1 * rng.standard_normal(shape)
        out[key] = a.astype(np.float32)
    return out


def speech_tokenizer_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """The whole `speech_tokenizer/model.safetensors` in the official key layout."""
    w = draw(decoder_specs(DECODER_CONFIG), seed, "decoder.")
    w.update(draw(encoder_specs(ENCODER_CONFIG), seed, "encoder."))
    return w


def speaker_encoder_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """The `speaker_encoder.*` tensors of a Base checkpoint, official (PyTorch) layout, keys with the prefix."""
    return draw(speaker_encoder_specs(SPEAKER_ENCODER_CONFIG), seed, "speaker_encoder.")


def test_codes(seed: int = SEED, frames: int = 30) -> np.ndarray:
    """Seeded codes [1, 16, frames] in [0, codebook_size)."""
    rng = np.random.default_rng([seed, zlib.crc32(b"codes")])
    n_q, bins = int(DECODER_CONFIG["num_quantizers"]), int(DECODER_CONFIG["codebook_size"])  # type: ignore[call-overload]
    return rng.integers(0, bins, (1, n_q, frames)).astype(np.int64)


def save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write float32 tensors in the safetensors format (8-byte header length, JSON header, raw data)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset, blobs = 0, []
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def write_speech_tokenizer(folder: Path, seed: int = SEED) -> Path:
    """Write `config.json` + `model.safetensors` of a tiny speech tokenizer into `folder` (created); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(SPEECH_TOKENIZER_CONFIG, indent=2))
    save_safetensors(folder / "model.safetensors", speech_tokenizer_weights(seed))
    return folder
