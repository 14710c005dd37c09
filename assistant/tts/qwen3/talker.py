"""The Qwen3-TTS talker: a Qwen3 decoder over summed text-track and codec-track embeddings.

Attribute names equal the checkpoint keys after "talker." (`model.layers.N.self_attn.q_proj`, `codec_head`,
`text_projection.linear_fc1`, `code_predictor...`). The MRoPE of the checkpoint always gets three identical
position copies, so it is exactly 1-D rotate-half RoPE (spec 2.1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn

from assistant.tts.qwen3.config import TalkerConfig


class Attention(nn.Module):
    """GQA attention with per-head RMSNorm on q and k before RoPE; head_dim is explicit (not hidden/heads)."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, eps: float, theta: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.theta = heads, kv_heads, head_dim, theta
        self.scale = head_dim**-0.5
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=eps)

    def __call__(self, x: mx.array, cache: Any) -> mx.array:
        b, n, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, n, self.heads, self.head_dim)).transpose(0, 2, 1, 3)
        k = self.k_norm(self.k_proj(x).reshape(b, n, self.kv_heads, self.head_dim)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, n, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        offset = cache.offset
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=offset)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=offset)
        k, v = cache.update_and_fetch(k, v)
        mask = "causal" if n > 1 else None
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))

    def step(self, x: mx.array, pos: mx.array, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """One position x [1, 1, hidden] at `pos` (int32 scalar array) against whole cache buffers [1, kv, C, d]:
        writes its K/V at `pos` and masks the positions after it, so every shape is fixed by C alone."""
        q = self.q_norm(self.q_proj(x).reshape(1, 1, self.heads, self.head_dim)).transpose(0, 2, 1, 3)
        k = self.k_norm(self.k_proj(x).reshape(1, 1, self.kv_heads, self.head_dim)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(1, 1, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=pos)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=pos)
        start = pos.reshape(1)
        keys = mx.slice_update(keys, k.astype(keys.dtype), start, axes=(2,))
        values = mx.slice_update(values, v.astype(values.dtype), start, axes=(2,))
        mask = mx.arange(keys.shape[2]) <= pos
        out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(1, 1, -1)), keys, values


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm Qwen3 layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.self_attn = Attention(
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.rms_norm_eps,
            cfg.rope_theta,
        )
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x: mx.array, cache: Any) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), cache)
        return x + self.mlp(self.post_attention_layernorm(x))

    def step(self, x: mx.array, pos: mx.array, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """`__call__` for one position against static cache buffers (see Attention.step)."""
        a, keys, values = self.self_attn.step(self.input_layernorm(x), pos, keys, values)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), keys, values


class TextProjection(nn.Module):
    """ResizeMLP: fc2(silu(fc1(x))), both with bias, text width -> talker width."""

    def __init__(self, text_hidden: int, hidden: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(text_hidden, text_hidden, bias=True)
        self.linear_fc2 = nn.Linear(text_hidden, hidden, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_fc2(nn.silu(self.linear_fc1(x)))


class TalkerModel(nn.Module):
    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.codec_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_hidden_size)
        self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x: mx.array, cache: list[Any]) -> mx.array:
        for layer, c in zip(self.layers, cache, strict=True):
            x = layer(x, c)
        return self.norm(x)

    def step(
        self, x: mx.array, pos: mx.array, keys: list[mx.array], values: list[mx.array]
    ) -> tuple[mx.array, list[mx.array], list[mx.array]]:
        """One position through every layer against static buffers: (post-norm hidden, new keys, new values)."""
        new_k, new_v = [], []
        for layer, k, v in zip(self.layers, keys, values, strict=True):
            x, k, v = layer.step(x, pos, k, v)
            new_k.append(k)
            new_v.append(v)
        return self.norm(x), new_k, new_v


