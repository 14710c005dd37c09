"""The FastConformer encoder shared by Parakeet (offline) and Nemotron (cache-aware streaming).

Module attribute names equal the NeMo checkpoint keys (`encoder.pre_encode.conv.N`, `encoder.layers.N.self_attn.
linear_q`, `pos_bias_u`, `conv.batch_norm`, ...); weights are in MLX layout (conv (out, k..., in)). Offline,
`__call__` encodes a whole utterance. Streaming (causal subsampling and convolutions, chunked-limited attention),
`stream()` encodes one chunk with an `EncoderCache` holding the attention K/V of the left context, the depthwise
convolution tails and the subsampling tails, so chunk after chunk equals the reference's chunked generate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from assistant.errors import ModelError

NO_LIMIT = 10_000  # left chunks when the left context is unlimited (-1)
UNLIMITED_CACHE = 1 << 30  # cached frames when the left context is unlimited


def _contexts(raw: Any) -> tuple[tuple[int, int], ...]:
    """NeMo's att_context_size: [l, r] or [[l, r], ...] -> ((l, r), ...)."""
    if not raw:
        return ((-1, -1),)
    if isinstance(raw[0], (list, tuple)):
        return tuple((int(a), int(b)) for a, b in raw)
    return ((int(raw[0]), int(raw[1])),)


@dataclass(frozen=True)
class EncoderArgs:
    feat_in: int = 128
    n_layers: int = 24
    d_model: int = 1024
    n_heads: int = 8
    ff_expansion_factor: int = 4
    subsampling_factor: int = 8
    subsampling_conv_channels: int = 256
    conv_kernel_size: int = 9
    use_bias: bool = True
    xscaling: bool = True
    causal_downsampling: bool = False
    causal_conv: bool = False  # conv_context_size == "causal"
    conv_norm_type: str = "batch_norm"
    att_context_style: str = "regular"
    att_context_size: tuple[tuple[int, int], ...] = ((-1, -1),)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderArgs:
        """From the NeMo `encoder` section; unknown keys are ignored, unsupported variants refused."""
        if d.get("subsampling", "dw_striding") != "dw_striding":
            raise ModelError(f"encoder subsampling `{d.get('subsampling')}` is not supported (only dw_striding)")
        if d.get("self_attention_model", "rel_pos") != "rel_pos":
            raise ModelError(f"encoder attention `{d.get('self_attention_model')}` is not supported (only rel_pos)")
        ctx = d.get("conv_context_size")
        k = int(d.get("conv_kernel_size", 9))
        causal_conv = ctx == "causal" or (isinstance(ctx, (list, tuple)) and list(ctx) == [k - 1, 0])
        return cls(
            feat_in=int(d["feat_in"]),
            n_layers=int(d["n_layers"]),
            d_model=int(d["d_model"]),
            n_heads=int(d["n_heads"]),
            ff_expansion_factor=int(d.get("ff_expansion_factor", 4)),
            subsampling_factor=int(d.get("subsampling_factor", 8)),
            subsampling_conv_channels=int(d.get("subsampling_conv_channels", 256)),
            conv_kernel_size=k,
            use_bias=bool(d.get("use_bias", True)),
            xscaling=bool(d.get("xscaling", True)),
            causal_downsampling=bool(d.get("causal_downsampling", False)),
            causal_conv=causal_conv,
            conv_norm_type=str(d.get("conv_norm_type", "batch_norm")),
            att_context_style=str(d.get("att_context_style", "regular")),
            att_context_size=_contexts(d.get("att_context_size")),
        )


class Conv(nn.Module):
    """Weights of a 1-D or 2-D convolution in MLX layout; the caller pads."""

    def __init__(self, shape: tuple[int, ...], groups: int = 1, bias: bool = True):
        super().__init__()
        self.groups = groups
        self.weight = mx.zeros(shape)
        if bias:
            self.bias = mx.zeros((shape[0],))

    def __call__(self, x: mx.array, stride: int = 1) -> mx.array:
        if self.weight.ndim == 4:
            y = mx.conv2d(x, self.weight, stride=stride, groups=self.groups)
        elif self.weight.shape[1] == 1 and self.groups == 1:
            y = x @ self.weight[:, 0, :].T  # pointwise
        else:
            y = mx.conv1d(x, self.weight, stride=stride, groups=self.groups)
        return y + self.bias if "bias" in self else y


