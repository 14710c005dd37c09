"""Sampling exactly as the official generate (spec 2.6), in numpy float32, seedable.

Talker (first codebook): repetition penalty on all earlier first-codebook tokens (raw logits), EOS blocked
for the first 2 tokens, ids [vocab-1024, vocab) but EOS suppressed, then temperature, top-k, top-p,
multinomial. Sub-talker (codes 1..15): temperature, top-k, top-p only. Temperature 0 means greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_NEW_TOKENS = 2  # the official generate passes min_new_tokens=2: EOS is blocked for the first two tokens


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    subtalker_temperature: float = 0.9
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    seed: int | None = None  # None: fresh entropy
    min_new_tokens: int = MIN_NEW_TOKENS  # EOS blocked until this many first-codebook tokens (benchmarks force length)

    @classmethod
    def greedy(cls) -> SamplingParams:
        return cls(temperature=0.0, subtalker_temperature=0.0)


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


class Sampler:
    def __init__(self, params: SamplingParams, vocab_size: int, eos_id: int):
        self.p = params
        self.rng = np.random.default_rng(params.seed)
        self.eos = eos_id
        suppress = np.zeros(vocab_size, dtype=bool)
        suppress[vocab_size - 1024 :] = True
        suppress[eos_id] = False
        self.suppress = suppress

    def _draw(self, x: np.ndarray) -> int:
        p = np.exp(x - x.max())
        p /= p.sum()
        return int(self.rng.choice(x.shape[-1], p=p))

    def first_code(self, logits: np.ndarray, history: list[int]) -> int:
        """Code 0 (or EOS) from talker logits [vocab]; `history` = earlier code-0 tokens of this utterance."""
        x = logits.astype(np.float32).copy()
        if history and self.p.repetition_penalty != 1.0:
            seen = np.unique(np.asarray(history))
            s = x[seen]
            x[seen] = np.where(s < 0, s * self.p.repetition_penalty, s / self.p.repetition_penalty)
        if len(history) < self.p.min_new_tokens:
            x[self.eos] = -np.inf
        x[self.suppress] = -np.inf
        if self.p.temperature <= 0:
            return int(np.argmax(x))
        return self._draw(warp(x, self.p.temperature, self.p.top_k, self.p.top_p))

    def sub_code(self, logits: np.ndarray) -> int:
        x = logits.astype(np.float32)
        if self.p.subtalker_temperature <= 0:
            return int(np.argmax(x))
        return self._draw(warp(x, self.p.subtalker_temperature, self.p.subtalker_top_k, self.p.subtalker_top_p))
