"""Utterance chunking and ICL priming, voice profiles and their clone cache, and `assistant say/voices`.

The speech-tokenizer decoder and the clone front ends belong to the tts-codec engineer; here a recording stub
stands in for them (tests only), so these tests check our side of the contract: which codes reach the decoder,
when chunks come out, and when cached reference data is recomputed.
"""

from __future__ import annotations

import dataclasses
import shutil
import wave
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from assistant.audio.files import write_audio
from assistant.audio.tempo import TimeStretch
from assistant.config import TtsConfig
from assistant.errors import ConfigError, InputError
from assistant.tts.qwen3.engine import Qwen3TTS, ad_hoc_voice
from assistant.tts.voices import VoiceProfile, load_profiles

from .test_qwen3_parity import case_named, loaded, prompt_of

REPO = Path(__file__).resolve().parents[2]


class RecordingDecoder:
    """Stand-in for tts-codec's CodecDecoder.step(): 1920 samples per frame carrying the frame's first code."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def new_state(self) -> dict[str, int]:
        return {"frames": 0}

    def step(self, codes: mx.array, state: dict[str, int]) -> mx.array:
        c = np.array(codes)
        self.calls.append(c)
        state["frames"] += c.shape[0]
        return mx.array(np.repeat(c[:, 0].astype(np.float32) / 2048.0, 1920))


class StubTokenizer:
    def __init__(self) -> None:
        self.decoder = RecordingDecoder()
        self.encoder = None


def greedy(**kw: Any) -> TtsConfig:
    return TtsConfig(temperature=0.0, subtalker_temperature=0.0, **kw)


def test_chunks_first_after_first_chunk_frames_then_every_chunk_frames(checkpoints: Any, reference: Any) -> None:
    """step() returns audio after 1 frame, then 1, 2 and every 4 frames, then the remainder; samples = frames x
    1920 (the chunks after the first grow, so the second is ready before the first has played)."""
    case = case_named(reference, "cv_english_full")
    st = StubTokenizer()
    tts = Qwen3TTS(loaded(checkpoints, "custom_voice"), greedy(max_frames=19, first_chunk_frames=1, chunk_frames=4), st)
    utt = tts.start(ad_hoc_voice("v", prompt_of(case)), case["text"])
    sizes = []
    while not utt.done:
        chunk = utt.step()
        if chunk is not None:
            assert chunk.dtype == np.float32
            sizes.append(len(chunk) // 1920)
    assert sizes == [1, 1, 2, 4, 4, 4, 3]
    assert utt.frames_emitted == 19
    sent = np.concatenate(st.decoder.calls)
    assert sent.tolist() == case["codes"]


def test_step_decode_makes_a_chunk_now_or_holds_up_to_chunk_frames(checkpoints: Any, reference: Any) -> None:
    """After the first chunk, step(True) decodes the frames held so far at once and step(False) holds them up to
    chunk_frames (the pump's choice from the listener's buffer); the codes reaching the decoder are unchanged."""
    case = case_named(reference, "cv_english_full")
    st = StubTokenizer()
    tts = Qwen3TTS(loaded(checkpoints, "custom_voice"), greedy(max_frames=19, first_chunk_frames=1, chunk_frames=4), st)
    utt = tts.start(ad_hoc_voice("v", prompt_of(case)), case["text"])
    decisions = iter([None, True, False, True] + [False] * 40)
    sizes = []
    while not utt.done:
        chunk = utt.step(next(decisions))
        if chunk is not None:
            sizes.append(len(chunk) // 1920)
    assert sizes == [1, 1, 2, 4, 4, 4, 3]  # held: 1 frame, then 2 on True, then up to 4 at a time
    assert np.concatenate(st.decoder.calls).tolist() == case["codes"]


def test_voice_speed_time_stretches_the_chunks(checkpoints: Any, reference: Any) -> None:
    """At speed 1.5 the chunks are the speed-1.0 audio through TimeStretch(1.5), same frames, 1/1.5 the samples."""
    case = case_named(reference, "cv_english_full")
    cfg = greedy(max_frames=19, first_chunk_frames=1, chunk_frames=4)
    tts = Qwen3TTS(loaded(checkpoints, "custom_voice"), cfg, StubTokenizer())
    voice = ad_hoc_voice("v", prompt_of(case))
    plain = np.concatenate(list(tts.stream(case["text"], voice)))
    utt = tts.start(dataclasses.replace(voice, speed=1.5), case["text"])
    chunks = []
    while not utt.done:
        if (chunk := utt.step()) is not None:
            chunks.append(chunk)
    ts = TimeStretch(1.5, tts.sample_rate)
    assert np.array_equal(np.concatenate(chunks), np.concatenate([ts.push(plain), ts.flush()]))
    assert utt.frames_emitted == 19 and len(chunks) == 7
    assert sum(len(c) for c in chunks) == round(19 * 1920 / 1.5)


def test_icl_primes_decoder_with_reference_codes(checkpoints: Any, reference: Any) -> None:
    """In-context cloning pushes the reference codes through the decoder first, then the generated frames."""
    case = case_named(reference, "icl_stream")
    st = StubTokenizer()
    tts = Qwen3TTS(loaded(checkpoints, "base"), greedy(max_frames=19), st)
    chunks = list(tts.stream(case["text"], ad_hoc_voice("icl", prompt_of(case))))
    calls = st.decoder.calls
    assert calls[0].tolist() == case["ref_codes"]
    assert np.concatenate(calls[1:]).tolist() == case["codes"]
    assert sum(len(c) for c in chunks) == 19 * 1920  # the primed reference audio is discarded


def write_clip(path: Path, seconds: float, rate: int = 16000, freq: float = 220.0) -> None:
    t = np.arange(int(seconds * rate)) / rate
    write_audio(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


class FakeFrontEnds:
    """Clone front ends for profile resolution (tests only): counts how often they run."""

    model_type = "base"

    def __init__(self) -> None:
        self.loaded = type("L", (), {"repo": "tiny/base"})()
        self.speech_tokenizer = type("S", (), {"encoder": self})()
        self.runs = 0

    def speaker_encoder(self) -> Any:
        return self

    def embed(self, wav: np.ndarray) -> mx.array:
        self.runs += 1
        return mx.array(np.full(64, float(np.abs(wav).mean()), np.float32))

    def encode(self, wav: np.ndarray) -> mx.array:
        return mx.array(np.zeros((3, 16), np.int32))


def test_clone_cache_recomputed_when_wav_changes(tmp_path: Path, isolated_env: Path) -> None:
    """Reference x-vector and codes are cached in the user's cache folder (not next to the profile) and
    recomputed only when the wav changes."""
    write_clip(tmp_path / "ref.wav", 1.0)
    (tmp_path / "me.toml").write_text('mode = "clone_icl"\nref_wav = "ref.wav"\nref_text = "hello"\n')
    fe = FakeFrontEnds()
    prof = load_profiles(tmp_path)["me"]
    v1 = prof.resolve(fe)
    v2 = prof.resolve(fe)
    from assistant.paths import voice_cache_dir

    assert fe.runs == 1 and [p.name.split("-")[0] for p in voice_cache_dir().glob("*.npz")] == ["me"]
    assert not (tmp_path / ".cache").exists()
    assert v2.prompt.ref_codes is not None and v2.prompt.ref_codes.shape == (3, 16)
    write_clip(tmp_path / "ref.wav", 1.0, freq=440.0)
    prof.resolve(fe)
    assert fe.runs == 2
    assert v1.prompt.xvector is not None


def test_a_clone_cache_cut_short_by_a_full_disk_is_recomputed_not_fatal(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while caching a clone prompt leaves no half-written cache, and a cache cut short anyway (a crash,
    an older version) is recomputed: the voice failed to resolve (BadZipFile) at every start until deleted."""
    from assistant.paths import voice_cache_dir

    write_clip(tmp_path / "ref.wav", 1.0)
    (tmp_path / "me.toml").write_text('mode = "clone"\nref_wav = "ref.wav"\n')
    fe, prof = FakeFrontEnds(), load_profiles(tmp_path)["me"]
    real_savez = np.savez

    def disk_full(file: Any, **arrays: Any) -> None:
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    assert prof.resolve(fe).prompt.xvector is not None
    assert list(voice_cache_dir().iterdir()) == []  # nothing half-written left behind
    monkeypatch.setattr(np, "savez", real_savez)
    prof.resolve(fe)
    (cache,) = voice_cache_dir().glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])  # cut short
    assert prof.resolve(fe).prompt.xvector is not None
    prof.resolve(fe)  # the rewritten cache serves
    assert fe.runs == 3