class BatchNorm(nn.Module):
    """Inference batch norm over the last axis with the checkpoint's running statistics."""

    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dims,))
        self.bias = mx.zeros((dims,))
        self.running_mean = mx.zeros((dims,))
        self.running_var = mx.ones((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        return (x - self.running_mean) * mx.rsqrt(self.running_var + self.eps) * self.weight + self.bias


class PreEncode(nn.Module):
    """dw_striding subsampling: a strided conv, then (depthwise strided, pointwise) pairs, ReLU after each stage."""

    def __init__(self, a: EncoderArgs):
        super().__init__()
        self.causal = a.causal_downsampling
        self.kernel, self.stride = 3, 2
        c = a.subsampling_conv_channels
        n = int(math.log2(a.subsampling_factor))
        k = self.kernel
        self.conv: list[nn.Module] = [Conv((c, k, k, 1)), nn.ReLU()]
        for _ in range(n - 1):
            self.conv += [Conv((c, k, k, 1), groups=c), Conv((c, 1, 1, c)), nn.ReLU()]
        f = a.feat_in
        for _ in range(n):
            lo, hi = self._pad()
            f = (f + lo + hi - k) // self.stride + 1
        self.out = nn.Linear(c * f, a.d_model)

    def _pad(self) -> tuple[int, int]:
        k, s = self.kernel, self.stride
        return (k - 1, s - 1) if self.causal else ((k - 1) // 2, (k - 1) // 2)

    def out_length(self, n: int) -> int:
        """Output frames of n input frames (each strided conv: (n + lo + hi - k) // s + 1)."""
        lo, hi = self._pad()
        for layer in self.conv:
            if isinstance(layer, Conv) and layer.weight.shape[1] == self.kernel:
                n = (n + lo + hi - self.kernel) // self.stride + 1
        return n

    def __call__(self, mel: mx.array, cache: list[mx.array | None] | None = None, valid: int | None = None) -> mx.array:
        """(B, T, F) log-mel -> (B, T', d_model); with `cache` (causal only) the time axis continues a stream.
        `valid` < T: only the first `valid` frames are real; the rest is zeroed before every strided conv, so
        the valid outputs equal those of the unpadded input (whose convs see zero padding there)."""
        x = mel[..., None]  # NHWC: time is H, frequency is W
        lo, hi = self._pad()
        strided = 0
        for layer in self.conv:
            if isinstance(layer, Conv) and layer.weight.shape[1] == self.kernel:
                if valid is not None and valid < x.shape[1]:
                    x = mx.where((mx.arange(x.shape[1]) < valid)[None, :, None, None], x, 0.0)
                    valid = (valid + lo + hi - self.kernel) // self.stride + 1
                x = mx.pad(x, [(0, 0), (0, 0), (lo, hi), (0, 0)])
                if cache is None:
                    x = mx.pad(x, [(0, 0), (lo, hi), (0, 0), (0, 0)])
                else:  # stream: the previous chunk's tail (zeros at the start), no right padding
                    keep = self.kernel - self.stride
                    prev = cache[strided]
                    if prev is None:
                        prev = mx.zeros((x.shape[0], self.kernel - 1, *x.shape[2:]), x.dtype)
                    x = mx.concatenate([prev, x], axis=1)
                    cache[strided] = x[:, -keep:]
                x = layer(x, stride=self.stride)
                strided += 1
            else:
                x = layer(x)
        b, t, f, c = x.shape
        return self.out(x.transpose(0, 1, 3, 2).reshape(b, t, c * f))


def rel_positions(length: int, d_model: int, dtype: mx.Dtype) -> mx.array:
    """Sinusoids of relative positions length-1 ... -(length-1): (2*length - 1, d_model), sin/cos interleaved."""
    pos = mx.arange(length - 1, -length, -1, dtype=mx.float32)[:, None]
    inv = 1.0 / (10000.0 ** (mx.arange(0, d_model, 2, dtype=mx.float32) / d_model))
    ang = pos * inv
    return mx.stack([mx.sin(ang), mx.cos(ang)], axis=-1).reshape(2 * length - 1, d_model).astype(dtype)


class RelPositionAttention(nn.Module):
    """Transformer-XL attention: scores (q+u)·k + rel_shift((q+v)·p), scaled by 1/sqrt(d_head)."""

    def __init__(self, a: EncoderArgs):
        super().__init__()
        d, h = a.d_model, a.n_heads
        self.n_heads, self.d_head = h, d // h
        self.linear_q = nn.Linear(d, d, bias=a.use_bias)
        self.linear_k = nn.Linear(d, d, bias=a.use_bias)
        self.linear_v = nn.Linear(d, d, bias=a.use_bias)
        self.linear_out = nn.Linear(d, d, bias=a.use_bias)
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = mx.zeros((h, d // h))
        self.pos_bias_v = mx.zeros((h, d // h))

    def __call__(self, x: mx.array, pos: mx.array, mask: mx.array | None, cache: LayerCache | None = None) -> mx.array:
        b, t, _ = x.shape
        h, dh = self.n_heads, self.d_head
        q = self.linear_q(x).reshape(b, t, h, dh)
        k = self.linear_k(x).reshape(b, t, h, dh).transpose(0, 2, 1, 3)
        v = self.linear_v(x).reshape(b, t, h, dh).transpose(0, 2, 1, 3)
        if cache is not None:
            k, v = cache.attend(k, v)
        s = k.shape[2]
        qu = (q + self.pos_bias_u).transpose(0, 2, 1, 3)
        qv = (q + self.pos_bias_v).transpose(0, 2, 1, 3)
        p = self.linear_pos(pos).reshape(1, -1, h, dh).transpose(0, 2, 3, 1)  # (1, H, dh, 2S-1)
        bd = qv @ p  # (B, H, t, 2S-1)
        n = bd.shape[-1]
        bd = mx.pad(bd, [(0, 0), (0, 0), (0, 0), (1, 0)]).reshape(b, h, n + 1, t)[:, :, 1:]
        bd = bd.reshape(b, h, t, n)[..., :s]  # bd[i, j] now belongs to relative position q_i - k_j
        scale = 1.0 / math.sqrt(dh)
        bd = bd * scale
        if mask is not None:
            bd = mx.where(mask, bd, mx.array(-mx.inf, bd.dtype))
        out = mx.fast.scaled_dot_product_attention(qu, k, v, scale=scale, mask=bd)
        return self.linear_out(out.transpose(0, 2, 1, 3).reshape(b, t, h * dh))


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv (symmetric or causal), norm, SiLU, pointwise conv."""

    def __init__(self, a: EncoderArgs):
        super().__init__()
        d, k = a.d_model, a.conv_kernel_size
        self.causal = a.causal_conv
        self.kernel = k
        self.pointwise_conv1 = Conv((2 * d, 1, d), bias=a.use_bias)
        self.depthwise_conv = Conv((d, k, 1), groups=d, bias=a.use_bias)
        self.batch_norm: nn.Module = nn.LayerNorm(d, eps=1e-5) if a.conv_norm_type == "layer_norm" else BatchNorm(d)
        self.pointwise_conv2 = Conv((d, 1, d), bias=a.use_bias)

    def __call__(self, x: mx.array, cache: LayerCache | None = None, valid: mx.array | None = None) -> mx.array:
        x = self.pointwise_conv1(x)
        half = x.shape[-1] // 2
        x = x[..., :half] * mx.sigmoid(x[..., half:])
        if valid is not None:  # padded frames enter the depthwise conv as the zeros of its own padding
            x = mx.where(valid, x, 0.0)
        k = self.kernel
        if cache is not None:
            x = cache.conv_context(x, k - 1)
        elif self.causal:
            x = mx.pad(x, [(0, 0), (k - 1, 0), (0, 0)])
        else:
            x = mx.pad(x, [(0, 0), ((k - 1) // 2, (k - 1) // 2), (0, 0)])
        x = self.depthwise_conv(x)
        x = nn.silu(self.batch_norm(x))
        return self.pointwise_conv2(x)


class FeedForward(nn.Module):
    def __init__(self, a: EncoderArgs):
        super().__init__()
        self.linear1 = nn.Linear(a.d_model, a.d_model * a.ff_expansion_factor, bias=a.use_bias)
        self.linear2 = nn.Linear(a.d_model * a.ff_expansion_factor, a.d_model, bias=a.use_bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear2(nn.silu(self.linear1(x)))


class ConformerLayer(nn.Module):
    def __init__(self, a: EncoderArgs):
        super().__init__()
        d = a.d_model
        self.norm_feed_forward1 = nn.LayerNorm(d, eps=1e-5)
        self.feed_forward1 = FeedForward(a)
        self.norm_self_att = nn.LayerNorm(d, eps=1e-5)
        self.self_attn = RelPositionAttention(a)
        self.norm_conv = nn.LayerNorm(d, eps=1e-5)
        self.conv = ConvModule(a)
        self.norm_feed_forward2 = nn.LayerNorm(d, eps=1e-5)
        self.feed_forward2 = FeedForward(a)
        self.norm_out = nn.LayerNorm(d, eps=1e-5)

    def __call__(
        self,
        x: mx.array,
        pos: mx.array,
        mask: mx.array | None,
        cache: LayerCache | None,
        valid: mx.array | None = None,
    ) -> mx.array:
        x = x + 0.5 * self.feed_forward1(self.norm_feed_forward1(x))
        x = x + self.self_attn(self.norm_self_att(x), pos, mask, cache)
        x = x + self.conv(self.norm_conv(x), cache, valid)
        x = x + 0.5 * self.feed_forward2(self.norm_feed_forward2(x))
        return self.norm_out(x)


@dataclass
class LayerCache:
    """One layer's streaming state: K/V of the last `left` frames and the depthwise convolution's input tail."""

    left: int
    keys: mx.array | None = None
    values: mx.array | None = None
    conv: mx.array | None = None

    def attend(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """The keys/values to attend to (cached + new); keeps the last `left` of them for the next chunk."""
        if self.keys is not None and self.values is not None:
            k = mx.concatenate([self.keys, k], axis=2)
            v = mx.concatenate([self.values, v], axis=2)
        self.keys = k[:, :, -self.left :] if self.left > 0 else k[:, :, :0]
        self.values = v[:, :, -self.left :] if self.left > 0 else v[:, :, :0]
        return k, v

    def conv_context(self, x: mx.array, pad: int) -> mx.array:
        prev = self.conv if self.conv is not None else mx.zeros((x.shape[0], pad, x.shape[2]), x.dtype)
        x = mx.concatenate([prev, x], axis=1)
        self.conv = x[:, x.shape[1] - pad :]
        return x


@dataclass
class EncoderCache:
    """Streaming state of the whole encoder; `frames` counts the encoder frames produced so far."""

    context: tuple[int, int]
    layers: list[LayerCache]
    subsampling: list[mx.array | None] = field(default_factory=list)
    frames: int = 0

    def state_arrays(self) -> list[mx.array]:
        out = [a for a in self.subsampling if a is not None]
        for c in self.layers:
            out += [a for a in (c.keys, c.values, c.conv) if a is not None]
        return out


def chunked_limited_mask(q_pos: mx.array, k_pos: mx.array, context: tuple[int, int]) -> mx.array:
    """NeMo's chunked_limited attention: a query sees its chunk (right+1 frames) and left//(right+1) chunks back."""
    left, right = context
    size = right + 1
    left_chunks = left // size if left >= 0 else NO_LIMIT
    diff = (q_pos[:, None] // size) - (k_pos[None, :] // size)
    return (diff >= 0) & (diff <= left_chunks)


def regular_mask(t: int, context: tuple[int, int]) -> mx.array | None:
    left, right = context
    if left < 0 and right < 0:
        return None
    pos = mx.arange(t)
    rel = pos[None, :] - pos[:, None]  # key - query
    ok = mx.ones((t, t), dtype=mx.bool_)
    if left >= 0:
        ok = ok & (rel >= -left)
    if right >= 0:
        ok = ok & (rel <= right)
    return ok


class Encoder(nn.Module):
    """FastConformer: subsampling, x·sqrt(d) scaling, relative positions, N conformer layers."""

    def __init__(self, a: EncoderArgs):
        super().__init__()
        self.args = a
        self.pre_encode = PreEncode(a)
        self.layers = [ConformerLayer(a) for _ in range(a.n_layers)]

    @property
    def streaming(self) -> bool:
        return self.args.causal_downsampling and self.args.att_context_style == "chunked_limited"

    def _scale(self, x: mx.array) -> mx.array:
        return x * math.sqrt(self.args.d_model) if self.args.xscaling else x

    def __call__(self, mel: mx.array, context: tuple[int, int] | None = None, valid: int | None = None) -> mx.array:
        """(B, T, F) -> (B, T', d_model) for a whole utterance. `valid` < T: the first `valid` mel frames are
        real and the rest padding (a length bucket); padded frames are masked out of attention and of the
        convolutions, so the first out_length(valid) outputs equal the unpadded pass and the rest are junk."""
        ctx = context or self.args.att_context_size[0]
        padded = valid is not None and valid < mel.shape[1]
        x = self._scale(self.pre_encode(mel, valid=valid if padded else None))
        t = x.shape[1]
        if self.args.att_context_style == "chunked_limited":
            pos_t = mx.arange(t)
            mask: mx.array | None = chunked_limited_mask(pos_t, pos_t, ctx)
        else:
            mask = regular_mask(t, ctx)
        keep: mx.array | None = None
        if padded:
            assert valid is not None
            real = mx.arange(t) < self.pre_encode.out_length(valid)
            mask = real[None, :] if mask is None else mask & real[None, :]
            keep = real[None, :, None]
        pos = rel_positions(t, self.args.d_model, x.dtype)
        for layer in self.layers:
            x = layer(x, pos, mask, None, keep)
        return x

    def new_cache(self, context: tuple[int, int]) -> EncoderCache:
        if not self.streaming:
            raise ModelError("this encoder is not cache-aware (no causal subsampling / chunked_limited attention)")
        n_strided = int(math.log2(self.args.subsampling_factor))
        return EncoderCache(
            context=context,
            layers=[LayerCache(left=context[0] if context[0] >= 0 else UNLIMITED_CACHE) for _ in self.layers],
            subsampling=[None] * n_strided,
        )

    def stream(self, mel: mx.array, cache: EncoderCache) -> mx.array:
        """Encode the next chunk of mel frames (B, T, F) -> (B, T', d_model), updating `cache`."""
        x = self._scale(self.pre_encode(mel, cache.subsampling))
        t = x.shape[1]
        cached = min(cache.frames, cache.layers[0].left)
        q_pos = cache.frames + mx.arange(t)
        k_pos = cache.frames - cached + mx.arange(cached + t)
        mask = chunked_limited_mask(q_pos, k_pos, cache.context)
        pos = rel_positions(cached + t, self.args.d_model, x.dtype)
        for layer, lc in zip(self.layers, cache.layers, strict=True):
            x = layer(x, pos, mask, lc)
        cache.frames += t
        mx.eval(x, cache.state_arrays())  # materialize the caches so no graph spans chunks
        return x
