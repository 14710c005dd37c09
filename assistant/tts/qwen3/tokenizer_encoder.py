"""The Qwen3-TTS 12 Hz tokenizer encoder (24 kHz audio -> codes), used for in-context voice-clone prompts.

Spec §5.2: HF `MimiModel` without its decoder parts. A causal SEANet conv encoder (ELU, residual blocks), a causal
transformer over all past frames (the configured sliding window is not applied by the official code path), a
stride-2 downsample conv whose padding replicates the edge, and a split RVQ; the first `encoder_valid_num_quantizers`
(16) codebooks are kept and the frames trimmed to ceil(samples / 1920). Attribute names equal the checkpoint keys
after the `encoder.` prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from assistant.errors import InputError, ModelError
from assistant.tts.qwen3.codec import CodebookLayer


@dataclass(frozen=True)
class EncoderConfig:
    """`encoder_config` (a MimiConfig) of speech_tokenizer/config.json; missing keys take MimiConfig's defaults."""

    valid_quantizers: int = 16
    sampling_rate: int = 24000
    frame_rate: float = 12.5
    audio_channels: int = 1
    hidden_size: int = 512
    num_filters: int = 64
    num_residual_layers: int = 1
    upsampling_ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    compress: int = 2
    codebook_size: int = 2048
    codebook_dim: int = 256
    num_quantizers: int = 32
    num_semantic_quantizers: int = 1
    vector_quantization_hidden_dimension: int = 256
    num_hidden_layers: int = 8
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    head_dim: int = 0  # 0 = hidden_size // num_attention_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    use_causal_conv: bool = True
    use_conv_shortcut: bool = False
    pad_mode: str = "constant"
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, d: dict, valid_quantizers: int = 16) -> EncoderConfig:
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        kw["valid_quantizers"] = valid_quantizers
        if not kw.get("head_dim"):
            kw["head_dim"] = int(kw.get("hidden_size", cls.hidden_size)) // int(
                kw.get("num_attention_heads", cls.num_attention_heads)
            )
        cfg = cls(**kw)
        unsupported = []
        if not cfg.use_causal_conv or cfg.use_conv_shortcut or cfg.pad_mode != "constant":
            unsupported.append("non-causal, shortcut or non-constant-padded convs")
        if cfg.hidden_act != "gelu" or cfg.audio_channels != 1:
            unsupported.append(f"hidden_act {cfg.hidden_act!r} / {cfg.audio_channels} channels")
        if not cfg.num_semantic_quantizers < cfg.valid_quantizers <= cfg.num_quantizers:
            unsupported.append(f"{cfg.valid_quantizers} valid of {cfg.num_quantizers} quantizers")
        if unsupported:
            raise ModelError(f"unsupported tokenizer encoder config: {', '.join(unsupported)}")
        return cfg

    @property
    def downsample_kernel(self) -> int:
        # 2 * (encodec frame rate / frame rate): 2 * (25 / 12.5) = 4
        encodec_rate = math.ceil(self.sampling_rate / math.prod(self.upsampling_ratios))
        return 2 * int(encodec_rate / self.frame_rate)


