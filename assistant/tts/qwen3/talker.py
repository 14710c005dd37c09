"""The Qwen3-TTS talker: a Qwen3 decoder over summed text-track and codec-track embeddings.

Attribute names equal the checkpoint keys after "talker." (`model.layers.N.self_attn.q_proj`, `codec_head`,
`text_projection.linear_fc1`, `code_predictor...`). The MRoPE of the checkpoint always gets three identical
position copies, so it is exactly 1-D rotate-half RoPE (spec 2.1).

`fuse()` (the loader calls it once the weights and dtype are final) trades the checkpoint layout for fewer
operations per position, which bound a frame on GPUs where the host issues every kernel: q/k/v and gate/up each
become one matmul, q and k are normalised and rotated together, a float o_proj/down_proj adds the residual inside
its matmul (addmm), and float weights are held transposed (no transpose node per call). Layers whose q/k/v or
gate/up a checkpoint quantizes differently keep their own matmuls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn

from assistant.quantization import concat_linears
from assistant.tts.qwen3.config import TalkerConfig


class LinearT(nn.Module):
    """A float Linear without bias holding its weight as the transposed view [in, out] of the checkpoint's
    [out, in] (no copy): `x @ weight_t` records one graph node per call where `x @ weight.T` records two."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = linear.weight.T

    def __call__(self, x: mx.array) -> mx.array:
        return x @ self.weight_t


def pre_transposed(layer: nn.Module) -> nn.Module:
    """`layer` as a LinearT where it is a float Linear without bias, else itself."""
    return LinearT(layer) if type(layer) is nn.Linear and "bias" not in layer else layer


def add_linear(residual: mx.array, layer: nn.Module, x: mx.array) -> mx.array:
    """residual + layer(x); one addmm kernel where the layer is a float Linear without bias."""
    if isinstance(layer, LinearT):
        return mx.addmm(residual, x, layer.weight_t)
    if type(layer) is nn.Linear and "bias" not in layer:
        return mx.addmm(residual, x, layer.weight.T)
    return residual + layer(x)


