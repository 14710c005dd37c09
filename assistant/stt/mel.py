"""Log-mel front end of NeMo's AudioToMelSpectrogramPreprocessor, computed in MLX on the device.

Pre-emphasis, a centred STFT (zero padding of n_fft/2 each side, a symmetric Hann window of `win_length` centred in
`n_fft`), power spectrum, a Slaney mel filter bank, log(x + 2^-24) and, for Parakeet, per-feature normalization over
the utterance. `MelStream` computes the same frames incrementally for the cache-aware streaming model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

LOG_ZERO_GUARD = 2.0**-24  # NeMo's log_zero_guard_value: log-mel of digital silence is log(2^-24) = -16.6
NORM_EPS = 1e-5  # added to the per-feature standard deviation


@dataclass(frozen=True)
class MelArgs:
    sample_rate: int = 16_000
    features: int = 128
    n_fft: int = 512
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz
    preemph: float = 0.97
    normalize: str = "per_feature"  # or "NA"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MelArgs:
        """From the NeMo `preprocessor` section (window_size/window_stride in seconds); unknown keys are ignored."""
        sr = int(d.get("sample_rate", 16_000))
        preemph = d.get("preemph", 0.97)  # NeMo's default; an explicit null turns it off
        return cls(
            sample_rate=sr,
            features=int(d.get("features", d.get("nfilt", 128))),
            n_fft=int(d.get("n_fft", 512)),
            win_length=round(float(d.get("window_size", 0.025)) * sr),
            hop_length=round(float(d.get("window_stride", 0.01)) * sr),
            preemph=float(preemph) if preemph is not None else 0.0,
            normalize=str(d.get("normalize", "per_feature")),
        )


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    logstep = 27.0 / np.log(6.4)
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * logstep)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    logstep = np.log(6.4) / 27.0
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp(logstep * (m - 15.0)))


def mel_filter_bank(args: MelArgs) -> np.ndarray:
    """(features, n_fft//2 + 1) triangular filters on the Slaney scale with Slaney area normalization."""
    n_bins = args.n_fft // 2 + 1
    fft_freqs = np.linspace(0.0, args.sample_rate / 2, n_bins)
    mel_pts = np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(args.sample_rate / 2)), args.features + 2)
    hz_pts = _mel_to_hz(mel_pts)
    diff = np.diff(hz_pts)
    slopes = hz_pts[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))  # (bins, features)
    fb *= 2.0 / (hz_pts[2:] - hz_pts[:-2])
    return np.ascontiguousarray(fb.T.astype(np.float32))


def _window(args: MelArgs) -> np.ndarray:
    """Symmetric Hann window of win_length, zero-padded to n_fft and centred (as torch.stft does)."""
    n = args.win_length
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / (n - 1))
    left = (args.n_fft - n) // 2
    return np.pad(w, (left, args.n_fft - n - left)).astype(np.float32)


def preemphasis(x: np.ndarray, coef: float, prev: float = 0.0, first: bool = True) -> np.ndarray:
    """y[n] = x[n] - coef * x[n-1]; the very first sample of an utterance is kept as is."""
    if coef == 0.0 or len(x) == 0:
        return x
    y = np.empty_like(x)
    y[1:] = x[1:] - coef * x[:-1]
    y[0] = x[0] if first else x[0] - coef * prev
    return y