def test_packaged_profiles_cover_every_mode() -> None:
    """voices/ has a default voice and at least one profile per mode, and they all parse."""
    profiles = load_profiles(REPO / "voices")
    assert "default" in profiles
    assert {p.mode for p in profiles.values()} == {"custom_voice", "voice_design", "clone", "clone_icl"}
    for p in profiles.values():
        if p.ref_wav:
            with wave.open(str(p.wav_path)) as w:
                assert 3.0 <= w.getnframes() / w.getframerate() <= 20.0


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('mode = "whisper"\n', "mode"),
        ('mode = "custom_voice"\n', "speaker"),
        ('mode = "clone_icl"\nref_wav = "x.wav"\n', "ref_text"),
        ('mode = "custom_voice"\nspeaker = "ryan"\ncolour = 1\n', "unknown keys"),
        ('mode = "custom_voice"\nspeaker = "ryan"\nspeed = 9\n', "speed"),
    ],
)
def test_bad_profiles_fail_naming_the_problem(tmp_path: Path, body: str, match: str) -> None:
    """A malformed profile fails with a one-line ConfigError naming the key."""
    (tmp_path / "bad.toml").write_text(body)
    with pytest.raises(ConfigError, match=match):
        VoiceProfile.read(tmp_path / "bad.toml")