class StaticCache:
    """K/V of one talker sequence in buffers whose length C only grows in steps of `STEP` positions.

    `update_and_fetch` (prefill, any n) is mlx-lm's KVCache contract; `Talker.step` reads and replaces the whole
    buffers, so one compiled single-position graph serves every position below C (no per-step shape change).
    """

    STEP = 256  # positions per growth: ~1% of a 0.6B frame's weight bytes in extra masked K/V reads

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def reserve(self, like: mx.array, n: int) -> None:
        """Room for n more positions (buffers shaped like `like` [1, kv, *, d]), growing by whole steps."""
        need = self.offset + n
        if need <= self.capacity:
            return
        size = -(-need // self.STEP) * self.STEP
        b, kv, _, d = like.shape
        shape = (b, kv, size - self.capacity, d)
        if self.keys is None or self.values is None:  # two arrays: item assignment rebinds the one assigned
            self.keys, self.values = mx.zeros(shape, like.dtype), mx.zeros(shape, like.dtype)
        else:
            self.keys = mx.concatenate([self.keys, mx.zeros(shape, like.dtype)], axis=2)
            self.values = mx.concatenate([self.values, mx.zeros(shape, like.dtype)], axis=2)

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        n = k.shape[2]
        self.reserve(k, n)
        assert self.keys is not None and self.values is not None
        self.keys[..., self.offset : self.offset + n, :] = k
        self.values[..., self.offset : self.offset + n, :] = v
        self.offset += n
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    @property
    def state(self) -> tuple[mx.array, mx.array]:
        assert self.keys is not None and self.values is not None
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    @state.setter
    def state(self, kv_offset: tuple[mx.array, mx.array, int]) -> None:
        """Start from keys/values [1, kv, n, d] holding the first n positions (copied: the source stays intact)."""
        k, v, n = kv_offset
        self.keys = self.values = None
        self.offset = 0
        self.reserve(k, n)
        assert self.keys is not None and self.values is not None
        self.keys[..., :n, :] = k
        self.values[..., :n, :] = v
        self.offset = n


class CompiledCache:
    """Compiled functions of one model by key, held outside the parameter tree (built once, reused per frame)."""

    def __init__(self) -> None:
        self.fns: dict[Any, Any] = {}

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self.fns:
            self.fns[key] = make()
        return self.fns[key]


class Talker(nn.Module):
    """Talker LM plus its code predictor; `__call__` takes input vectors and returns post-norm hidden states."""

    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        from assistant.tts.qwen3.code_predictor import CodePredictor

        self.cfg = cfg
        self.compiled = CompiledCache()
        self.model = TalkerModel(cfg)
        self.text_projection = TextProjection(cfg.text_hidden_size, cfg.hidden_size)
        self.codec_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.code_predictor = CodePredictor(cfg.code_predictor_config, cfg.hidden_size)

    def __call__(self, x: mx.array, cache: list[Any]) -> mx.array:
        return self.model(x, cache)

    def text(self, ids: list[int] | mx.array) -> mx.array:
        """P(ids): projected text embeddings [n, hidden]."""
        ids = ids if isinstance(ids, mx.array) else mx.array(ids, dtype=mx.int32)
        return self.text_projection(self.model.text_embedding(ids))

    def codec(self, ids: list[int] | mx.array) -> mx.array:
        """C(ids): talker codec embeddings [n, hidden]."""
        ids = ids if isinstance(ids, mx.array) else mx.array(ids, dtype=mx.int32)
        return self.model.codec_embedding(ids)

    def frame_embedding(self, frames: mx.array) -> mx.array:
        """E(frame) for frames [n, 16]: talker table for group 0 plus predictor tables g-1 for groups g >= 1."""
        e = self.model.codec_embedding(frames[:, 0])
        for g, table in enumerate(self.code_predictor.model.codec_embedding, start=1):
            e = e + table(frames[:, g])
        return e

    def make_cache(self) -> list[StaticCache]:
        return [StaticCache() for _ in self.model.layers]

    def step(self, x: mx.array, cache: list[StaticCache]) -> mx.array:
        """One input vector x [hidden] at the cache's next position: the post-norm hidden state [hidden] (lazy).

        Compiled once per buffer length (quantized models too: compiled 4-bit graphs ran on MLX 0.32.4 CUDA).
        """
        kv = cache[0].keys
        assert kv is not None
        for c in cache:
            c.reserve(kv, 1)
        fn = self.compiled.get("step", lambda: mx.compile(self.model.step))
        pos = mx.array(cache[0].offset, dtype=mx.int32)
        h, keys, values = fn(x[None, None], pos, [c.keys for c in cache], [c.values for c in cache])
        for c, k, v in zip(cache, keys, values, strict=True):
            c.keys, c.values = k, v
            c.offset += 1
        return cast(mx.array, h[0, 0])

    def warm_steps(self, positions: int) -> None:
        """Compile the one-position step for every buffer length a sequence of `positions` meets (at start-up:
        a new length mid-utterance would trace and compile the graph between two frames)."""
        a = self.model.layers[0].self_attn
        dtype = self.model.codec_embedding.weight.dtype
        x = mx.zeros((self.cfg.hidden_size,), dtype)
        for size in range(StaticCache.STEP, positions + StaticCache.STEP, StaticCache.STEP):
            cache = self.make_cache()
            for c in cache:
                c.keys = mx.zeros((1, a.kv_heads, size, a.head_dim), dtype)
                c.values = mx.zeros((1, a.kv_heads, size, a.head_dim), dtype)
                c.offset = size - 1
            mx.eval(self.step(x, cache))


class Qwen3TTSModel(nn.Module):
    """The checkpoint's top level: `talker.*` (the speaker encoder is loaded beside it, not inside)."""

    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.talker = Talker(cfg)
