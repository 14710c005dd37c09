"""The codec decoder against the official qwen-tts decoder, and streaming against whole-sequence decoding."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest

from assistant.errors import InputError
from assistant.tts.qwen3.codec import CodecDecoder
from assistant.tts.qwen3.speech_tokenizer import SpeechTokenizer, sanitize_decoder
from tools.qwen3_tts_tokenizer_ref import tiny

from .conftest import FIXTURES


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    return np.load(FIXTURES / "decoder_codes.npy").astype(np.int32)


@pytest.fixture(scope="module")
def full(tokenizer: SpeechTokenizer, codes: np.ndarray) -> np.ndarray:
    return np.array(tokenizer.decoder(mx.array(codes)))


def test_fixture_codes_are_the_seeded_ones(codes: np.ndarray) -> None:
    """The committed codes are the ones the generator draws, so weights and inputs come from one seed."""
    assert np.array_equal(codes, tiny.test_codes())


def test_decoder_matches_official_forward(full: np.ndarray) -> None:
    """Whole-sequence decode equals the official `Qwen3TTSTokenizerV2Decoder.forward` within 1e-4 (fp32)."""
    ref = np.load(FIXTURES / "decoder_wav.npy")
    assert full.shape == ref.shape == (1, 1, 30 * 1920)
    assert full.dtype == np.float32
    assert np.abs(full - ref).max() <= 1e-4
    # not a degenerate signal: mostly unclipped and far from silence
    assert np.mean(np.abs(ref) >= 1.0) < 0.1 and np.sqrt(np.mean(ref**2)) > 0.1


def test_fixture_exercises_the_sliding_window(tokenizer: SpeechTokenizer, codes: np.ndarray) -> None:
    """With the window widened past the 30 frames the output departs from the official one: the window matters."""
    wide = CodecDecoder(dataclasses.replace(tokenizer.decoder.config, sliding_window=1000))
    wide.fuse()  # the loaded decoder is fused
    wide.update(tokenizer.decoder.parameters())
    ref = np.load(FIXTURES / "decoder_wav.npy")
    assert np.abs(np.array(wide(mx.array(codes))) - ref).max() > 1e-3


def _partition(rng: np.random.Generator, total: int, max_chunk: int) -> list[int]:
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(min(rng.integers(1, max_chunk + 1), total - sum(sizes))))
    return sizes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_random_partitions_equal_full_decode(
    tokenizer: SpeechTokenizer, codes: np.ndarray, full: np.ndarray, seed: int
) -> None:
    """Random chunkings (1..9 frames, 30 frames > window 8) through `step` equal the full decode within 1e-5."""
    sizes = _partition(np.random.default_rng(seed), codes.shape[2], 9)
    state, pos, parts = tokenizer.decoder.new_state(), 0, []
    for n in sizes:
        out = tokenizer.decoder.step(mx.array(codes[0, :, pos : pos + n].T), state)
        assert out.shape == (n * 1920,)
        parts.append(np.array(out))
        pos += n
    assert state.offset == 30
    assert np.abs(np.concatenate(parts) - full[0, 0]).max() <= 1e-5


def test_streaming_one_frame_at_a_time_keeps_window_cache(
    tokenizer: SpeechTokenizer, codes: np.ndarray, full: np.ndarray
) -> None:
    """1-frame steps equal the full decode and each layer's K/V cache is one fixed buffer of window - 1 frames."""
    dec = tokenizer.decoder
    state, parts = dec.new_state(), []
    window = dec.config.sliding_window
    for t in range(codes.shape[2]):
        parts.append(np.array(dec.step(mx.array(codes[0, :, t : t + 1].T), state)))
        kv_heads = dec.config.num_key_value_heads
        assert all(kv.shape == (1, 2 * kv_heads, window - 1, dec.config.head_dim) for kv in state.kv)
    assert np.abs(np.concatenate(parts) - full[0, 0]).max() <= 1e-5


def test_new_state_streams_are_independent(tokenizer: SpeechTokenizer, codes: np.ndarray, full: np.ndarray) -> None:
    """A second stream started after another one decodes the same audio: no state hides in the module."""
    dec = tokenizer.decoder
    dec.step(mx.array(codes[0, :, :5].T), dec.new_state())
    again = np.array(dec.step(mx.array(codes[0, :, :4].T), dec.new_state()))
    assert np.abs(again - full[0, 0, : 4 * 1920]).max() <= 1e-5


def test_bad_code_shapes_fail_with_input_error(tokenizer: SpeechTokenizer) -> None:
    """Wrong codebook counts, ranks, dtypes or out-of-range ids raise InputError naming the problem."""
    with pytest.raises(InputError, match="expected 16"):
        tokenizer.decoder(mx.zeros((1, 8, 3), dtype=mx.int32))
    with pytest.raises(InputError, match="frames"):
        tokenizer.decoder.step(mx.zeros((16,), dtype=mx.int32), tokenizer.decoder.new_state())
    with pytest.raises(InputError, match="integers"):
        tokenizer.decoder.step(mx.zeros((2, 16)), tokenizer.decoder.new_state())
    with pytest.raises(InputError, match=r"\[0, 64\)"):
        tokenizer.decoder.step(mx.full((2, 16), 64, dtype=mx.int32), tokenizer.decoder.new_state())
    with pytest.raises(InputError, match=r"\[0, 64\)"):
        tokenizer.decoder(mx.full((1, 16, 2), -1, dtype=mx.int32))