class Attention(nn.Module):
    """GQA attention with per-head RMSNorm on q and k before RoPE; head_dim is explicit (not hidden/heads)."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, eps: float, theta: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.theta, self.eps = heads, kv_heads, head_dim, theta, eps
        self.scale = head_dim**-0.5
        self.fused = False
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj: nn.Module = nn.Linear(heads * head_dim, hidden, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=eps)

    def fuse(self) -> None:
        """q, k and v from one matmul, and one norm, scale and RoPE for q and k together (see the module doc)."""
        self.o_proj = pre_transposed(self.o_proj)
        qkv = concat_linears([self.q_proj, self.k_proj, self.v_proj])
        if qkv is None:
            return
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        self.qkv_proj = pre_transposed(qkv)
        self.qk_norm_weight = mx.concatenate(
            [mx.broadcast_to(self.q_norm.weight, (h, d)), mx.broadcast_to(self.k_norm.weight, (kv, d))]
        )[:, None, :]  # [h + kv, 1, d]: per head, broadcast over positions
        del self.q_proj, self.k_proj, self.v_proj, self.q_norm, self.k_norm
        self.fused = True

    def heads_of(self, x: mx.array, offset: int | mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """q [b, heads, n, d] and k, v [b, kv_heads, n, d] of x [b, n, hidden] at positions offset.., rotated."""
        b, n, _ = x.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        rope = dict(traditional=False, base=self.theta, scale=1.0, offset=offset)
        if not self.fused:
            q = self.q_norm(self.q_proj(x).reshape(b, n, h, d)).transpose(0, 2, 1, 3)
            k = self.k_norm(self.k_proj(x).reshape(b, n, kv, d)).transpose(0, 2, 1, 3)
            v = self.v_proj(x).reshape(b, n, kv, d).transpose(0, 2, 1, 3)
            return mx.fast.rope(q, d, **rope), mx.fast.rope(k, d, **rope), v  # type: ignore[arg-type]
        qkv = self.qkv_proj(x).reshape(b, n, h + 2 * kv, d).transpose(0, 2, 1, 3)
        qk = mx.fast.rms_norm(qkv[:, : h + kv], None, self.eps) * self.qk_norm_weight
        qk = mx.fast.rope(qk, d, **rope)  # type: ignore[arg-type]
        return qk[:, :h], qk[:, h:], qkv[:, h + kv :]

    def __call__(self, x: mx.array, cache: Any, residual: mx.array) -> mx.array:
        """residual + attention(x) over x [b, n, hidden] after the positions in `cache` (updated)."""
        b, n, _ = x.shape
        q, k, v = self.heads_of(x, cache.offset)
        k, v = cache.update_and_fetch(k, v)
        mask = "causal" if n > 1 else None
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return add_linear(residual, self.o_proj, out.transpose(0, 2, 1, 3).reshape(b, n, -1))

    def step(
        self, x: mx.array, pos: mx.array, keys: mx.array, values: mx.array, mask: mx.array, residual: mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        """One position x [1, 1, hidden] at `pos` (int32 scalar array) against whole cache buffers [1, kv, C, d]:
        writes its K/V at `pos`; `mask` (bool [C], shared by every layer) hides the positions after it, so every
        shape is fixed by C alone. Returns (residual + attention, keys, values)."""
        q, k, v = self.heads_of(x, pos)
        start = pos.reshape(1)
        keys = mx.slice_update(keys, k.astype(keys.dtype), start, axes=(2,))
        values = mx.slice_update(values, v.astype(values.dtype), start, axes=(2,))
        out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=self.scale, mask=mask)
        return add_linear(residual, self.o_proj, out.transpose(0, 2, 1, 3).reshape(1, 1, -1)), keys, values


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.fused = False
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj: nn.Module = nn.Linear(intermediate, hidden, bias=False)

    def fuse(self) -> None:
        """gate and up from one matmul (kept apart where the checkpoint quantizes them differently)."""
        self.down_proj = pre_transposed(self.down_proj)
        gate_up = concat_linears([self.gate_proj, self.up_proj])
        if gate_up is not None:
            self.gate_up_proj = pre_transposed(gate_up)
            del self.gate_proj, self.up_proj
            self.fused = True

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        """residual + down(silu(gate(x)) * up(x))."""
        if self.fused:
            gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return add_linear(residual, self.down_proj, nn.silu(gate) * up)


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

    def fuse(self) -> None:
        self.self_attn.fuse()
        self.mlp.fuse()

    def __call__(self, x: mx.array, cache: Any) -> mx.array:
        x = self.self_attn(self.input_layernorm(x), cache, x)
        return self.mlp(self.post_attention_layernorm(x), x)

    def step(
        self, x: mx.array, pos: mx.array, keys: mx.array, values: mx.array, mask: mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        """`__call__` for one position against static cache buffers (see Attention.step)."""
        x, keys, values = self.self_attn.step(self.input_layernorm(x), pos, keys, values, mask, x)
        return self.mlp(self.post_attention_layernorm(x), x), keys, values


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

    def fuse(self) -> None:
        for layer in self.layers:
            layer.fuse()

    def step(
        self, x: mx.array, pos: mx.array, keys: list[mx.array], values: list[mx.array]
    ) -> tuple[mx.array, list[mx.array], list[mx.array]]:
        """One position through every layer against static buffers: (post-norm hidden, new keys, new values)."""
        new_k, new_v = [], []
        mask = mx.arange(keys[0].shape[2]) <= pos  # built once: compile does not merge the layers' copies
        for layer, k, v in zip(self.layers, keys, values, strict=True):
            x, k, v = layer.step(x, pos, k, v, mask)
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
        # new arrays, never an in-place write: the buffers may be a voice prefix's snapshot (see `share`)
        start = mx.array([self.offset])
        self.keys = mx.slice_update(self.keys, k.astype(self.keys.dtype), start, axes=(2,))
        self.values = mx.slice_update(self.values, v.astype(self.values.dtype), start, axes=(2,))
        self.offset += n
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def share(self, keys: mx.array, values: mx.array, n: int) -> None:
        """Start from whole buffers [1, kv, C, d] whose first n positions are written (a voice prefix's): no
        copy now; the first write makes one (MLX copies a buffer it cannot update in place), the source stays."""
        self.keys, self.values, self.offset = keys, values, n


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
        self.codec_head: nn.Module = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.code_predictor = CodePredictor(cfg.code_predictor_config, cfg.hidden_size)

    def __call__(self, x: mx.array, cache: list[Any]) -> mx.array:
        return self.model(x, cache)

    def fuse(self) -> None:
        """The talker's and the predictor's layers in the fused layout (module doc); before anything compiles."""
        self.model.fuse()
        self.code_predictor.model.fuse()
        self.codec_head = pre_transposed(self.codec_head)
        self.code_predictor.lm_head = [pre_transposed(head) for head in self.code_predictor.lm_head]
        self.compiled = CompiledCache()

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

    def fuse(self) -> None:
        self.talker.fuse()