class MimiConv(nn.Module):
    """Causal Conv1d: left pad k_eff - stride, right pad up to a whole number of strides (zeros or edge copies)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation, bias=bias)
        self.stride = stride
        self.k_eff = (kernel - 1) * dilation + 1
        self.replicate = False

    def __call__(self, x: mx.array) -> mx.array:
        length, pad = x.shape[1], self.k_eff - self.stride
        frames = math.ceil((length - self.k_eff + pad) / self.stride + 1) - 1
        extra = frames * self.stride + self.k_eff - pad - length
        if self.replicate:
            left = mx.repeat(x[:, :1], pad, axis=1)
            right = mx.repeat(x[:, -1:], extra, axis=1)
            x = mx.concatenate([left, x, right], axis=1)
        else:
            x = mx.pad(x, [(0, 0), (pad, extra), (0, 0)])
        return self.conv(x)


class ResnetBlock(nn.Module):
    """`block`: ELU, conv k (dilated), ELU, conv 1; identity shortcut."""

    def __init__(self, cfg: EncoderConfig, dim: int, dilation: int):
        super().__init__()
        hidden = dim // cfg.compress
        self.block = [nn.ELU(), MimiConv(dim, hidden, cfg.residual_kernel_size, dilation=dilation), nn.ELU()]
        self.block.append(MimiConv(hidden, dim, 1))

    def __call__(self, x: mx.array) -> mx.array:
        h = x
        for layer in self.block:
            h = layer(h)
        return x + h


class SeanetEncoder(nn.Module):
    """`layers`: conv, then per ratio (reversed) residual blocks, ELU and a strided conv; ELU and a last conv."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        f = cfg.num_filters
        layers: list[nn.Module] = [MimiConv(cfg.audio_channels, f, cfg.kernel_size)]
        scale = 1
        for ratio in reversed(cfg.upsampling_ratios):
            dim = scale * f
            layers += [ResnetBlock(cfg, dim, cfg.dilation_growth_rate**j) for j in range(cfg.num_residual_layers)]
            layers += [nn.ELU(), MimiConv(dim, dim * 2, 2 * ratio, stride=ratio)]
            scale *= 2
        layers += [nn.ELU(), MimiConv(scale * f, cfg.hidden_size, cfg.last_kernel_size)]
        self.layers = layers

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class MimiAttention(nn.Module):
    """Full causal attention with rotate-half RoPE (the official path ignores the configured sliding window)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        h, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, h * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * hd, bias=False)
        self.o_proj = nn.Linear(h * hd, cfg.hidden_size, bias=False)
        self.heads, self.kv_heads, self.head_dim, self.theta = h, kv, hd, cfg.rope_theta

    def __call__(self, x: mx.array) -> mx.array:
        b, n, _ = x.shape
        q = self.q_proj(x).reshape(b, n, self.heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, n, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, n, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=0)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=0)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask="causal")
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))


class MimiMlp(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(nn.gelu(self.fc1(x)))


class MimiLayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = mx.full((dim,), 0.01)

    def __call__(self, x: mx.array) -> mx.array:
        return self.scale * x


class MimiLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.self_attn = MimiAttention(cfg)
        self.mlp = MimiMlp(cfg)
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.self_attn_layer_scale = MimiLayerScale(cfg.hidden_size)
        self.mlp_layer_scale = MimiLayerScale(cfg.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x)))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class MimiTransformer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.layers = [MimiLayer(cfg) for _ in range(cfg.num_hidden_layers)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class ResidualQuantizer(nn.Module):
    """input_proj (1x1 conv), then per layer the nearest codebook vector and the residual left over."""

    def __init__(self, cfg: EncoderConfig, n: int):
        super().__init__()
        vqd = cfg.vector_quantization_hidden_dimension
        self.input_proj = nn.Conv1d(cfg.hidden_size, vqd, 1, bias=False)
        self.output_proj = nn.Conv1d(vqd, cfg.hidden_size, 1, bias=False)
        self.layers = [CodebookLayer(cfg.codebook_size, cfg.codebook_dim) for _ in range(n)]

    def encode(self, x: mx.array, n: int) -> list[mx.array]:
        """x [B, T, hidden] -> n code arrays [B, T] (int32) of the first n layers."""
        residual = self.input_proj(x)
        codes = []
        for layer in self.layers[:n]:
            embed = layer.codebook.embed
            # squared distance up to the per-row constant |x|^2
            dist = (embed * embed).sum(-1) - 2.0 * (residual @ embed.T)
            idx = mx.argmin(dist, axis=-1).astype(mx.int32)
            codes.append(idx)
            residual = residual - embed[idx]
        return codes


class SplitQuantizer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        n_sem = cfg.num_semantic_quantizers
        self.n_semantic = n_sem
        self.semantic_residual_vector_quantizer = ResidualQuantizer(cfg, n_sem)
        self.acoustic_residual_vector_quantizer = ResidualQuantizer(cfg, cfg.num_quantizers - n_sem)

    def encode(self, x: mx.array, n: int) -> mx.array:
        """x [B, T, hidden] -> [B, T, n] codes; both quantizers start from the same projected input."""
        codes = self.semantic_residual_vector_quantizer.encode(x, self.n_semantic)
        codes += self.acoustic_residual_vector_quantizer.encode(x, n - self.n_semantic)
        return mx.stack(codes, axis=-1)


class TokenizerEncoder(nn.Module):
    """`encoder`, `encoder_transformer`, `downsample`, `quantizer`; `encode(wav24k)` -> [T, 16] int32 codes."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = SeanetEncoder(cfg)
        self.encoder_transformer = MimiTransformer(cfg)
        self.downsample = MimiConv(cfg.hidden_size, cfg.hidden_size, cfg.downsample_kernel, stride=2, bias=False)
        self.downsample.replicate = True
        self.quantizer = SplitQuantizer(cfg)

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Official `encoder.*` tensors (prefix removed) -> parameters: Conv1d [out,in,k] -> [out,k,in]; codebooks."""
        out: dict[str, mx.array] = {}
        for key, w in weights.items():
            if key.endswith((".codebook.initialized", ".codebook.cluster_usage")):
                continue
            if key.endswith(".codebook.embed_sum"):
                base = key.removesuffix(".embed_sum")
                usage = weights[f"{base}.cluster_usage"]
                out[f"{base}.embed"] = w / mx.maximum(usage, 1e-5)[:, None]
            elif key.endswith(".conv.weight") or (key.startswith("quantizer.") and key.endswith("_proj.weight")):
                out[key] = w.transpose(0, 2, 1)
            else:
                out[key] = w
        return out

    def encode(self, wav24k: np.ndarray) -> mx.array:
        """Mono float32 audio at 24 kHz -> [ceil(n / 1920), valid_quantizers] int32 codes (spec §5.2)."""
        wav = np.asarray(wav24k)
        if wav.ndim != 1 or wav.size == 0 or not np.issubdtype(wav.dtype, np.floating):
            raise InputError(f"reference audio must be non-empty mono float samples, got {wav.dtype} {wav.shape}")
        if not np.all(np.isfinite(wav)):
            raise InputError("reference audio contains NaN or infinite samples; re-record or re-encode the clip")
        x = mx.array(wav.astype(np.float32))[None, :, None]
        h = self.encoder_transformer(self.encoder(x))
        codes = self.quantizer.encode(self.downsample(h), self.config.valid_quantizers)[0]
        frames = -(-wav.size // self._samples_per_frame())
        return codes[:frames]

    def _samples_per_frame(self) -> int:
        # 2 * prod(ratios) = 1920 samples per 12.5 Hz frame at 24 kHz
        return 2 * math.prod(self.config.upsampling_ratios)
