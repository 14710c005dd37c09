"""The logits rules of spec 2.6 in numpy float32, written from the official definitions: the reference the
on-device MLX sampler is checked against (transformers' processors and warpers, in their order)."""

from __future__ import annotations

import numpy as np


def warp(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """HF order: temperature, then top-k (keep >= k-th largest), then top-p (skipped at 1.0)."""
    x = logits / np.float32(temperature)
    if 0 < top_k < x.shape[-1]:
        kth = np.partition(x, -top_k)[-top_k]
        x = np.where(x < kth, -np.inf, x)
    if top_p < 1.0:
        order = np.argsort(x, kind="stable")  # ascending, as HF
        s = x[order]
        p = np.exp(s - s.max())
        p /= p.sum()
        remove = np.cumsum(p) <= (1.0 - top_p)
        remove[-1] = False  # keep at least one
        x = x.copy()
        x[order[remove]] = -np.inf
    return x


def first_code_logits(
    logits: np.ndarray, history: list[int], penalty: float, min_new_tokens: int, eos: int
) -> np.ndarray:
    """Repetition penalty on earlier code-0 tokens (raw logits), EOS blocked for `min_new_tokens` tokens, ids
    [vocab-1024, vocab) but EOS suppressed."""
    x = logits.astype(np.float32).copy()
    if history and penalty != 1.0:
        seen = np.unique(np.asarray(history))
        s = x[seen]
        x[seen] = np.where(s < 0, s * penalty, s / penalty)
    if len(history) < min_new_tokens:
        x[eos] = -np.inf
    suppress = np.zeros(x.shape[-1], dtype=bool)
    suppress[x.shape[-1] - 1024 :] = True
    suppress[eos] = False
    x[suppress] = -np.inf
    return x
