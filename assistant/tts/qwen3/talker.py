"""The Qwen3-TTS talker: a Qwen3 decoder over summed text-track and codec-track embeddings.

Attribute names equal the checkpoint keys after "talker." (`model.layers.N.self_attn.q_proj`, `codec_head`,
`text_projection.linear_fc1`, `code_predictor...`). The MRoPE of the checkpoint always gets three identical
position copies, so it is exactly 1-D rotate-half RoPE (spec 2.1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

    def make_cache(self) -> list[Any]:
        from mlx_lm.models.cache import KVCache

        return [KVCache() for _ in self.model.layers]


class Qwen3TTSModel(nn.Module):
    """The checkpoint's top level: `talker.*` (the speaker encoder is loaded beside it, not inside)."""

    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.talker = Talker(cfg)
