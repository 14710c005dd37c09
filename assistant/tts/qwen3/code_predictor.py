"""The multi-token code predictor (MTP): codes 1..15 of a frame from the talker's last hidden state and code 0.

Per frame it starts from an empty cache at position 0 (spec 3): prefill [h_last, C_talker(c0)], then one
step per group. Group g >= 1 is predicted by `lm_head[g-1]` and embedded by `model.codec_embedding[g-1]`.
The whole loop (sampling included) is a pure function of arrays, so it traces into one compiled graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from assistant.tts.qwen3.config import CodePredictorConfig
from assistant.tts.qwen3.sampling import SamplingParams, sub_code
from assistant.tts.qwen3.talker import DEFAULT_FUSE, DecoderLayer, FuseOptions, Rope


class FrameCache:
    """K/V of one predictor frame, every layer in one buffer [layers, 2 * kv_heads, P, d] (per layer the keys'
    heads, then the values') of the P positions a frame can reach: zero-filled at the frame's first write (one
    fill kernel per frame, where padding each layer's prefill was two per layer), then the prefill and each step
    write at positions known when the loop is traced (a slice_update at constant indices, one GPU kernel where a
    concatenation is a copy per input), and the attention reads a layer's written positions, a view. Every shape
    is static per step, so the unrolled 15-step loop compiles to one graph. `layer(i)` is layer i's cache."""

    def __init__(self, layers: int, positions: int) -> None:
        self.layers, self.positions = layers, positions
        self.kv: mx.array | None = None

    def layer(self, i: int) -> LayerSlot:
        return LayerSlot(self, i)


class LayerSlot:
    """One layer's part of a FrameCache, with its own write offset."""

    def __init__(self, frame: FrameCache, index: int) -> None:
        self.frame, self.index = frame, index
        self.offset = 0

    def update_kv(self, new: mx.array) -> mx.array:
        """Write new [1, 2 * kv_heads, n, d] at the next positions; returns this layer's positions so far."""
        f, n, i = self.frame, new.shape[2], self.index
        if self.offset + n > f.positions:
            raise ValueError(f"a predictor frame holds {f.positions} positions; {self.offset + n} asked")
        if f.kv is None:
            f.kv = mx.zeros((f.layers, new.shape[1], f.positions, new.shape[3]), new.dtype)
        # item assignment gives the frame a new array (MLX's slice_update); views taken before keep theirs
        f.kv[i : i + 1, :, self.offset : self.offset + n] = new.astype(f.kv.dtype)
        self.offset += n
        return f.kv[i : i + 1, :, : self.offset]


class InputRows(nn.Module):
    """A group's codec embedding table fused with the predictor's first work on a looked-up row (fused layout):
    row i holds [E_i | x_i | norm(x_i)], x = the input projection of E (1.7B; 0.6B: x is E, stored once), norm =
    layer 0's input RMSNorm. One gather per step then yields the frame-sum row, the residual and layer 0's normed
    input, where the table's gather, the projection and the norm were three kernels (0.6B: two)."""

    def __init__(self, table: nn.Embedding, project: Callable[[mx.array], mx.array] | None, norm: nn.Module):
        super().__init__()
        e = table.weight
        x = e if project is None else project(e)
        self.rows = mx.concatenate([e, *([] if project is None else [x]), norm(x)], axis=1)
        self.width, self.inner, self.projected = e.shape[1], x.shape[1], project is not None

    def __call__(self, ids: mx.array) -> mx.array:
        """The table's rows E [n, talker hidden], as the nn.Embedding it replaces."""
        return mx.take(self.rows, ids, axis=0)[:, : self.width]

    def lookup(self, ids: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """(E, x, norm(x)) of ids [n], each [n, width] (views of one gathered row: row-contiguous)."""
        row = mx.take(self.rows, ids, axis=0)
        w, inner = self.width, self.inner
        if self.projected:  # one split: one view node in the graph where slices were one each
            e, x, normed = mx.split(row, [w, w + inner], axis=1)
            return e, x, normed
        e, normed = mx.split(row, [w], axis=1)
        return e, e, normed


class PredictorModel(nn.Module):
    def __init__(self, cfg: CodePredictorConfig, embedding_dim: int):
        super().__init__()
        self.cfg = cfg
        self.rope: Rope | None = None  # set by fuse(): the fused layers' RoPE tables, constants per position
        # The tables are as wide as the talker (they also feed the talker's frame sum), not the predictor.
        self.codec_embedding: list[nn.Embedding | InputRows] = [
            nn.Embedding(cfg.vocab_size, embedding_dim) for _ in range(cfg.num_code_groups - 1)
        ]
        self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x: mx.array, cache: list[Any], normed: mx.array | None = None) -> mx.array:
        """Post-norm hidden states of x; `normed`: layer 0's input norm of x, where the caller has it."""
        angles = self.rope.span(cache[0].offset, x.shape[-2]) if self.rope is not None else None
        for layer, c in zip(self.layers, cache, strict=True):
            x, normed = layer(x, c, angles, normed), None
        return self.norm(x)

    def fuse(self, options: FuseOptions = DEFAULT_FUSE) -> None:
        for layer in self.layers:
            layer.fuse(options)
        # a frame: the prefill [h_last, C(c0)] at positions 0-1, then one position per group
        spans = ((0, 2), *((p, 1) for p in range(2, self.cfg.num_code_groups + 1)))
        self.rope = Rope(self.cfg.head_dim, self.cfg.rope_theta, spans)
        positions = self.cfg.num_code_groups
        # frame's write masks, one per position (constants of the compiled frame)
        self._slots = [(mx.arange(positions) == p).reshape(1, positions, 1, 1, 1) for p in range(positions)]
        mx.eval(self._slots)

    @property
    def writes_rows(self) -> bool:
        """Whether a frame runs `frame` (the fused layout with the RoPE chain), else `__call__` over a
        FrameCache."""
        return self.rope is not None and self.layers[0].self_attn.writes_rows

    def frame(
        self, x: mx.array, normed: mx.array | None, bufs: list[mx.array] | None, start: int
    ) -> tuple[mx.array, list[mx.array]]:
        """Rows x [n, hidden] (projected; `normed`: layer 0's input norm of them, or None) at positions start..
        against the layers' frame buffers (None: a new frame, the prefill): the post-norm hidden states
        [n, hidden] and the new buffers (Attention.frame)."""
        assert self.rope is not None
        angles, out = self.rope.span(start, x.shape[-2]), []
        for i, layer in enumerate(self.layers):
            x, buf = layer.frame(x, None if bufs is None else bufs[i], self._slots, start, angles, normed)
            out.append(buf)
            normed = None
        return self.norm(x), out


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

    def fuse_inputs(self) -> None:
        """Each group's embedding table as InputRows (the fused layout; after the layers are fused)."""
        norm = self.model.layers[0].input_layernorm
        project = self.small_to_mtp_projection if self.has_projection else None
        tables = self.model.codec_embedding
        self.model.codec_embedding = [t if isinstance(t, InputRows) else InputRows(t, project, norm) for t in tables]

    def embed(self, group: int, ids: mx.array) -> tuple[mx.array, mx.array, mx.array | None]:
        """(E, the predictor's input x, layer 0's norm of x or None) of group `group`'s codes ids [n]; unfused,
        x is E unprojected (`logits` projects it) and the norm None."""
        table = self.model.codec_embedding[group - 1]
        if isinstance(table, InputRows):
            return table.lookup(ids)
        e = table(ids)
        return e, e, None

    def make_cache(self) -> list[LayerSlot]:
        """One frame's caches, a layer each of one FrameCache: the prefill [h_last, C(c0)] and one position per
        group 2..15."""
        frame = FrameCache(len(self.model.layers), self.cfg.num_code_groups)
        return [frame.layer(i) for i in range(frame.layers)]

    def logits(self, x: mx.array, group: int, cache: list[Any], normed: mx.array | None = None) -> mx.array:
        """Logits of code group `group` (1..15) at the last of the input vectors x [1, n, talker hidden] or
        [n, talker hidden]: [1, vocab]. With `normed` (from `embed`), x is already projected and normed is
        layer 0's input norm of it."""
        h = self.model(self.project(x), cache) if normed is None else self.model(x, cache, normed)
        return self.lm_head[group - 1](h[:, -1, :] if h.ndim == 3 else h[-1:, :])

    def predict(
        self, past_hidden: mx.array, c0_embedding: mx.array, noise: mx.array | None, p: SamplingParams
    ) -> tuple[list[mx.array], mx.array]:
        """Codes 1..15 of one frame, each uint32 [1] (group g drawn with Gumbel noise row g - 1, None: greedy), and
        the frame's embedding E(frame) [1, talker hidden] (c0_embedding plus the group tables' rows, the ones the loop
        feeds back); lazy, on the device."""
        # two-dimensional throughout: a matmul of a three-dimensional x records a flatten and an unflatten
        # [2, talker hidden] by one select (a stack is a copy kernel per row)
        x = mx.where(mx.array([[True], [False]]), past_hidden, c0_embedding)
        frame_e, normed = c0_embedding[None], None
        codes: list[mx.array] = []
        if self.model.writes_rows:  # each step's K/V write inside its RoPE kernel (PredictorModel.frame)
            h, bufs = self.model.frame(self.project(x), None, None, 0)
            for g in range(1, self.cfg.num_code_groups):
                logits = self.lm_head[g - 1](h[-1:, :])
                code = sub_code(logits[0, :], None if noise is None else noise[g - 1, :], p)
                codes.append(code)
                e, x, normed = self.embed(g, code)
                frame_e = frame_e + e
                if g + 1 < self.cfg.num_code_groups:  # group g + 1 from position g + 1
                    if normed is None:
                        x = self.project(x)
                    h, bufs = self.model.frame(x, normed, bufs, g + 1)
            return codes, frame_e
        cache = self.make_cache()
        for g in range(1, self.cfg.num_code_groups):
            # a[i, :] is a view; MLX makes a[i] a gather, one more kernel per step
            code = sub_code(self.logits(x, g, cache, normed)[0, :], None if noise is None else noise[g - 1, :], p)
            codes.append(code)
            e, x, normed = self.embed(g, code)  # [1, talker hidden], [1, predictor hidden] (fused: one gather)
            frame_e = frame_e + e
        return codes, frame_e
