"""The multi-token code predictor (MTP): codes 1..15 of a frame from the talker's last hidden state and code 0.

Per frame it starts from an empty cache at position 0 (spec 3): prefill [h_last, C_talker(c0)], then one
step per group. Group g >= 1 is predicted by `lm_head[g-1]` and embedded by `model.codec_embedding[g-1]`.
The whole loop (sampling included) is a pure function of arrays, so it traces into one compiled graph.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from assistant.tts.qwen3.config import CodePredictorConfig
from assistant.tts.qwen3.sampling import SamplingParams, sub_code
from assistant.tts.qwen3.talker import DEFAULT_FUSE, DecoderLayer, FuseOptions, Rope


class FrameCache:
    """K/V of one predictor frame in one buffer [1, 2 * kv_heads, P, d] (keys' heads, then values') of the P
    positions a frame can reach: the prefill writes the buffer (padded to P), each step then writes one position
    at a position known when the loop is traced (a slice_update at constant indices, one GPU kernel where a
    concatenation is a copy per input), and the attention reads the written positions, a view. Every shape is
    static per step, so the unrolled 15-step loop compiles to one graph."""

    def __init__(self, positions: int) -> None:
        self.positions = positions
        self.kv: mx.array | None = None
        self.offset = 0

    def update_kv(self, new: mx.array) -> mx.array:
        n = new.shape[2]
        if self.offset + n > self.positions:
            raise ValueError(f"a predictor frame holds {self.positions} positions; {self.offset + n} asked")
        if self.kv is None:
            self.kv = mx.pad(new, [(0, 0), (0, 0), (0, self.positions - n), (0, 0)])
        else:
            # item assignment gives this object a new array (MLX's slice_update); views taken before keep theirs
            self.kv[:, :, self.offset : self.offset + n] = new.astype(self.kv.dtype)
        self.offset += n
        return self.kv[:, :, : self.offset]


class PredictorModel(nn.Module):
    def __init__(self, cfg: CodePredictorConfig, embedding_dim: int):
        super().__init__()
        self.cfg = cfg
        self.rope: Rope | None = None  # set by fuse(): the fused layers' RoPE tables, constants per position
        # The tables are as wide as the talker (they also feed the talker's frame sum), not the predictor.
        self.codec_embedding = [nn.Embedding(cfg.vocab_size, embedding_dim) for _ in range(cfg.num_code_groups - 1)]
        self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x: mx.array, cache: list[Any]) -> mx.array:
        angles = self.rope.span(cache[0].offset, x.shape[-2]) if self.rope is not None else None
        for layer, c in zip(self.layers, cache, strict=True):
            x = layer(x, c, angles)
        return self.norm(x)

    def fuse(self, options: FuseOptions = DEFAULT_FUSE) -> None:
        for layer in self.layers:
            layer.fuse(options)
        # a frame: the prefill [h_last, C(c0)] at positions 0-1, then one position per group
        spans = ((0, 2), *((p, 1) for p in range(2, self.cfg.num_code_groups + 1)))
        self.rope = Rope(self.cfg.head_dim, self.cfg.rope_theta, spans)


class CodePredictor(nn.Module):
    def __init__(self, cfg: CodePredictorConfig, talker_hidden: int):
        super().__init__()
        self.cfg = cfg
        self.model = PredictorModel(cfg, talker_hidden)
        self.lm_head: list[nn.Module] = [
            nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) for _ in range(cfg.num_code_groups - 1)
        ]
        # 1.7B: Linear(talker hidden -> predictor hidden) with bias; 0.6B: identity (no weights).
        self.has_projection = cfg.hidden_size != talker_hidden
        if self.has_projection:
            self.small_to_mtp_projection: nn.Module = nn.Linear(talker_hidden, cfg.hidden_size, bias=True)

    def project(self, x: mx.array) -> mx.array:
        return self.small_to_mtp_projection(x) if self.has_projection else x

    def make_cache(self) -> list[FrameCache]:
        """One frame's caches: the prefill [h_last, C(c0)] and one position per group 2..15."""
        return [FrameCache(self.cfg.num_code_groups) for _ in self.model.layers]

    def logits(self, x: mx.array, group: int, cache: list[Any]) -> mx.array:
        """Logits of code group `group` (1..15) at the last of the input vectors x [1, n, talker hidden] or
        [n, talker hidden]: [1, vocab]."""
        h = self.model(self.project(x), cache)
        return self.lm_head[group - 1](h[:, -1, :] if h.ndim == 3 else h[-1:, :])

    def predict(
        self, past_hidden: mx.array, c0_embedding: mx.array, noise: mx.array | None, p: SamplingParams
    ) -> tuple[list[mx.array], mx.array]:
        """Codes 1..15 of one frame, each uint32 [1] (group g drawn with Gumbel noise row g - 1, None: greedy), and
        the frame's embedding E(frame) [talker hidden] (c0_embedding plus the group tables' rows, the ones the loop
        feeds back); lazy, on the device."""
        cache = self.make_cache()
        # two-dimensional throughout: a matmul of a three-dimensional x records a flatten and an unflatten
        x = mx.stack([past_hidden, c0_embedding])  # [2, talker hidden]
        frame_e = c0_embedding[None]
        codes: list[mx.array] = []
        for g in range(1, self.cfg.num_code_groups):
            # a[i, :] is a view; MLX makes a[i] a gather, one more kernel per step
            code = sub_code(self.logits(x, g, cache)[0, :], None if noise is None else noise[g - 1, :], p)
            codes.append(code)
            e = self.model.codec_embedding[g - 1](code)  # [1, talker hidden]
            frame_e = frame_e + e
            x = e
        return codes, frame_e[0, :]
