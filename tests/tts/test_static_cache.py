"""The talker's static-shape KV cache: the compiled one-position step equals the one-pass forward."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from assistant.tts.qwen3.code_predictor import FrameCache
from assistant.tts.qwen3.load import load_model
from assistant.tts.qwen3.talker import FuseOptions, Qwen3TTSModel, StaticCache

from .test_qwen3_parity import CASE_NAMES, case_named, loaded


def test_compiled_steps_across_buffer_growth_equal_one_pass(checkpoints: Any, reference: Any) -> None:
    """Stepping one position at a time through the compiled static-cache graph, across two buffer growths
    (positions 256 and 512), gives the hidden states of one causal pass over the whole sequence (<= 1e-4)."""
    talker = loaded(checkpoints, case_named(reference, CASE_NAMES[0])["kind"]).model.talker
    n, lead = 2 * StaticCache.STEP + 40, 200
    x = mx.random.normal((n, talker.cfg.hidden_size), key=mx.random.key(3)) * 0.5
    want = talker(x[None], talker.make_cache())[0]
    cache = talker.make_cache()
    got = [talker(x[None, :lead], cache)[0]]
    for i in range(lead, n):
        got.append(talker.step(x[i], cache)[None])
    assert cache[0].offset == n and cache[0].capacity == 3 * StaticCache.STEP
    diff = np.abs(np.array(mx.concatenate(got)) - np.array(want)).max()
    assert diff <= 1e-4, diff


def test_values_transposed_buffers_across_growth_equal_one_pass(
    checkpoints: Any, reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With FuseOptions attention "gemv" the K/V buffers hold the values transposed: a prefill, then compiled
    steps across buffer growths (every 8 positions here), give the hidden states of one causal pass (<= 1e-4),
    and the steps' writes equal a one-pass prefill's."""
    fuse = Qwen3TTSModel.fuse
    monkeypatch.setattr(Qwen3TTSModel, "fuse", lambda self, _=None: fuse(self, FuseOptions(attention="gemv")))
    monkeypatch.setattr(StaticCache, "STEP", 8)
    talker = load_model(checkpoints(case_named(reference, CASE_NAMES[0])["kind"])).model.talker
    assert talker.model.values_transposed
    n, lead = 29, 5
    x = mx.random.normal((n, talker.cfg.hidden_size), key=mx.random.key(4)) * 0.5
    want = talker(x[None], talker.make_cache())[0]
    cache = talker.make_cache()
    got = [talker(x[None, :lead], cache)[0]]
    for i in range(lead, n):
        got.append(talker.step(x[i], cache)[None])
    assert cache[0].offset == n and cache[0].capacity == 32 and cache[0].values_transposed
    diff = np.abs(np.array(mx.concatenate(got)) - np.array(want)).max()
    assert diff <= 1e-4, diff
    plain = talker.make_cache()
    talker(x[None], plain)  # one prefill of all n: written by update_kv
    for (k1, v1), (k2, v2) in zip([cache[0].halves()], [plain[0].halves()], strict=True):
        assert np.abs(np.array(k1[:, :, :n]) - np.array(k2[:, :, :n])).max() <= 1e-4
        assert np.abs(np.array(v1[..., :n]) - np.array(v2[..., :n])).max() <= 1e-4


