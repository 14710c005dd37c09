"""The two engines behind the `Transcriber` protocol.

`OfflineTranscriber` (Parakeet TDT, the default): the final transcript is one encoder pass over the utterance,
zero-padded to one of a few length buckets with the padding masked out (exact: the valid frames equal an unpadded
pass), so MLX compiles kernels per bucket once (`warmup()`), never per utterance. A partial is a re-decode of the
growing buffer every `stt.partial_interval_ms` of audio, the interval growing with the buffer (an eighth of it) so
the partials of an utterance cost a bounded multiple of its final pass. Utterances longer than
`stt.max_utterance_s` are split at the quietest 100 ms near the limit, each piece transcribed once.
`StreamingTranscriber` (Nemotron): cache-aware chunks of `stt.chunk_ms`; tokens only grow, and the final transcript
costs one padded chunk after the end of speech.
Both take int16 or float32 16 kHz mono of any length, repair NaN/inf and clipping, and return "" for silence, noise
or utterances shorter than `stt.min_utterance_ms`.
"""

from __future__ import annotations

import logging

import mlx.core as mx
import numpy as np

from assistant.audio.format import CAPTURE_RATE, StreamResampler, frame_samples, resample
from assistant.config import SttConfig
from assistant.errors import ConfigError, InputError
from assistant.stt import tdt
from assistant.stt.guard import SpeechGuard
from assistant.stt.mel import LOG_ZERO_GUARD, MelStream
from assistant.stt.model import LoadedModel
from assistant.stt.rnnt import RnntDecoder
from assistant.stt.types import Transcript

log = logging.getLogger(__name__)

SILENCE_LOGMEL = float(np.log(LOG_ZERO_GUARD))  # pads the last streaming chunk: the log-mel of digital silence
SPLIT_SEARCH = 0.25  # a too-long utterance is cut in the last quarter of the limit, at its quietest 100 ms
QUIET_WINDOW = frame_samples(CAPTURE_RATE, 100)
BUCKET_MIN_S = 2.0  # the smallest length bucket; each next one is BUCKET_GROWTH times longer
BUCKET_GROWTH = 1.2  # at most 20 % padding; 2 s .. 30 s takes 16 buckets
PARTIAL_GROWTH = 8  # the next partial is due after max(interval, buffered / 8): partials cost <= ~9 final passes


