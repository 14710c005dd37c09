"""Sampling exactly as the official generate (spec 2.6), on the device in MLX, seedable.

Talker (first codebook): repetition penalty on all earlier first-codebook tokens (raw logits), EOS blocked
for the first `min_new_tokens` tokens, ids [vocab-1024, vocab) but EOS suppressed, then temperature, top-k,
top-p, multinomial. Sub-talker (codes 1..15): temperature, top-k, top-p only. Temperature 0 means greedy.
Every function here is pure (arrays in, arrays out), so a whole frame of sampling traces into one compiled graph
with no transfer to the host. A draw is the Gumbel-max trick (argmax of the warped logits plus Gumbel noise, what
`mx.random.categorical` does); the noise of NOISE_FRAMES frames' 16 codes is drawn at once from the utterance's key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import mlx.core as mx

# frames whose Gumbel noise is drawn at once (3 MB float32): the draw's three kernels (key split, random bits, the
# Gumbel transform) run once per 16 frames instead of in every frame's kernel
NOISE_FRAMES = 16
MIN_NEW_TOKENS = 2  # the official generate passes min_new_tokens=2: EOS is blocked for the first two tokens
SUPPRESSED = 1024  # the official suppress_tokens: the top 1024 ids of the codec vocabulary (but EOS)


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


def new_key(seed: int | None) -> mx.array:
    """The PRNG key of one utterance: from `seed`, or from fresh OS entropy when None."""
    return mx.random.key(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))


def warp(logits: mx.array, temperature: float, top_k: int, top_p: float) -> mx.array:
    """HF order on logits [vocab] (computed in float32; a float16/bfloat16 input is cast exactly): temperature,
    then top-k (keep >= k-th largest), then top-p (skipped at 1.0; drops the tokens whose ascending cumulative
    probability stays <= 1 - top_p, keeping the best)."""
    t = mx.array(temperature, dtype=mx.float32)
    x = logits.astype(mx.float32) / t
    n = x.shape[-1]
    if 0 < top_k < n:
        # the k-th largest of logits / t is the k-th largest logit / t (a positive divisor keeps the order):
        # partitioning the logits themselves lets the division, the mask and the draw fuse into one kernel
        kth = mx.partition(logits, n - top_k, axis=-1)[..., n - top_k : n - top_k + 1].astype(mx.float32) / t
        x = mx.where(x < kth, -mx.inf, x)
    if top_p < 1.0:
        order = mx.argsort(x, axis=-1)  # ascending, as HF
        s = mx.take_along_axis(x, order, axis=-1)
        p = mx.exp(s - s.max(axis=-1, keepdims=True))
        p = p / p.sum(axis=-1, keepdims=True)
        remove = mx.cumsum(p, axis=-1) <= (1.0 - top_p)
        remove = mx.concatenate([remove[..., :-1], mx.zeros_like(remove[..., -1:])], axis=-1)  # keep the best one
        back = mx.put_along_axis(mx.zeros(x.shape, dtype=mx.bool_), order, remove, axis=-1)
        x = mx.where(back, -mx.inf, x)
    return x


def noise_block(key: mx.array, frames: int, groups: int, vocab: int) -> tuple[mx.array, mx.array]:
    """Gumbel noise float32 [frames, groups, vocab] for the draws of `frames` frames (lazy) and the next key."""
    key, sub = mx.random.split(key)
    return mx.random.gumbel((frames, groups, vocab), key=sub), key


def draw(x: mx.array, noise: mx.array) -> mx.array:
    """One token from softmax(x) (masked entries -inf) given Gumbel noise as wide as x: uint32 [1] (argmax's own
    type: a cast per code would be one more kernel; the frame's codes are cast once)."""
    return mx.argmax(x + noise, axis=-1).reshape(1)


def pick(x: mx.array, temperature: float, top_k: int, top_p: float, noise: mx.array | None) -> mx.array:
    """Greedy at temperature <= 0 (first maximum, as numpy/torch argmax; `noise` unused), else warp and draw."""
    if temperature <= 0 or noise is None:
        return mx.argmax(x, axis=-1).reshape(1)
    return draw(warp(x, temperature, top_k, top_p), noise)


def suppress_mask(vocab_size: int, eos_id: int) -> mx.array:
    """Additive float32 masks [2, vocab]: row 0 -inf on [vocab-1024, vocab) except EOS, 0 elsewhere (the
    suppressed ids); row 1 the same with EOS -inf too (EOS blocked before min_new_tokens). Evaluated: a compiled
    frame holds them as constants."""
    ids = mx.arange(vocab_size)
    blocked = (ids >= vocab_size - SUPPRESSED) & (ids != eos_id)
    rows = mx.where(mx.stack([blocked, blocked | (ids == eos_id)]), -mx.inf, 0.0).astype(mx.float32)
    mx.eval(rows)
    return rows


def first_code_logits(
    logits: mx.array, seen: mx.array, eos_blocked: mx.array, p: SamplingParams, suppress: mx.array
) -> mx.array:
    """The talker's logits processors in official order: penalty on `seen` (bool [vocab], every earlier code-0
    token), EOS -inf while `eos_blocked` (bool scalar), then the suppressed ids (`suppress`: `suppress_mask`'s
    rows; adding -inf is setting it, and adding 0 changes no value)."""
    x = logits.astype(mx.float32)
    if p.repetition_penalty != 1.0:
        rp = mx.array(p.repetition_penalty, dtype=mx.float32)
        x = mx.where(seen, mx.where(x < 0, x * rp, x / rp), x)
    return x + mx.where(eos_blocked, suppress[1, :], suppress[0, :])


def first_code(
    logits: mx.array,
    seen: mx.array,
    eos_blocked: mx.array,
    noise: mx.array | None,
    p: SamplingParams,
    suppress: mx.array,
) -> mx.array:
    """Code 0 (or EOS) from talker logits [vocab] and Gumbel noise [vocab]: token uint32 [1]."""
    x = first_code_logits(logits, seen, eos_blocked, p, suppress)
    return pick(x, p.temperature, p.top_k, p.top_p, noise)


def sub_code(logits: mx.array, noise: mx.array | None, p: SamplingParams) -> mx.array:
    """Codes 1..15 from predictor logits [vocab] and Gumbel noise [vocab]: token uint32 [1]."""
    return pick(logits, p.subtalker_temperature, p.subtalker_top_k, p.subtalker_top_p, noise)
