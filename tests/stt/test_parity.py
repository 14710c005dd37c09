"""Our MLX STT against the transformers reference on tiny seeded checkpoints loaded through our real loader."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from assistant.config import SttConfig
from assistant.stt import tdt
from assistant.stt.mel import MelStream
from assistant.stt.model import LoadedModel
from assistant.stt.rnnt import RnntDecoder
from assistant.stt.transcriber import OfflineTranscriber, StreamingTranscriber
from tools.stt_ref import tiny

TOL = 1e-4
STREAMING = ("nemotron", "nemotron_en")

Refs = dict[str, dict[str, np.ndarray]]


def prompt_of(kind: str) -> int | None:
    return tiny.PROMPTS["auto"] if kind == "nemotron" else None


def context_of(kind: str) -> tuple[int, int] | None:
    return None if kind == "parakeet" else (tiny.LEFT, tiny.OFFLINE_LOOKAHEAD)


def encode(lm: LoadedModel, kind: str, mel: np.ndarray) -> mx.array:
    return lm.model.encoder(mx.array(mel)[None], context_of(kind))


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_mel_matches_reference(kind: str, models: dict[str, LoadedModel], refs: Refs) -> None:
    """The log-mel front end equals the reference feature extractor on the valid frames (<= 1e-4)."""
    mel = models[kind].mel(tiny.audio())
    assert mel.shape == refs[kind]["mel"].shape
    assert np.abs(mel - refs[kind]["mel"]).max() <= TOL


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_encoder_matches_reference(kind: str, models: dict[str, LoadedModel], refs: Refs) -> None:
    """Encoder outputs and their joint projection (through the language prompt) equal the reference (<= 1e-4)."""
    lm = models[kind]
    enc = encode(lm, kind, refs[kind]["mel"])
    assert np.abs(np.array(enc[0]) - refs[kind]["encoder"]).max() <= TOL
    proj = lm.model.project(enc, prompt_of(kind))
    assert np.abs(np.array(proj[0]) - refs[kind]["projected"]).max() <= TOL


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_joint_logits_match_reference(kind: str, models: dict[str, LoadedModel], refs: Refs) -> None:
    """Joint logits for every frame and every prefix of the reference's greedy tokens equal the reference (<= 1e-4)."""
    lm, ref = models[kind], refs[kind]
    m = lm.model
    proj = mx.array(ref["projected"])
    lattice = ref["lattice"]
    pred, state = m.start()
    rows = [m.joint(proj, pred[0])]
    for tok in ref["tokens"][: lattice.shape[1] - 1].tolist():
        pred, state = m.advance(tok, state)
        rows.append(m.joint(proj, pred[0]))
    ours = np.array(mx.stack(rows, axis=1))
    assert ours.shape == lattice.shape
    assert np.abs(ours - lattice).max() <= TOL


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_greedy_tokens_match_reference(kind: str, models: dict[str, LoadedModel], refs: Refs) -> None:
    """Greedy decoding of our own features gives the reference's token sequence exactly (TDT or RNN-T)."""
    lm = models[kind]
    m = lm.model
    proj = m.project(encode(lm, kind, lm.mel(tiny.audio())), prompt_of(kind))[0]
    if m.is_tdt:
        ids = tdt.tokens(tdt.greedy(m, proj), m.args.blank)
    else:
        ids = RnntDecoder(m).decode(proj)
    assert len(refs[kind]["tokens"]) > 0
    assert ids == refs[kind]["tokens"].tolist()


@pytest.mark.parametrize("kind", STREAMING)
@pytest.mark.parametrize("right", tiny.STREAM_LOOKAHEADS)
def test_streaming_matches_reference_chunked_generate(
    kind: str, right: int, models: dict[str, LoadedModel], refs: Refs
) -> None:
    """The transcriber fed 30 ms blocks gives the reference's chunked streaming tokens and encoder frames."""
    lm = models[kind]
    cfg = SttConfig(engine="nemotron", chunk_ms=(right + 1) * 80, partial_interval_ms=0)
    tr = StreamingTranscriber(lm, cfg, guard=False)
    x = tiny.audio()
    frames: list[np.ndarray] = []
    real_stream = lm.model.encoder.stream

    def spy(mel: mx.array, cache):  # type: ignore[no-untyped-def]
        out = real_stream(mel, cache)
        frames.append(np.array(out[0]))
        return out

    lm.model.encoder.stream = spy  # type: ignore[method-assign]
    try:
        for s in range(0, len(x), 480):
            tr.feed(x[s : s + 480])
        tr._run(tr.mel.flush(), final=True)
    finally:
        del lm.model.encoder.stream
    assert tr.decoder.tokens == refs[kind][f"stream_tokens_r{right}"].tolist()
    assert np.abs(np.concatenate(frames) - refs[kind][f"stream_encoder_r{right}"]).max() <= TOL


def test_chunk_sizes_change_the_stream(refs: Refs) -> None:
    """The reference streams differ between chunk sizes, so the per-size comparisons are not one test repeated."""
    seqs = {tuple(refs["nemotron"][f"stream_tokens_r{r}"].tolist()) for r in tiny.STREAM_LOOKAHEADS}
    assert len(seqs) > 1


def test_incremental_mel_equals_offline(models: dict[str, LoadedModel]) -> None:
    """MelStream fed uneven blocks yields exactly the frames of the whole-utterance front end (no normalization)."""
    front = models["nemotron"].mel
    x = tiny.audio(seed=3, seconds=1.23)
    stream = MelStream(front)
    parts, pos = [], 0
    for size in (1, 7, 100, 333, 4000, 160, 2, 20000):
        parts.append(stream.push(x[pos : pos + size]))
        pos += size
    parts.append(stream.flush())
    got = np.concatenate(parts)
    want = front(x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5


def test_parakeet_partials_converge_to_final(models: dict[str, LoadedModel]) -> None:
    """Each partial re-decodes the audio so far; the last one, at the end of the audio, equals the final transcript."""
    cfg = SttConfig(partial_interval_ms=300, min_utterance_ms=0)
    tr = OfflineTranscriber(models["parakeet"], cfg, guard=False)
    x = tiny.audio(seconds=1.8)
    partials = []
    for s in range(0, len(x), 1600):
        p = tr.feed(x[s : s + 1600])
        if p is not None:
            partials.append((s + 1600, p))
    final = tr.finalize()
    assert [n for n, _ in partials] == list(range(4800, len(x) + 1, 4800))
    assert partials[-1][1] == final.text != ""
    one = OfflineTranscriber(models["parakeet"], cfg, guard=False)
    for n, text in partials:
        assert one.transcribe(x[:n]).text == text