def test_shared_snapshot_is_never_written() -> None:
    """A cache started from a voice prefix's buffers never writes into them (the prefix is reused), through a
    prefill write, a buffer growth and compiled-step-style replacement alike."""
    k = mx.ones((1, 2, 4, 4))
    snapshot = mx.concatenate([k, k * 2], axis=1)  # one buffer: the keys' heads, then the values'
    c = StaticCache()
    c.share(snapshot, 3)
    kv = c.update_kv(mx.concatenate([mx.zeros((1, 2, 1, 4)), mx.full((1, 2, 1, 4), 5.0)], axis=1))
    keys, values = kv[:, :2], kv[:, 2:]
    assert keys.shape == (1, 2, 4, 4) and mx.array_equal(keys[:, :, :3], k[:, :, :3]).item()
    assert (
        mx.array_equal(keys[:, :, 3], mx.zeros((1, 2, 4))).item()
        and mx.array_equal(values[:, :, 3], mx.full((1, 2, 4), 5.0)).item()
    )
    c.update_kv(mx.zeros((1, 4, 2, 4)))  # grows past the 4 positions
    assert c.capacity == StaticCache.STEP and c.offset == 6
    assert mx.array_equal(snapshot[:, :2], mx.ones((1, 2, 4, 4))).item()
    assert mx.array_equal(snapshot[:, 2:], mx.full((1, 2, 4, 4), 2.0)).item()


def test_frame_kernel_embedding_is_the_frame_embedding(checkpoints: Any, reference: Any) -> None:
    """The embedding the compiled frame kernel sums from the rows its predictor loop looked up equals
    E(frame) of its codes (the talker's next input), bit for bit, sampled and greedy."""
    from assistant.tts.qwen3.generate import FrameKernel
    from assistant.tts.qwen3.sampling import SamplingParams

    talker = loaded(checkpoints, case_named(reference, CASE_NAMES[0])["kind"]).model.talker
    h = mx.random.normal((talker.cfg.hidden_size,), key=mx.random.key(4))
    seen = mx.zeros((talker.cfg.vocab_size,), dtype=mx.bool_)
    for p in (SamplingParams(seed=1), SamplingParams.greedy()):
        kernel = FrameKernel.of(talker, p)
        frame, emb, _ = kernel(h, seen, None, False, kernel.noise(mx.random.key(5))[0][:1])
        assert frame.shape == (16,)
        assert mx.array_equal(emb, talker.frame_embedding(frame[None])[0]).item()


def test_predictor_frame_cache_keeps_earlier_views() -> None:
    """The predictor's frame buffer holds every layer: a layer's write returns its written positions only, a view
    taken before a write keeps its values (each write records a new array), other layers' positions stay zero
    until written, and a write past the frame's positions is refused."""
    frame = FrameCache(2, 4)
    c, other = frame.layer(0), frame.layer(1)
    first = c.update_kv(mx.ones((1, 2, 2, 3)))
    assert frame.kv is not None and frame.kv.shape == (2, 2, 4, 3)
    before = frame.kv[:, :, 2:]
    second = c.update_kv(mx.full((1, 2, 1, 3), 7.0))
    assert first.shape == (1, 2, 2, 3) and second.shape == (1, 2, 3, 3)
    assert mx.array_equal(second[:, :, :2], first).item()
    assert mx.array_equal(second[:, :, 2], mx.full((1, 2, 3), 7.0)).item()
    assert mx.array_equal(before, mx.zeros((2, 2, 2, 3))).item()  # the fill, not the later write
    assert mx.array_equal(frame.kv[1:], mx.zeros((1, 2, 4, 3))).item()
    assert mx.array_equal(other.update_kv(mx.full((1, 2, 1, 3), 2.0)), mx.full((1, 2, 1, 3), 2.0)).item()
    assert mx.array_equal(frame.kv[:1, :, :3], second).item()  # layer 0's positions untouched by layer 1's write
    c.update_kv(mx.zeros((1, 2, 1, 3)))
    with pytest.raises(ValueError, match="holds 4 positions"):
        c.update_kv(mx.zeros((1, 2, 1, 3)))


