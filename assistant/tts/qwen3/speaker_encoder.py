"""The Qwen3-TTS speaker encoder: 24 kHz audio -> x-vector (ECAPA-TDNN without BatchNorm), spec §5.1.

Mel front end written here in numpy (librosa is not a runtime dependency): reflect-pad 384, STFT n_fft 1024 / hop
256 / periodic Hann 1024 without centering, magnitude sqrt(re² + im² + 1e-9), a 128-bin Slaney mel filterbank
(0-12 kHz, Slaney scale and area norm), log(clamp(x, 1e-5)). Attribute names equal the checkpoint keys after the
`speaker_encoder.` prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from assistant.errors import InputError

SAMPLE_RATE = 24000
N_FFT = 1024
HOP = 256
N_MELS = 128
F_MAX = 12000.0


@dataclass(frozen=True)
class SpeakerEncoderConfig:
    """`speaker_encoder_config` of the main config.json; unknown keys are ignored, missing keys take class defaults."""

    mel_dim: int = 128
    enc_dim: int = 1024
    enc_channels: tuple[int, ...] = field(default=(512, 512, 512, 512, 1536))
    enc_kernel_sizes: tuple[int, ...] = field(default=(5, 3, 3, 3, 1))
    enc_dilations: tuple[int, ...] = field(default=(1, 2, 3, 4, 1))
    enc_attention_channels: int = 128
    enc_res2net_scale: int = 8
    enc_se_channels: int = 128
    sample_rate: int = 24000

    @classmethod
    def from_dict(cls, d: dict) -> SpeakerEncoderConfig:
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = f / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=4)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmax: float = F_MAX) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32 triangular filters on the Slaney scale with Slaney (area) normalization."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(fmax)), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_features(wav24k: np.ndarray) -> np.ndarray:
    """Log-mel features [frames, 128] float32 of mono 24 kHz audio, as the official speaker-encoder front end."""
    pad = (N_FFT - HOP) // 2
    y = np.pad(np.asarray(wav24k, dtype=np.float64), (pad, pad), mode="reflect")
    n_frames = 1 + (y.size - N_FFT) // HOP
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(y[idx] * window, axis=-1)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    mel = mag @ mel_filterbank().astype(np.float64).T
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)


class TimeDelayNetBlock(nn.Module):
    """Conv1d with reflect 'same' padding, then ReLU: key `…conv.{weight,bias}`."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation)
        total = dilation * (kernel - 1)
        self.pad = (total // 2, total - total // 2)

    def __call__(self, x: mx.array) -> mx.array:
        return nn.relu(self.conv(_reflect_pad(x, *self.pad)))


def _reflect_pad(x: mx.array, left: int, right: int) -> mx.array:
    """Reflect padding (edge not repeated) along time of [B, T, C]."""
    if left == 0 and right == 0:
        return x
    t = x.shape[1]
    if max(left, right) >= t:
        raise InputError(f"reference audio is too short for the speaker encoder ({t} frames); use at least 1 s")
    idx = np.concatenate([np.arange(left, 0, -1), np.arange(t), t - 2 - np.arange(right)])
    return x[:, mx.array(idx)]


class Res2NetBlock(nn.Module):
    """Split channels into `scale` parts; part 0 passes, part i goes through blocks[i-1](x_i + y_{i-1})."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int):
        super().__init__()
        width = channels // scale
        self.blocks = [TimeDelayNetBlock(width, width, kernel, dilation) for _ in range(scale - 1)]
        self.scale = scale

    def __call__(self, x: mx.array) -> mx.array:
        parts = mx.split(x, self.scale, axis=-1)
        outs = [parts[0]]
        for i in range(1, self.scale):
            inp = parts[i] if i == 1 else parts[i] + outs[-1]
            outs.append(self.blocks[i - 1](inp))
        return mx.concatenate(outs, axis=-1)


class SqueezeExcitationBlock(nn.Module):
    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, se_channels, 1)
        self.conv2 = nn.Conv1d(se_channels, channels, 1)

    def __call__(self, x: mx.array) -> mx.array:
        s = mx.sigmoid(self.conv2(nn.relu(self.conv1(x.mean(axis=1, keepdims=True)))))
        return x * s


class SERes2NetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, scale: int, se_channels: int, kernel: int, dilation: int):
        super().__init__()
        self.tdnn1 = TimeDelayNetBlock(cin, cout, 1, 1)
        self.res2net_block = Res2NetBlock(cout, scale, kernel, dilation)
        self.tdnn2 = TimeDelayNetBlock(cout, cout, 1, 1)
        self.se_block = SqueezeExcitationBlock(cout, se_channels)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


def _weighted_stats(x: mx.array, w: mx.array, eps: float = 1e-12) -> tuple[mx.array, mx.array]:
    """Mean and std over time of [B, T, C] under weights w [B, T, C] summing to 1 over time."""
    mean = (w * x).sum(axis=1)
    std = mx.sqrt(mx.maximum((w * (x - mean[:, None]) ** 2).sum(axis=1), eps))
    return mean, std


class AttentiveStatisticsPooling(nn.Module):
    """Attention over time conditioned on the global mean and std; returns the weighted mean and std [B, 2C]."""

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.tdnn = TimeDelayNetBlock(channels * 3, attention_channels, 1, 1)
        self.conv = nn.Conv1d(attention_channels, channels, 1)

    def __call__(self, x: mx.array) -> mx.array:
        t = x.shape[1]
        mean, std = _weighted_stats(x, mx.full(x.shape, 1.0 / t))
        ctx = mx.concatenate([x, mx.repeat(mean[:, None], t, axis=1), mx.repeat(std[:, None], t, axis=1)], axis=-1)
        attn = mx.softmax(self.conv(mx.tanh(self.tdnn(ctx))), axis=1)
        mean, std = _weighted_stats(x, attn)
        return mx.concatenate([mean, std], axis=-1)


class SpeakerEncoder(nn.Module):
    """ECAPA-TDNN: `blocks` (TDNN + SE-Res2Net), `mfa`, `asp`, `fc`; `embed(wav24k)` -> x-vector [enc_dim]."""

    def __init__(self, cfg: SpeakerEncoderConfig):
        super().__init__()
        ch, ks, dil = cfg.enc_channels, cfg.enc_kernel_sizes, cfg.enc_dilations
        if not len(ch) == len(ks) == len(dil) or len(ch) < 3:
            raise ValueError("enc_channels, enc_kernel_sizes and enc_dilations must have the same length (>= 3)")
        self.config = cfg
        self.blocks: list[nn.Module] = [TimeDelayNetBlock(cfg.mel_dim, ch[0], ks[0], dil[0])]
        for i in range(1, len(ch) - 1):
            block = SERes2NetBlock(ch[i - 1], ch[i], cfg.enc_res2net_scale, cfg.enc_se_channels, ks[i], dil[i])
            self.blocks.append(block)
        self.mfa = TimeDelayNetBlock(ch[-1], ch[-1], ks[-1], dil[-1])
        self.asp = AttentiveStatisticsPooling(ch[-1], cfg.enc_attention_channels)
        self.fc = nn.Conv1d(ch[-1] * 2, cfg.enc_dim, 1)

    @staticmethod
    def sanitize(weights: dict[str, mx.array], pytorch_layout: bool) -> dict[str, mx.array]:
        """`speaker_encoder.*` tensors (prefix removed) -> parameters; every `*.weight` here is a Conv1d weight,
        so the PyTorch layout [out, in, k] becomes MLX's [out, k, in]. MLX-layout files pass unchanged."""
        out = {}
        for key, w in weights.items():
            key = key.removeprefix("speaker_encoder.")
            out[key] = w.transpose(0, 2, 1) if pytorch_layout and key.endswith(".weight") else w
        return out

    def __call__(self, mels: mx.array) -> mx.array:
        """mels [B, T, mel_dim] -> x-vectors [B, enc_dim]."""
        h, hidden = mels, []
        for block in self.blocks:
            h = block(h)
            hidden.append(h)
        h = self.mfa(mx.concatenate(hidden[1:], axis=-1))
        pooled = self.asp(h)
        return self.fc(pooled[:, None, :])[:, 0, :]

    def embed(self, wav24k: np.ndarray) -> mx.array:
        """Mono float audio at 24 kHz -> x-vector [enc_dim] float32."""
        wav = np.asarray(wav24k)
        if wav.ndim != 1 or not np.issubdtype(wav.dtype, np.floating) or wav.size < N_FFT:
            raise InputError(
                f"speaker reference must be mono float audio at 24 kHz of at least {N_FFT} samples, "
                f"got {wav.dtype} {wav.shape}; resample/convert the clip first"
            )
        if not np.all(np.isfinite(wav)):
            raise InputError("speaker reference contains NaN or infinite samples; re-record or re-encode the clip")
        mels = mx.array(mel_features(wav))[None]
        return self(mels)[0]