class MelFrontEnd:
    """Log-mel features (frames, features) float32 for 16 kHz float32 audio."""

    def __init__(self, args: MelArgs):
        self.args = args
        self.filters = mel_filter_bank(args)
        self.window = _window(args)
        self._filters_t = mx.array(self.filters.T)
        self._window = mx.array(self.window)

    def frames_for(self, n_samples: int) -> int:
        """Valid frames of an utterance of n_samples (NeMo: n // hop; the last centred frame is padding)."""
        return n_samples // self.args.hop_length

    def log_mel(self, padded: mx.array, n_frames: int) -> mx.array:
        """Log-mel of n_frames frames of an already padded, pre-emphasized signal (frame t starts at t*hop)."""
        a = self.args
        if n_frames <= 0:
            return mx.zeros((0, a.features), mx.float32)
        idx = mx.arange(n_frames)[:, None] * a.hop_length + mx.arange(a.n_fft)[None, :]
        spec = mx.fft.rfft(padded[idx] * self._window, axis=-1)
        power = mx.real(spec) ** 2 + mx.imag(spec) ** 2
        return mx.log(power @ self._filters_t + LOG_ZERO_GUARD)

    def power_frames(self, padded: np.ndarray, n_frames: int) -> np.ndarray:
        """`log_mel` for host buffers (the streaming front end)."""
        return np.array(self.log_mel(mx.array(padded, dtype=mx.float32), n_frames))

    def features(self, audio: np.ndarray, total_frames: int | None = None) -> mx.array:
        """Features of a whole utterance on the device, (total_frames, features) with frames from n // hop on
        zero (the padding a batch gives); normalized per feature over the valid frames when the model asks.
        Zero samples appended to the audio equal the centred STFT's own right padding, so valid frames do not
        depend on `total_frames`."""
        a = self.args
        n = self.frames_for(len(audio))
        total = n if total_frames is None else max(total_frames, n)
        x = mx.array(np.asarray(audio, dtype=np.float32))
        if a.preemph and len(audio):
            x = mx.concatenate([x[:1], x[1:] - a.preemph * x[:-1]])
        half = a.n_fft // 2
        padded = mx.pad(x, [(half, half + (total - n) * a.hop_length)])
        feats = self.log_mel(padded, total)
        valid = (mx.arange(total) < n)[:, None]
        if a.normalize == "per_feature":
            feats = normalize_per_feature(feats, valid, n)
        return mx.where(valid, feats, 0.0) if total > n else feats

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Features of a whole utterance: (n // hop, features); normalized per feature when the model asks."""
        return np.array(self.features(audio))


def normalize_per_feature(feats: mx.array, valid: mx.array, n: int) -> mx.array:
    """Zero mean, unit (Bessel-corrected) standard deviation per mel bin over the `n` valid frames."""
    if n < 2:
        return mx.zeros_like(feats)
    mean = mx.where(valid, feats, 0.0).sum(axis=0, keepdims=True) / n
    var = mx.where(valid, (feats - mean) ** 2, 0.0).sum(axis=0, keepdims=True) / (n - 1)
    return (feats - mean) / (mx.sqrt(var) + NORM_EPS)


class MelStream:
    """The frames of `MelFrontEnd` (without normalization), produced as soon as their window is complete."""

    def __init__(self, front: MelFrontEnd):
        self.front = front
        self.reset()

    def reset(self) -> None:
        half = self.front.args.n_fft // 2
        self._signal = np.zeros(half, np.float32)  # the centred STFT's left zero padding
        self._n_samples = 0
        self._emitted = 0
        self._last = 0.0

    @property
    def n_samples(self) -> int:
        return self._n_samples

    def push(self, audio: np.ndarray) -> np.ndarray:
        """Append float32 samples; returns the newly complete frames (k, features)."""
        a = self.front.args
        x = np.asarray(audio, dtype=np.float32)
        if len(x):
            y = preemphasis(x, a.preemph, prev=self._last, first=self._n_samples == 0)
            self._last = float(x[-1])
            self._signal = np.concatenate([self._signal, y])
            self._n_samples += len(x)
        complete = self._emitted + max(0, (len(self._signal) - a.n_fft) // a.hop_length + 1)
        return self._take(min(complete, self.front.frames_for(self._n_samples)))

    def flush(self) -> np.ndarray:
        """The remaining valid frames of the utterance, with the right zero padding of the centred STFT."""
        a = self.front.args
        self._signal = np.concatenate([self._signal, np.zeros(a.n_fft // 2, np.float32)])
        return self._take(self.front.frames_for(self._n_samples))

    def _take(self, upto: int) -> np.ndarray:
        k = upto - self._emitted
        if k <= 0:
            return np.zeros((0, self.front.args.features), np.float32)
        out = self.front.power_frames(self._signal, k)
        self._emitted = upto
        self._signal = self._signal[k * self.front.args.hop_length :]  # the buffer starts at the next frame
        return out
