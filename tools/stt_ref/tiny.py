"""Tiny seeded ASR checkpoints in the mlx-community on-disk layout, shared by the reference script and the tests.

numpy only (plus safetensors.numpy to write): config.json is the NeMo configuration (Parakeet: the raw NeMo layout of
mlx-community/parakeet-tdt-*; Nemotron: mlx-audio's layout of mlx-community/nemotron-3.5-asr-streaming-*), and the
weights carry NeMo key names in MLX layout (conv (out, k..., in); LSTM Wx/Wh/bias with the two biases summed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 32
D_MODEL = 32
HEADS = 4
LAYERS = 2
CHANNELS = 8
PRED = 24
KERNEL = 9
LEFT = 12  # Nemotron's left attention context in encoder frames (70 in the real model)
LOOKAHEADS = (5, 3, 1, 0)  # right contexts; chunk sizes 6, 4, 2, 1 frames all divide LEFT
STREAM_LOOKAHEADS = (0, 1, 3)  # chunk sizes (80, 160, 320 ms) compared for Nemotron streaming
OFFLINE_LOOKAHEAD = 1  # the right context of the offline (whole-utterance) Nemotron comparison
LATTICE_TOKENS = 24  # prefixes of the greedy tokens in the joint-logit lattice
DURATIONS = (0, 1, 2, 3, 4)
PROMPTS = {"auto": 5, "en-US": 1, "de-DE": 2, "fr-FR": 3}
NUM_PROMPTS = 8
PROMPT_HIDDEN = 64

WORDS = ["▁the", "▁a", "▁cat", "▁sat", "▁on", "▁mat", "▁hello", "▁world", "▁yes", "▁no", "s", "ed", "ing", "."]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
VOCAB = ["<unk>", *WORDS, *LETTERS, "<0xC3>", "<0xA9>", "<en-US>", "<de-DE>"]  # 46 pieces; blank = 46
KINDS = ("parakeet", "nemotron", "nemotron_en")


def _encoder_cfg(kind: str) -> dict[str, Any]:
    streaming = kind != "parakeet"
    return {
        "feat_in": FEATURES,
        "n_layers": LAYERS,
        "d_model": D_MODEL,
        "n_heads": HEADS,
        "ff_expansion_factor": 4,
        "subsampling": "dw_striding",
        "subsampling_factor": 8,
        "subsampling_conv_channels": CHANNELS,
        "conv_kernel_size": KERNEL,
        "self_attention_model": "rel_pos",
        "pos_emb_max_len": 5000,
        "use_bias": True,
        "xscaling": True,
        "causal_downsampling": streaming,
        "conv_context_size": "causal" if streaming else None,
        "conv_norm_type": "layer_norm" if streaming else "batch_norm",
        "att_context_style": "chunked_limited" if streaming else "regular",
        "att_context_size": [[LEFT, r] for r in LOOKAHEADS] if streaming else [-1, -1],
    }


def config(kind: str) -> dict[str, Any]:
    """config.json of a tiny checkpoint of `kind` (one of KINDS)."""
    v = len(VOCAB)
    pre = {
        "sample_rate": 16000,
        "features": FEATURES,
        "n_fft": 512,
        "window_size": 0.025,
        "window_stride": 0.01,
        "window": "hann",
        "dither": 1e-5,
        "pad_to": 0,
        "pad_value": 0.0,
    }
    if kind == "parakeet":
        return {
            "target": "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel",
            "preprocessor": {**pre, "normalize": "per_feature", "log": True},
            "encoder": _encoder_cfg(kind),
            "decoder": {"blank_as_pad": True, "vocab_size": v, "prednet": {"pred_hidden": PRED, "pred_rnn_layers": 2}},
            "joint": {
                "num_classes": v,
                "vocabulary": VOCAB,
                "num_extra_outputs": len(DURATIONS),
                "jointnet": {
                    "joint_hidden": PRED,
                    "activation": "relu",
                    "encoder_hidden": D_MODEL,
                    "pred_hidden": PRED,
                },
            },
            "decoding": {"model_type": "tdt", "durations": list(DURATIONS), "greedy": {"max_symbols": 10}},
            "model_defaults": {"tdt_durations": list(DURATIONS)},
        }
    cfg: dict[str, Any] = {
        "model_type": "nemotron_asr",
        "preprocessor": {**pre, "preemph": 0.97, "normalize": "NA", "log_zero_guard_value": 2.0**-24},
        "encoder": _encoder_cfg(kind),
        "decoder": {"pred_hidden": PRED, "pred_rnn_layers": 2, "vocab_size": v, "blank_as_pad": True},
        "joint": {
            "joint_hidden": PRED,
            "activation": "relu",
            "encoder_hidden": D_MODEL,
            "pred_hidden": PRED,
            "num_classes": v,
        },
        "vocabulary": VOCAB,
        "default_language": "auto",
        "default_att_context_size": [LEFT, LOOKAHEADS[0]],
        "max_symbols": 10,
    }
    if kind == "nemotron":
        cfg["prompt"] = {"num_prompts": NUM_PROMPTS, "prompt_hidden": PROMPT_HIDDEN, "prompt_dictionary": PROMPTS}
    return cfg


def weights(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights with NeMo key names in MLX layout, drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}

    def lin(name: str, out: int, inp: int, bias: bool = True, gain: float = 1.0) -> None:
        w[f"{name}.weight"] = (rng.standard_normal((out, inp)) * gain / np.sqrt(inp)).astype(np.float32)
        if bias:
            w[f"{name}.bias"] = (rng.standard_normal(out) * 0.1).astype(np.float32)

    def norm(name: str, dims: int) -> None:
        w[f"{name}.weight"] = (1.0 + 0.1 * rng.standard_normal(dims)).astype(np.float32)
        w[f"{name}.bias"] = (0.1 * rng.standard_normal(dims)).astype(np.float32)

    def conv(name: str, shape: tuple[int, ...], fan_in: int) -> None:
        w[f"{name}.weight"] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        w[f"{name}.bias"] = (0.1 * rng.standard_normal(shape[0])).astype(np.float32)

    streaming = kind != "parakeet"
    c, d, k = CHANNELS, D_MODEL, KERNEL
    conv("encoder.pre_encode.conv.0", (c, 3, 3, 1), 9)
    for i in (2, 5):
        conv(f"encoder.pre_encode.conv.{i}", (c, 3, 3, 1), 9)
        conv(f"encoder.pre_encode.conv.{i + 1}", (c, 1, 1, c), c)
    f = FEATURES
    for _ in range(3):
        f = (f + 3 - 3) // 2 + 1 if streaming else (f + 2 - 3) // 2 + 1
    lin("encoder.pre_encode.out", d, c * f)
    for n in range(LAYERS):
        p = f"encoder.layers.{n}"
        for ff in ("feed_forward1", "feed_forward2"):
            norm(f"{p}.norm_{ff}", d)
            lin(f"{p}.{ff}.linear1", 4 * d, d)
            lin(f"{p}.{ff}.linear2", d, 4 * d)
        norm(f"{p}.norm_self_att", d)
        for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
            lin(f"{p}.self_attn.{name}", d, d)
        lin(f"{p}.self_attn.linear_pos", d, d, bias=False)
        w[f"{p}.self_attn.pos_bias_u"] = (0.1 * rng.standard_normal((HEADS, d // HEADS))).astype(np.float32)
        w[f"{p}.self_attn.pos_bias_v"] = (0.1 * rng.standard_normal((HEADS, d // HEADS))).astype(np.float32)
        norm(f"{p}.norm_conv", d)
        conv(f"{p}.conv.pointwise_conv1", (2 * d, 1, d), d)
        conv(f"{p}.conv.depthwise_conv", (d, k, 1), k)
        norm(f"{p}.conv.batch_norm", d)
        if not streaming:
            w[f"{p}.conv.batch_norm.running_mean"] = (0.1 * rng.standard_normal(d)).astype(np.float32)
            w[f"{p}.conv.batch_norm.running_var"] = rng.uniform(0.5, 1.5, d).astype(np.float32)
        conv(f"{p}.conv.pointwise_conv2", (d, 1, d), d)
        norm(f"{p}.norm_out", d)
    if kind == "nemotron":
        lin("prompt_kernel.0", PROMPT_HIDDEN, d + NUM_PROMPTS)
        lin("prompt_kernel.2", d, PROMPT_HIDDEN)
    v = len(VOCAB)
    embed = rng.standard_normal((v + 1, PRED)).astype(np.float32)
    embed[v] = 0.0  # NeMo's blank_as_pad: the blank (start) token embeds to zeros
    w["decoder.prediction.embed.weight"] = embed
    for n in range(2):
        s = 1.0 / np.sqrt(PRED)
        w[f"decoder.prediction.dec_rnn.lstm.{n}.Wx"] = (rng.standard_normal((4 * PRED, PRED)) * s).astype(np.float32)
        w[f"decoder.prediction.dec_rnn.lstm.{n}.Wh"] = (rng.standard_normal((4 * PRED, PRED)) * s).astype(np.float32)
        w[f"decoder.prediction.dec_rnn.lstm.{n}.bias"] = (0.1 * rng.standard_normal(4 * PRED)).astype(np.float32)
    lin("joint.enc", PRED, d, gain=3.0)  # frames, more than the prediction state, pick the tokens
    lin("joint.pred", PRED, PRED, gain=0.5)
    extra = len(DURATIONS) if kind == "parakeet" else 0
    lin("joint.joint_net.2", v + 1 + extra, PRED, gain=1.0)
    w["joint.joint_net.2.bias"][v] += 1.0  # a blank bias, so the random decoder pauses as well as emits
    return w


def write(folder: Path, kind: str, seed: int = 0) -> Path:
    """Write config.json and model.safetensors of a tiny `kind` checkpoint into `folder`."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config(kind), ensure_ascii=False, indent=1), encoding="utf-8")
    save_file(weights(kind, seed), str(folder / "model.safetensors"))
    return folder


def audio(seed: int = 1, seconds: float = 1.7, rate: int = 16000) -> np.ndarray:
    """A seeded speech-like test signal: a gliding harmonic tone with syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(h * phase) / h for h in range(1, 12))
    envelope = 0.1 + 0.9 * np.sin(2 * np.pi * 3.7 * t) ** 2  # syllables: a 20 dB swing
    x = 0.2 * voice * envelope + 0.003 * rng.standard_normal(len(t))
    return x.astype(np.float32)
