"""Length buckets, masking, warm-up and the bounded cost of partials of the offline (Parakeet) transcriber."""

from __future__ import annotations

import itertools
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from assistant.config import SttConfig
from assistant.stt.model import LoadedModel
from assistant.stt.transcriber import OfflineTranscriber, StreamingTranscriber, bucket_of, length_buckets
from tools.stt_ref import tiny


def test_buckets_grow_geometrically_and_cover_the_limit() -> None:
    """Buckets start at the minimum, grow by at most 20 % (+ rounding), are multiples of the subsampling, and the
    last holds the longest utterance."""
    b = length_buckets(3000, 200, 8)
    assert b[0] == 200 and b[-1] >= 3000 and len(b) <= 20
    assert all(x % 8 == 0 for x in b)
    assert all(nxt <= cur * 1.2 + 8 for cur, nxt in itertools.pairwise(b))
    assert bucket_of(201, b) == b[1] and bucket_of(9000, b) % b[-1] == 0


@pytest.mark.parametrize("seconds", [0.5, 1.23, 2.71])
def test_padded_features_equal_unpadded(models: dict[str, LoadedModel], seconds: float) -> None:
    """The device mel of audio zero-padded to a bucket equals the unpadded mel on the valid frames (normalized
    over those only) and is zero beyond."""
    front = models["parakeet"].mel
    x = tiny.audio(seed=4, seconds=seconds)
    want = front(x)
    got = np.array(front.features(x, want.shape[0] + 37))
    assert np.abs(got[: want.shape[0]] - want).max() <= 1e-5
    assert not got[want.shape[0] :].any()


@pytest.mark.parametrize("kind", ["parakeet", "nemotron"])
@pytest.mark.parametrize("pad", [1, 8, 45])
def test_masked_padded_encoder_equals_unpadded(models: dict[str, LoadedModel], kind: str, pad: int) -> None:
    """Encoder outputs of the valid frames are those of the unpadded pass: padding is masked out of the
    subsampling convs, attention and the conv modules."""
    lm = models[kind]
    x = tiny.audio(seed=5, seconds=1.37)
    n = lm.mel.frames_for(len(x))
    enc = lm.model.encoder
    want = np.array(enc(lm.mel.features(x)[None]))
    got = np.array(enc(lm.mel.features(x, n + pad)[None], valid=n))
    assert want.shape[1] == enc.pre_encode.out_length(n)
    assert np.abs(got[:, : want.shape[1]] - want).max() <= 1e-4


class Spy:
    """Records the mel shapes and the number of encoder passes of one loaded model."""

    def __init__(self, lm: LoadedModel, monkeypatch: pytest.MonkeyPatch):
        self.shapes: list[int] = []
        enc = lm.model.encoder
        real = type(enc).__call__

        def call(this: Any, mel: mx.array, *a: Any, **k: Any) -> mx.array:
            self.shapes.append(int(mel.shape[1]))
            return real(this, mel, *a, **k)

        monkeypatch.setattr(type(enc), "__call__", call)


def test_transcribe_runs_the_encoder_once(models: dict[str, LoadedModel], monkeypatch: pytest.MonkeyPatch) -> None:
    """transcribe() is one pass even when the audio spans many partial intervals."""
    spy = Spy(models["parakeet"], monkeypatch)
    tr = OfflineTranscriber(models["parakeet"], SttConfig(partial_interval_ms=100, min_utterance_ms=0), guard=False)
    assert tr.transcribe(tiny.audio(seconds=1.5)).text != ""
    assert len(spy.shapes) == 1


def test_after_warmup_every_utterance_uses_a_warmed_shape(
    models: dict[str, LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """warmup() runs every bucket once; 12 utterances of different lengths then only reuse those shapes, and the
    transcripts equal those of a transcriber that never warmed up."""
    cfg = SttConfig(partial_interval_ms=0, min_utterance_ms=0, max_utterance_s=4.0)
    cold = OfflineTranscriber(models["parakeet"], cfg, guard=False)
    lengths = np.linspace(0.3, 3.9, 12)
    want = [cold.transcribe(tiny.audio(seed=7, seconds=float(s))).text for s in lengths]
    spy = Spy(models["parakeet"], monkeypatch)
    tr = OfflineTranscriber(models["parakeet"], cfg, guard=False)
    tr.warmup()
    warmed = set(spy.shapes)
    assert warmed == set(tr.buckets)
    spy.shapes.clear()
    got = [tr.transcribe(tiny.audio(seed=7, seconds=float(s))).text for s in lengths]
    assert set(spy.shapes) <= warmed
    assert got == want


def test_partials_cost_a_bounded_multiple_of_the_final(
    models: dict[str, LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 60 s fed in 100 ms blocks with partials every 300 ms, the partials' encoded frames total at most
    ten final passes (every 300 ms would be ~100) and they keep coming to the end."""
    spy = Spy(models["parakeet"], monkeypatch)
    cfg = SttConfig(partial_interval_ms=300, min_utterance_ms=0, max_utterance_s=120.0)
    tr = OfflineTranscriber(models["parakeet"], cfg, guard=False)
    x = np.tile(tiny.audio(seconds=2.0), 30)
    due = [i for i in range(0, len(x), 1600) if tr.feed(x[i : i + 1600]) is not None]
    n_final = bucket_of(models["parakeet"].mel.frames_for(len(x)), tr.buckets)
    assert sum(spy.shapes) <= 10 * n_final
    assert len(x) - due[-1] <= len(x) // 8 + 1600


def test_streaming_warmup_leaves_a_fresh_state(models: dict[str, LoadedModel]) -> None:
    """Nemotron's warm-up fills the attention cache once and resets: the next transcript equals a cold one."""
    cfg = SttConfig(engine="nemotron", min_utterance_ms=0, partial_interval_ms=0)
    x = tiny.audio(seconds=1.2)
    want = StreamingTranscriber(models["nemotron"], cfg, guard=False).transcribe(x).text
    tr = StreamingTranscriber(models["nemotron"], cfg, guard=False)
    tr.warmup()
    assert tr.transcribe(x).text == want
