"""The on-device sampler against the numpy reference of spec 2.6 on fixed logits, and seeded reproducibility."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from assistant.tts.qwen3 import sampling as S

from .reference_sampling import first_code_logits, warp

EOS = 2150


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.9, 50, 1.0), (1.0, 0, 0.8), (0.7, 20, 0.9)])
def test_warp_equals_reference(temperature: float, top_k: int, top_p: float) -> None:
    """Temperature, top-k and top-p keep exactly the reference's tokens with the reference's values."""
    for seed in range(3):
        x = (np.random.default_rng(seed).standard_normal(2048) * 3).astype(np.float32)
        want = warp(x, temperature, top_k, top_p)
        got = np.array(S.warp(mx.array(x), temperature, top_k, top_p))
        assert np.array_equal(np.isfinite(got), np.isfinite(want))
        assert np.array_equal(got[np.isfinite(got)], want[np.isfinite(want)])


def test_top_k_keeps_the_k_largest_after_temperature() -> None:
    """Top-k leaves exactly the k largest logits (divided by the temperature) and masks the rest."""
    x = np.random.default_rng(0).standard_normal(3072).astype(np.float32)
    y = np.array(S.warp(mx.array(x), 0.9, 50, 1.0))
    kept = np.isfinite(y)
    assert kept.sum() == 50
    assert set(np.flatnonzero(kept)) == set(np.argsort(x)[-50:])


@pytest.mark.parametrize("history", [[], [7], [7, 1], [7, 1, 7, 2500, 8], list(range(0, 3072, 5))])
def test_first_code_processors_equal_reference(history: list[int]) -> None:
    """Penalty (raw logits, multiply negatives, divide positives), min_new_tokens and the suppressed ids produce
    the reference's processed logits bit for bit."""
    x = (np.random.default_rng(len(history)).standard_normal(3072) * 4).astype(np.float32)
    seen = np.zeros(3072, dtype=bool)
    seen[history] = True
    p = S.SamplingParams()
    want = first_code_logits(x, history, p.repetition_penalty, p.min_new_tokens, EOS)
    blocked = mx.array(len(history) < p.min_new_tokens)
    got = S.first_code_logits(mx.array(x), mx.array(seen), blocked, p, S.suppress_mask(3072, EOS))
    assert np.array_equal(np.array(got), want)


def test_greedy_first_code_rules() -> None:
    """EOS blocked for two tokens, 2048..3071 suppressed except EOS, the penalty moves the greedy choice."""
    p, sup = S.SamplingParams.greedy(), S.suppress_mask(3072, EOS)

    def code(x: np.ndarray, history: list[int]) -> int:
        seen = np.zeros(3072, dtype=bool)
        seen[history] = True
        blocked = mx.array(len(history) < p.min_new_tokens)
        c = S.first_code(mx.array(x), mx.array(seen), blocked, None, p, sup)
        return int(c.item())

    x = np.full(3072, -5.0, np.float32)
    x[EOS], x[2500], x[7], x[8] = 10.0, 9.0, 1.0, 0.99
    assert code(x, []) == 7  # EOS blocked, 2500 suppressed
    assert code(x, [1, 2]) == EOS  # after two tokens EOS may win
    x[EOS] = -10.0
    assert code(x, [7, 1]) == 8  # 1.0 / 1.05 < 0.99
    x[7], x[8] = -1.0, -1.02
    assert code(x, [7, 1]) == 8  # negative logits are multiplied: -1.05 < -1.02


def test_draws_follow_the_warped_distribution_and_never_masked_tokens() -> None:
    """Sampled codes come only from the top-k set, with frequencies close to softmax of the warped logits."""
    x = (np.random.default_rng(3).standard_normal(2048) * 2).astype(np.float32)
    w = warp(x, 0.9, 8, 1.0)
    prob = np.exp(w - w[np.isfinite(w)].max())
    prob /= prob.sum()
    noise = S.noise_block(S.new_key(1), 1, 1500, 2048)[0][0]
    counts = np.zeros(2048)
    for i in range(1500):
        c = S.sub_code(mx.array(x), noise[i], S.SamplingParams(subtalker_top_k=8))
        counts[int(c.item())] += 1
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(np.isfinite(w)))
    assert np.abs(counts / counts.sum() - prob).max() < 0.05


def test_seeded_draws_repeat() -> None:
    """The same seed draws the same codes; another seed draws others."""
    x = mx.array(np.random.default_rng(2).standard_normal(2048).astype(np.float32))

    def codes(seed: int) -> list[int]:
        key, out = S.new_key(seed), []
        for _ in range(2):  # two blocks of three frames' noise, four draws from each frame
            noise, key = S.noise_block(key, 3, 16, 2048)
            out += [int(S.sub_code(x, noise[f, g], S.SamplingParams()).item()) for f in range(3) for g in range(4)]
        return out

    assert codes(5) == codes(5)
    assert codes(5) != codes(6)