def length_buckets(max_frames: int, min_frames: int, multiple: int) -> list[int]:
    """Mel-frame lengths utterances are padded to: min_frames, then x BUCKET_GROWTH, rounded up to `multiple`,
    until one holds max_frames."""
    out = [-(-min_frames // multiple) * multiple]
    while out[-1] < max_frames:
        out.append(-(-int(out[-1] * BUCKET_GROWTH) // multiple) * multiple)
    return out


def bucket_of(frames: int, buckets: list[int]) -> int:
    """The smallest bucket holding `frames` (beyond the last: the next multiple of the last)."""
    for b in buckets:
        if b >= frames:
            return b
    return -(-frames // buckets[-1]) * buckets[-1]


def to_float32(audio: np.ndarray, sample_rate: int = CAPTURE_RATE) -> np.ndarray:
    """Mono float32 16 kHz in [-1, 1] from int16/int32/float input at any rate; NaN/inf become 0, peaks are clipped."""
    x, repaired = _repaired_float32(audio)
    if repaired:
        log.warning("stt: %s", repaired)
    if sample_rate != CAPTURE_RATE:
        if sample_rate <= 0:
            raise InputError(f"sample rate {sample_rate} Hz is invalid; pass the rate the audio was recorded at")
        x = resample(x, sample_rate, CAPTURE_RATE)
    return x


def _repaired_float32(audio: np.ndarray) -> tuple[np.ndarray, str]:
    """Mono float32 in [-1, 1] at the input's rate, and what was repaired to get there ("" when nothing)."""
    a = np.asarray(audio)
    if a.ndim == 2:  # (samples, channels) -> mono
        a = a.mean(axis=1) if a.shape[1] <= a.shape[0] else a.mean(axis=0)
    if a.ndim != 1:
        raise InputError(f"audio must be mono samples (1-D), got shape {a.shape}; pass one channel")
    if a.dtype == np.int16:
        x = a.astype(np.float32) / 32768.0
    elif a.dtype == np.int32:
        x = (a / 2.0**31).astype(np.float32)
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float32)
    else:
        raise InputError(f"audio samples of type {a.dtype} are not supported; pass int16 or float32")
    repaired = []
    bad = ~np.isfinite(x)
    if bad.any():
        repaired.append(f"{int(bad.sum())} NaN/inf samples replaced by silence")
        x = np.where(bad, np.float32(0.0), x)
    if np.abs(x).max(initial=0.0) > 1.0:
        repaired.append("audio beyond full scale was clipped to [-1, 1]")
        x = np.clip(x, -1.0, 1.0)
    return x, "; ".join(repaired)


class _Base:
    """Audio bookkeeping shared by both engines: the partial clock, the speech guard, the minimum length."""

    def __init__(self, lm: LoadedModel, cfg: SttConfig, guard: bool = True):
        self.lm, self.cfg = lm, cfg
        self.guard = SpeechGuard() if guard else None
        self.interval = frame_samples(CAPTURE_RATE, cfg.partial_interval_ms)
        self.min_samples = frame_samples(CAPTURE_RATE, cfg.min_utterance_ms)
        self._samples = 0
        self._next_partial = self.interval
        self._resampler: StreamResampler | None = None  # for input not at 16 kHz, one per utterance
        self._warned = False  # repaired input is logged once per utterance, not once per 100 ms block

    def _account(self, x: np.ndarray) -> bool:
        """Count new samples; True when a partial is due."""
        self._samples += len(x)
        if self.guard is not None:
            self.guard.push(x)
        if self.interval <= 0 or self._samples < self._next_partial:
            return False
        self._next_partial = self._samples + max(self.interval, self._samples // PARTIAL_GROWTH)
        return True

    def _speech(self) -> bool:
        return self._samples >= max(self.min_samples, 1) and (self.guard is None or self.guard.has_speech)

    def _at_16k(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """The block as float32 16 kHz; other rates go through one streaming resampler per utterance, so audio
        fed in blocks gives the same samples (hence the same transcript) as the same audio fed at once."""
        x, repaired = _repaired_float32(audio)
        if repaired and not self._warned:
            log.warning("stt: %s (said once per utterance)", repaired)
            self._warned = True
        if sample_rate == CAPTURE_RATE:
            return x
        if sample_rate <= 0:
            raise InputError(f"sample rate {sample_rate} Hz is invalid; pass the rate the audio was recorded at")
        if self._resampler is None or self._resampler.src_rate != sample_rate:
            self._resampler = StreamResampler(sample_rate, CAPTURE_RATE)
        return self._resampler.push(x)

    def _resampler_tail(self) -> np.ndarray:
        """The resampler's last samples (its filter delay), due at the end of the utterance."""
        tail = self._resampler.flush() if self._resampler is not None else np.zeros(0, np.float32)
        self._resampler = None
        return tail

    def _ingest_tail(self) -> None:
        """Before finalizing: the samples the streaming resampler still held."""
        tail = self._resampler_tail()
        if len(tail):
            self._ingest(tail)
            self._account(tail)

    def _reset_clock(self) -> None:
        self._resampler = None
        self._warned = False
        self._samples = 0
        self._next_partial = self.interval
        if self.guard is not None:
            self.guard.reset()

    def _language(self, tag: str) -> str:
        return tag or ("" if self.cfg.language == "auto" else self.cfg.language)

    def transcribe(self, audio: np.ndarray, sample_rate: int = CAPTURE_RATE) -> Transcript:
        """The transcript of a whole utterance (resets first): one decoding pass, no partial."""
        self.reset()
        x = to_float32(audio, sample_rate)
        if len(x):
            self._ingest(x)
            self._account(x)
        return self.finalize()

    def feed(self, audio: np.ndarray, sample_rate: int = CAPTURE_RATE) -> str | None:
        """Append audio; every stt.partial_interval_ms (growing with the buffer) the transcript so far, else None."""
        x = self._at_16k(audio, sample_rate)
        if len(x) == 0:
            return None
        self._ingest(x)
        if not self._account(x):
            return None
        return self._partial() if self._speech() else ""

    def reset(self) -> None:
        raise NotImplementedError

    def warmup(self) -> None:
        """Compile every shape this engine will run (call once at start-up, on the compute thread)."""
        raise NotImplementedError

    def _ingest(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _partial(self) -> str:
        raise NotImplementedError

    def finalize(self) -> Transcript:
        raise NotImplementedError


class OfflineTranscriber(_Base):
    """Whole-utterance decoding (Parakeet TDT; any non-streaming checkpoint)."""

    def __init__(self, lm: LoadedModel, cfg: SttConfig, guard: bool = True):
        super().__init__(lm, cfg, guard)
        self.max_samples = int(cfg.max_utterance_s * CAPTURE_RATE)
        a = lm.mel.args
        per_s = a.sample_rate // a.hop_length
        factor = lm.model.encoder.args.subsampling_factor
        max_frames = lm.mel.frames_for(self.max_samples)
        self.buckets = length_buckets(max_frames, min(max_frames, int(BUCKET_MIN_S * per_s)), factor)
        self.reset()

    def reset(self) -> None:
        self._reset_clock()
        self._chunks: list[np.ndarray] = []
        self._buffered = 0
        self._done: list[tuple[str, str]] = []  # (text, language) of split-off pieces

    def warmup(self) -> None:
        """One padded encoder pass per length bucket and one decode: later utterances compile nothing."""
        a = self.lm.mel.args
        for frames in self.buckets:
            self._decode(np.zeros(frames * a.hop_length, np.float32), decode=frames == self.buckets[0])
        self.reset()

    def _ingest(self, x: np.ndarray) -> None:
        self._chunks.append(x)
        self._buffered += len(x)
        while self._buffered > self.max_samples:
            self._split()

    def _partial(self) -> str:
        return self._join([*self._done, self._decode(self._buffer())])

    def finalize(self) -> Transcript:
        self._ingest_tail()
        parts = [*self._done, self._decode(self._buffer())] if self._speech() else []
        text, lang = self._join(parts), next((lg for _, lg in parts if lg), "")
        self.reset()
        return Transcript(text=text, language=self._language(lang))

    def _buffer(self) -> np.ndarray:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, np.float32)

    def _split(self) -> None:
        x = self._buffer()
        lo = int(self.max_samples * (1 - SPLIT_SEARCH))
        win = x[lo : self.max_samples]
        n = len(win) // QUIET_WINDOW
        energy = (win[: n * QUIET_WINDOW].reshape(n, QUIET_WINDOW) ** 2).mean(axis=1) if n else np.zeros(1)
        cut = lo + int(np.argmin(energy)) * QUIET_WINDOW + QUIET_WINDOW // 2 if n else self.max_samples
        log.info("stt: utterance longer than %.0f s, split at %.2f s", self.cfg.max_utterance_s, cut / CAPTURE_RATE)
        piece = x[:cut]
        if self.guard is not None:  # a long silent stretch is not transcribed either
            check = SpeechGuard()
            check.push(piece)
        self._done.append(self._decode(piece) if self.guard is None or check.has_speech else ("", ""))
        self._chunks = [x[cut:]]
        self._buffered = len(x) - cut

    def _decode(self, x: np.ndarray, decode: bool = True) -> tuple[str, str]:
        """(text, language tag) of one piece of audio: mel and encoder at its length bucket, masked."""
        if len(x) < self.lm.mel.args.n_fft // 2 + 2 * self.lm.mel.args.hop_length:
            return "", ""
        m = self.lm.model
        n = self.lm.mel.frames_for(len(x))
        mel = self.lm.mel.features(x, bucket_of(n, self.buckets))[None].astype(self.lm.dtype)
        # projected at the bucket's length, cut after: a matmul of a new shape per utterance cost a first-call
        # setup on CUDA (the tail's first passes up to 1.9x their repeats on the H200)
        proj = m.project(m.encoder(mel, valid=n), self._prompt())[0, : m.encoder.pre_encode.out_length(n)]
        if not decode:
            mx.eval(proj)
            return "", ""
        if m.is_tdt:
            ids = tdt.tokens(tdt.greedy(m, proj), m.args.blank)
        else:
            ids = RnntDecoder(m).decode(proj)
        return self.lm.vocab.decode(ids)

    def _prompt(self) -> int | None:
        pa = self.lm.model.prompt_args
        return pa.index(self.cfg.language) if pa is not None else None

    @staticmethod
    def _join(parts: list[tuple[str, str]]) -> str:
        return " ".join(t for t, _ in parts if t)


class StreamingTranscriber(_Base):
    """Cache-aware chunked decoding (Nemotron): encoder and decoder state persist between chunks."""

    def __init__(self, lm: LoadedModel, cfg: SttConfig, guard: bool = True):
        super().__init__(lm, cfg, guard)
        enc = lm.model.encoder
        frame_ms = enc.args.subsampling_factor * lm.mel.args.hop_length * 1000 // lm.mel.args.sample_rate
        contexts = enc.args.att_context_size
        right = cfg.chunk_ms // frame_ms - 1
        chosen = [c for c in contexts if c[1] == right]
        if cfg.chunk_ms % frame_ms or not chosen:
            sizes = ", ".join(str((r + 1) * frame_ms) for _, r in contexts)
            raise ConfigError(
                f"stt.chunk_ms = {cfg.chunk_ms} is not a chunk size this model was trained for; use {sizes}"
            )
        self.context = chosen[0]
        self.factor = enc.args.subsampling_factor
        pa = lm.model.prompt_args
        self.prompt = pa.index(cfg.language) if pa is not None else None
        self.decoder = RnntDecoder(lm.model)
        self.mel = MelStream(lm.mel)
        self.reset()

    def reset(self) -> None:
        self._reset_clock()
        self.mel.reset()
        self.decoder.reset()
        self.cache = self.lm.model.encoder.new_cache(self.context)
        self._pending = np.zeros((0, self.lm.mel.args.features), np.float32)
        self._first = True

    def _need(self) -> int:
        """Mel frames of the next chunk: 1 + f*r first (the causal stem's start), then f*(r+1)."""
        r = self.context[1]
        return 1 + self.factor * r if self._first else self.factor * (r + 1)

    def _run(self, frames: np.ndarray, final: bool = False) -> None:
        self._pending = np.concatenate([self._pending, frames]) if len(frames) else self._pending
        while len(self._pending) >= self._need() or (final and len(self._pending)):
            need = self._need()
            chunk, self._pending = self._pending[:need], self._pending[need:]
            if len(chunk) < need:
                pad = np.full((need - len(chunk), chunk.shape[1]), SILENCE_LOGMEL, np.float32)
                chunk = np.concatenate([chunk, pad])
            m = self.lm.model
            enc = m.encoder.stream(mx.array(chunk)[None].astype(self.lm.dtype), self.cache)
            self.decoder.decode(m.project(enc, self.prompt)[0])
            self._first = False

    def warmup(self) -> None:
        """Chunks until the attention cache is full (every cache length once), then a fresh state."""
        left, right = max(self.context[0], 0), self.context[1]
        frames = (left // (right + 1) + 3) * self.factor * (right + 1)
        self._run(np.full((frames, self.lm.mel.args.features), SILENCE_LOGMEL, np.float32), final=True)
        self.reset()

    def _ingest(self, x: np.ndarray) -> None:
        self._run(self.mel.push(x))

    def _partial(self) -> str:
        return self.lm.vocab.decode(self.decoder.tokens)[0]

    def finalize(self) -> Transcript:
        self._ingest_tail()
        self._run(self.mel.flush(), final=True)
        text, tag = self.lm.vocab.decode(self.decoder.tokens) if self._speech() else ("", "")
        self.reset()
        return Transcript(text=text, language=self._language(tag))
