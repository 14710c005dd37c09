"""Causal convolution blocks of the 12 Hz codec decoder (spec §4.3-4.4), each streaming through explicit state.

Layout is MLX's channels-last: activations [B, T, C]; Conv1d weights [out, k, in]. Every stateful layer owns a
`slot` in `DecoderState.tails` (numbered by `CodecDecoder`) and reads/writes only that slot, so decoding in chunks
equals decoding all at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn


@dataclass
class DecoderState:
    """Everything a streaming decode carries between chunks, for a batch of `batch` streams.

    tails: per causal conv its last (k-1)*d input samples; per transposed conv its last input sample.
    kv: per transformer layer, K (before RoPE: rotated at each read) and V of the last `sliding_window - 1` frames
    in one buffer [B, 2 * kv_heads, sliding_window - 1, head_dim] (the keys' heads, then the values').
    offset: frames decoded so far (the RoPE position of the next frame); an int32 array inside a compiled step.
    """

    tails: list[mx.array] = field(default_factory=list)
    kv: list[mx.array] = field(default_factory=list)
    offset: int | mx.array = 0


class CausalConv(nn.Module):
    """Conv1d with left zero padding of (k-1)*d (stride 1): key `…conv.{weight,bias}`."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation, groups=groups)
        self.context = (kernel - 1) * dilation
        self.cin = cin
        self.slot = -1

    def initial_tail(self, batch: int) -> mx.array:
        return mx.zeros((batch, self.context, self.cin), dtype=mx.float32)

    def __call__(self, x: mx.array, state: DecoderState) -> mx.array:
        if self.context == 0:
            return self.conv(x)
        xp = mx.concatenate([state.tails[self.slot].astype(x.dtype), x], axis=1)
        state.tails[self.slot] = xp[:, -self.context :]
        return self.conv(xp)


class CausalTransConv(nn.Module):
    """ConvTranspose1d (k = 2s or k = s) whose last k - s output samples are dropped: key `…conv.{weight,bias}`.

    Streaming: prepend the previous chunk's last input sample (zeros at the start) and keep outputs [s, s + n*s);
    the prepended sample supplies exactly the overlap the full transposed conv would add to this chunk.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, kernel, stride=stride)
        self.stride = stride
        self.cin = cin
        self.overlaps = kernel > stride
        self.slot = -1

    def initial_tail(self, batch: int) -> mx.array:
        return mx.zeros((batch, 1, self.cin), dtype=mx.float32)

    def __call__(self, x: mx.array, state: DecoderState) -> mx.array:
        n, s = x.shape[1], self.stride
        if not self.overlaps:
            return self.conv(x)
        xp = mx.concatenate([state.tails[self.slot].astype(x.dtype), x], axis=1)
        state.tails[self.slot] = x[:, -1:]
        return self.conv(xp)[:, s : s + n * s]


class SnakeBeta(nn.Module):
    """y = x + 1/(exp(beta) + 1e-9) * sin²(exp(alpha) * x), alpha and beta stored in log scale, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = mx.zeros((channels,))
        self.beta = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        alpha, beta = mx.exp(self.alpha), mx.exp(self.beta)
        return x + (1.0 / (beta + 1e-9)) * mx.power(mx.sin(x * alpha), 2)


class ConvNeXtBlock(nn.Module):
    """Causal depthwise conv k7, LayerNorm (eps 1e-6), Linear x4, exact GELU, Linear, gamma, residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = CausalConv(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = mx.ones((dim,))

    def __call__(self, x: mx.array, state: DecoderState) -> mx.array:
        h = self.pwconv2(nn.gelu(self.pwconv1(self.norm(self.dwconv(x, state)))))
        return x + self.gamma * h


class ResidualUnit(nn.Module):
    """x + Conv1x1(Snake(CausalConv_k7_dilated(Snake(x))))."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv(dim, dim, 1)

    def __call__(self, x: mx.array, state: DecoderState) -> mx.array:
        h = self.conv2(self.act2(self.conv1(self.act1(x), state)), state)
        return x + h


class DecoderBlock(nn.Module):
    """`block`: SnakeBeta(in), CausalTransConv(in -> out, k=2r, s=r), residual units with dilations 1, 3, 9."""

    def __init__(self, cin: int, cout: int, rate: int):
        super().__init__()
        self.block: list[nn.Module] = [
            SnakeBeta(cin),
            CausalTransConv(cin, cout, 2 * rate, rate),
            *(ResidualUnit(cout, d) for d in (1, 3, 9)),
        ]

    def __call__(self, x: mx.array, state: DecoderState) -> mx.array:
        for layer in self.block:
            x = layer(x) if isinstance(layer, SnakeBeta) else layer(x, state)
        return x


def build_upsample(latent: int, ratios: list[int]) -> list[list[nn.Module]]:
    """`upsample`: per ratio a transposed conv (k = s, no overlap) and a ConvNeXt block."""
    return [[CausalTransConv(latent, latent, r, r), ConvNeXtBlock(latent)] for r in ratios]


def build_decoder(latent: int, dim: int, rates: list[int]) -> list[nn.Module]:
    """`decoder`: causal conv k7, one block per rate (channels halve), SnakeBeta, causal conv k7 to one channel."""
    layers: list[nn.Module] = [CausalConv(latent, dim, 7)]
    layers += [DecoderBlock(dim // 2**i, dim // 2 ** (i + 1), r) for i, r in enumerate(rates)]
    out = dim // 2 ** len(rates)
    return [*layers, SnakeBeta(out), CausalConv(out, 1, 7)]