def test_profile_needs_matching_model(checkpoints: Any) -> None:
    """A voice_design profile on a CustomVoice model fails saying which model type it needs."""
    tts = Qwen3TTS(loaded(checkpoints, "custom_voice"), TtsConfig(voices_dir=str(REPO / "voices")))
    with pytest.raises(InputError, match="voice_design model"):
        tts.voice("narrator")
    with pytest.raises(InputError, match="unknown voice"):
        tts.voice("nobody")


def test_cli_say_out_writes_wav(
    checkpoints: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    """`assistant say TEXT --voice vivian --out f.wav` writes a 24 kHz 16-bit WAV of whole frames."""
    from assistant import cli
    from assistant.tts.qwen3 import engine

    voices = tmp_path / "voices"
    voices.mkdir()
    shutil.copy(REPO / "voices" / "vivian.toml", voices / "vivian.toml")
    monkeypatch.setattr(engine, "load_speech_tokenizer_of", lambda loaded: StubTokenizer())
    out = tmp_path / "hi.wav"
    rc = cli.main(
        [
            "say",
            "Hello there.",
            "--voice",
            "vivian",
            "--out",
            str(out),
            "--set",
            f"tts.model={checkpoints('custom_voice')}",
            "--set",
            f"tts.voices_dir={voices}",
            "--set",
            "tts.max_frames=5",
        ]
    )
    assert rc == 0
    with wave.open(str(out)) as w:
        assert w.getframerate() == 24000 and w.getsampwidth() == 2
        assert w.getnframes() % 1920 == 0 and 0 < w.getnframes() <= 5 * 1920


def test_cli_voices_lists_profiles(capsys: pytest.CaptureFixture[str], isolated_env: Path) -> None:
    """`assistant voices` lists every packaged profile and marks the default."""
    from assistant import cli

    assert cli.main(["voices"]) == 0
    out = capsys.readouterr().out
    for name in ("default", "narrator", "clone", "clone_icl"):
        assert name in out
    assert "* default" in out


def test_stream_text_pieces_equal_whole_text_streaming_layout(checkpoints: Any, reference: Any) -> None:
    """stream_text() over word-sized pieces gives the same audio as the whole text in the streaming layout."""
    case = case_named(reference, "cv_auto_stream")
    cfg = greedy(max_frames=19, chunk_frames=2)
    voice = ad_hoc_voice("v", prompt_of(case))
    whole = Qwen3TTS(loaded(checkpoints, "custom_voice"), cfg, StubTokenizer())
    utt = whole.start(voice, case["text"], layout="stream")
    want = []
    while not utt.done:
        chunk = utt.step()
        if chunk is not None:
            want.append(chunk)
    tts = Qwen3TTS(loaded(checkpoints, "custom_voice"), cfg, StubTokenizer())
    words = case["text"].split(" ")
    pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    got = list(tts.stream_text(pieces, voice))
    assert np.array_equal(np.concatenate(got), np.concatenate(want))
    sent = np.concatenate(tts.speech_tokenizer.decoder.calls)
    assert sent.tolist() == case["codes"]


def test_warmup_runs_every_chunk_size_and_changes_nothing(checkpoints: Any, reference: Any) -> None:
    """warmup() compiles the frame kernel and decodes each chunk size once (1..chunk_frames and the first);
    a greedy utterance afterwards still gives the official codes."""
    case = case_named(reference, "cv_english_full")
    st = StubTokenizer()
    cfg = greedy(max_frames=19, first_chunk_frames=2, chunk_frames=3, voice="vivian")
    tts = Qwen3TTS(loaded(checkpoints, "custom_voice"), cfg, st)
    tts.warmup()
    assert sorted(len(c) for c in st.decoder.calls) == [1, 2, 3]
    assert tts.talker.compiled.fns  # the frame kernel is built
    st.decoder.calls.clear()
    utt = tts.start(ad_hoc_voice("v", prompt_of(case)), case["text"])
    while not utt.done:
        utt.step()
    assert np.concatenate(st.decoder.calls).tolist() == case["codes"]


def test_warmup_leaves_nothing_to_trace_when_the_kv_buffers_grow(
    checkpoints: Any, reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After warmup(), an utterance whose KV buffers grow several times mid-stream traces no talker step (a trace
    between two frames is a compile on the GPU), and its greedy codes are still the official ones."""
    from assistant.tts.qwen3.talker import CompiledCache, StaticCache, TalkerModel

    case = case_named(reference, "cv_auto_stream")  # streaming: its prefill passes one row through the step
    traced: list[int] = []
    step = TalkerModel.step

    def counted(self: TalkerModel, x: mx.array, pos: mx.array, kvs: list[mx.array], tables: Any) -> Any:
        traced.append(kvs[0].shape[2])  # runs only while mx.compile traces a new buffer length
        return step(self, x, pos, kvs, tables)

    monkeypatch.setattr(TalkerModel, "step", counted)
    monkeypatch.setattr(StaticCache, "STEP", 8)  # the buffers grow every 8 positions: several times per utterance
    st = StubTokenizer()
    cfg = greedy(max_frames=case["max_new_tokens"] - 1, voice="vivian")  # the official run's length
    tts = Qwen3TTS(loaded(checkpoints, "custom_voice"), cfg, st)
    monkeypatch.setattr(tts.talker, "compiled", CompiledCache())  # nothing compiled by earlier tests counts
    tts.warmup()
    warm = len(traced)
    st.decoder.calls.clear()
    utt = tts.start(ad_hoc_voice("v", prompt_of(case)), case["text"], layout="stream")
    while not utt.done:
        utt.step()
    assert warm > 2  # the warm-up traced several lengths, so the counter sees traces
    assert traced[warm:] == []
    assert utt.gen.cache is not None and utt.gen.cache[0].capacity >= 3 * StaticCache.STEP
    assert np.concatenate(st.decoder.calls).tolist() == case["codes"]