@pytest.mark.parametrize("name", ["cv_english_full", "xvec_stream"])
def test_fused_predictor_rows_hold_what_the_graph_computes(checkpoints: Any, reference: Any, name: str) -> None:
    """A fused group table's row holds E, the predictor's input projection of E and layer 0's input norm of that,
    bit for bit as the predictor computes them from E, eagerly and compiled (custom voice: with a projection;
    base: without)."""
    from assistant.tts.qwen3.code_predictor import InputRows

    cp = loaded(checkpoints, case_named(reference, name)["kind"]).model.talker.code_predictor
    assert cp.has_projection == (name == "cv_english_full")

    for g in (1, 15):
        rows = cp.model.codec_embedding[g - 1]
        assert isinstance(rows, InputRows)

        def computed(ids: mx.array, rows: InputRows = rows) -> tuple[mx.array, mx.array]:
            x = cp.project(rows(ids))
            return x, cp.model.layers[0].input_layernorm(x)

        for i in (0, 5, cp.cfg.vocab_size - 1):
            ids = mx.array([i], dtype=mx.uint32)
            e, x, normed = cp.embed(g, ids)
            assert mx.array_equal(e, rows(ids)).item()
            for fn in (computed, mx.compile(computed)):
                want_x, want_normed = fn(ids)
                assert mx.array_equal(x, want_x).item() and mx.array_equal(normed, want_normed).item()


def test_penalty_window_holds_every_earlier_frames_code_zero(checkpoints: Any, reference: Any) -> None:
    """Chained through the frame kernel, the repetition-penalty window a frame's code 0 is drawn under holds the
    code 0 of every earlier frame (the previous frame's joins inside the kernel) and none of its own."""
    from assistant.tts.qwen3.generate import FrameKernel
    from assistant.tts.qwen3.sampling import SamplingParams

    talker = loaded(checkpoints, case_named(reference, CASE_NAMES[0])["kind"]).model.talker
    kernel = FrameKernel.of(talker, SamplingParams.greedy())
    seen, last, earlier = mx.zeros((talker.cfg.vocab_size,), dtype=mx.bool_), None, []
    for i in range(5):
        h = mx.random.normal((talker.cfg.hidden_size,), key=mx.random.key(10 + i))
        frame, _, seen = kernel(h, seen, last, False, None)
        assert set(np.flatnonzero(np.array(seen)).tolist()) == set(earlier)
        earlier.append(int(frame[0].item()))
        last = frame
    assert len(set(earlier)) > 1


@pytest.mark.parametrize("name", ["cv_english_full", "xvec_stream"])
def test_frame_buffer_steps_equal_the_frame_cache_steps(checkpoints: Any, reference: Any, name: str) -> None:
    """The predictor's frame-buffer path (each step's K/V written inside its RoPE kernel) gives the logits of the
    FrameCache path (a slice_update per layer-step) bit for bit, every group, eagerly and compiled (custom
    voice: with the input projection; base: without)."""
    cp = loaded(checkpoints, case_named(reference, name)["kind"]).model.talker.code_predictor
    assert cp.model.writes_rows
    groups = cp.cfg.num_code_groups
    hidden = cp.model.codec_embedding[0].width
    h = mx.random.normal((1, hidden), key=mx.random.key(7))
    first = mx.random.normal((1, hidden), key=mx.random.key(8))
    codes = [mx.array([(37 * g) % cp.cfg.vocab_size], dtype=mx.uint32) for g in range(1, groups)]

    def cache_path(h: mx.array, first: mx.array) -> list[mx.array]:
        cache, x, normed, out = cp.make_cache(), mx.concatenate([h, first]), None, []
        for g in range(1, groups):
            out.append(cp.logits(x, g, cache, normed))
            _, x, normed = cp.embed(g, codes[g - 1])
        return out

    def buffer_path(h: mx.array, first: mx.array) -> list[mx.array]:
        hs, bufs = cp.model.frame(cp.project(mx.concatenate([h, first])), None, None, 0)
        out = []
        for g in range(1, groups):
            out.append(cp.lm_head[g - 1](hs[-1:, :]))
            _, x, normed = cp.embed(g, codes[g - 1])
            if g + 1 < groups:
                hs, bufs = cp.model.frame(x, normed, bufs, g + 1)
        return out

    for run in (lambda f: f(h, first), lambda f: mx.compile(f)(h, first)):
        for a, b in zip(run(cache_path), run(buffer_path), strict=True):
            assert mx.array_equal(a, b).item()
