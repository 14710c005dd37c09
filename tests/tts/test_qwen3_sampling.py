"""The logits rules of spec 2.6, checked from their definitions on random logits."""

from __future__ import annotations

import numpy as np

from assistant.tts.qwen3.sampling import Sampler, SamplingParams, warp


def test_top_k_keeps_the_k_largest_after_temperature() -> None:
    """Top-k leaves exactly the k largest logits (divided by the temperature) and masks the rest."""
    x = np.random.default_rng(0).standard_normal(3072).astype(np.float32)
    y = warp(x, 0.9, 50, 1.0)
    kept = np.isfinite(y)
    assert kept.sum() == 50
    assert set(np.flatnonzero(kept)) == set(np.argsort(x)[-50:])
    assert np.allclose(y[kept], x[kept] / np.float32(0.9))


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    """Top-p keeps the most probable tokens whose mass reaches p, dropping those whose cumulative (ascending)
    mass stays at or below 1 - p, as transformers' TopPLogitsWarper."""
    x = np.random.default_rng(1).standard_normal(64).astype(np.float32) * 3
    y = warp(x, 1.0, 0, 0.8)
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-p)
    need = int(np.searchsorted(np.cumsum(p[order]), 0.8) + 1)
    assert set(np.flatnonzero(np.isfinite(y))) == set(order[:need])


def test_first_code_rules_penalty_min_tokens_suppression() -> None:
    """EOS blocked for two tokens, 2048..3071 suppressed except EOS, penalty divides/multiplies seen logits."""
    s = Sampler(SamplingParams.greedy(), 3072, 2150)
    x = np.full(3072, -5.0, np.float32)
    x[2150] = 10.0  # EOS best
    x[2500] = 9.0  # suppressed id
    x[7] = 1.0
    x[8] = 0.99
    assert s.first_code(x, []) == 7  # EOS blocked, 2500 suppressed
    assert s.first_code(x, [1, 2]) == 2150  # after two tokens EOS may win
    x[2150] = -10.0
    assert s.first_code(x, [7, 1]) == 8  # 1.0 / 1.05 < 0.99: the penalty moved the choice
    y = x.copy()
    y[7], y[8] = -1.0, -1.02
    assert s.first_code(y, [7, 1]) == 8  # negative logits are multiplied: -1.05 < -1.02


def test_seeded_draws_repeat() -> None:
    """Two samplers with the same seed draw the same codes."""
    x = np.random.default_rng(2).standard_normal(2048).astype(np.float32)
    a, b = (Sampler(SamplingParams(seed=5), 3072, 2150) for _ in range(2))
    assert [a.sub_code(x) for _ in range(20)] == [b.sub_code(x) for _ in range(20)]