def test_host_codes_are_checked_on_the_host_and_decode_the_same(tokenizer: SpeechTokenizer, codes: np.ndarray) -> None:
    """numpy codes (what the TTS engine holds) get the same InputErrors and decode exactly as the same mx codes."""
    dec = tokenizer.decoder
    with pytest.raises(InputError, match="integers"):
        dec.step(np.zeros((2, 16), np.float32), dec.new_state())
    with pytest.raises(InputError, match=r"\[0, 64\)"):
        dec.step(np.full((2, 16), 64, np.int64), dec.new_state())
    x = np.asarray(codes[0].T[:3], dtype=np.int64)  # [frames, 16]
    got = dec.step(x, dec.new_state())
    want = dec.step(mx.array(x.astype(np.int32)), dec.new_state())
    assert mx.array_equal(got, want).item()


def test_sanitize_is_by_name_not_shape() -> None:
    """Conv, transposed-conv and codebook rules follow key names, even where shapes would be ambiguous."""
    w = {
        "pre_conv.conv.weight": mx.zeros((6, 5, 3)),
        "upsample.0.0.conv.weight": mx.zeros((4, 5, 2)),
        "decoder.1.block.1.conv.weight": mx.zeros((6, 3, 16)),
        "pre_transformer.layers.0.self_attn.q_proj.weight": mx.zeros((8, 4)),
        "quantizer.rvq_first.output_proj.weight": mx.zeros((16, 8, 1)),
        "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum": mx.ones((3, 2)),
        "quantizer.rvq_first.vq.layers.0._codebook.cluster_usage": mx.array([2.0, 0.0, 4.0]),
    }
    out = sanitize_decoder(w)
    assert out["pre_conv.conv.weight"].shape == (6, 3, 5)
    assert out["upsample.0.0.conv.weight"].shape == (5, 2, 4)
    assert out["decoder.1.block.1.conv.weight"].shape == (3, 16, 6)
    assert out["pre_transformer.layers.0.self_attn.q_proj.weight"].shape == (8, 4)
    assert out["quantizer.rvq_first.output_proj.weight"].shape == (16, 1, 8)
    embed = np.array(out["quantizer.rvq_first.vq.layers.0.codebook.embed"])
    assert np.allclose(embed[:, 0], [0.5, 1e5, 0.25])
    assert not any("_codebook" in k for k in out)


@pytest.mark.slow
def test_streaming_with_the_released_window_past_72_frames(tokenizer: SpeechTokenizer) -> None:
    """With the released 72-frame window, 100 frames streamed in 1-3 frame chunks equal the full decode (1e-5)."""
    dec = CodecDecoder(dataclasses.replace(tokenizer.decoder.config, sliding_window=72))
    dec.fuse()  # the loaded decoder is fused
    dec.update(tokenizer.decoder.parameters())
    codes = np.random.default_rng(7).integers(0, 64, (1, 16, 100)).astype(np.int32)
    full = np.array(dec(mx.array(codes)))[0, 0]
    state, pos, parts = dec.new_state(), 0, []
    for n in _partition(np.random.default_rng(8), 100, 3):
        parts.append(np.array(dec.step(mx.array(codes[0, :, pos : pos + n].T), state)))
        pos += n
    assert all(kv.shape[2] == 71 for kv in state.kv)
    assert np.abs(np.concatenate(parts) - full).max() <= 1e-5


def test_compiled_step_traces_once_per_chunk_size(tokenizer: SpeechTokenizer, codes: np.ndarray) -> None:
    """The compiled codec step traces once per chunk size, not per stream position (fixed-shape state)."""
    dec = CodecDecoder(tokenizer.decoder.config)
    dec.fuse()  # the loaded decoder is fused
    dec.update(tokenizer.decoder.parameters())
    traces: list[int] = []
    pure = dec._pure

    def counted(*args: object) -> object:
        traces.append(args[0].shape[1])  # type: ignore[attr-defined]
        return pure(*args)  # type: ignore[arg-type]

    dec._pure = counted  # type: ignore[method-assign]
    state = dec.new_state()
    for t in range(12):  # past the tiny window: the K/V buffers are full and keep their shape
        mx.eval(dec.step(mx.array(codes[0, :, t : t + 1].T), state))
    for t in range(12, 18, 2):
        mx.eval(dec.step(mx.array(codes[0, :, t : t + 2].T), state))
    assert traces == [1, 2]


def test_keys_rotated_at_read_equal_keys_rotated_once() -> None:
    """RoPE of a key inside the window (offset - 71 onwards, as each step rotates its cached keys) equals the key
    rotated alone at its own position, bit for bit: caching keys unrotated changes no attention input."""
    x = mx.random.normal((1, 2, 75, 64), key=mx.random.key(2))
    rope = dict(traditional=False, base=10000.0, scale=1.0)
    for offset in (0, 9, 300):
        window = mx.fast.rope(x, 64, offset=mx.array(offset - 71), **rope)
        for i in (70, 71, 74):
            alone = mx.fast.rope(x[:, :, i : i + 1], 64, offset=mx.array(offset - 71 + i), **rope)
            assert mx.array_equal(window[:, :, i : i + 1], alone).item()
