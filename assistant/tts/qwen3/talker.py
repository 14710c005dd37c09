"""The Qwen3-TTS talker: a Qwen3 decoder over summed text-track and codec-track embeddings.

Attribute names equal the checkpoint keys after "talker." (`model.layers.N.self_attn.q_proj`, `codec_head`,
`text_projection.linear_fc1`, `code_predictor...`). The MRoPE of the checkpoint always gets three identical
position copies, so it is exactly 1-D rotate-half RoPE (spec 2.1).

`fuse()` (the loader calls it once the weights and dtype are final) trades the checkpoint layout for fewer
kernels per position, which bound a frame on GPUs where the host issues every kernel (benchmarks/tts_ops.py
counts them as MLX CUDA launches them): q/k/v and gate/up each become one matmul; the q/k norm weights and the
RoPE rotation are one fused elementwise kernel that also passes v through, so the new keys and values leave it as
one array and are written to one K/V buffer per layer (the talker's step: one scatter at its position); a float
o_proj/down_proj adds the residual inside its matmul (addmm), and float weights are held transposed (no transpose
node per call). Layers whose q/k/v or gate/up a checkpoint quantizes differently keep their own matmuls. The
predictor's group tables then hold each row's input projection and layer-0 norm beside it (`InputRows`).
Where the cheaper form on a GPU is measured rather than known, `FuseOptions` names the choices (same values).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import mlx.core as mx
import mlx.nn as nn

from assistant.quantization import concat_linears
from assistant.tts.qwen3.config import TalkerConfig


@dataclass(frozen=True)
class FuseOptions:
    """Choices of the fused layout whose cost on a GPU is measured, not assumed (`benchmarks.tts_profile --fuse`);
    each gives the same values up to rounding.

    attention: the talker's one-position attention under its array mask (MLX CUDA has no fused kernel for one):
      "matmul" the heads of one kv head as rows of one matmul (4 kernels, both matmuls through cuBLAS), "addmm"
      the mask added by the scores' matmul (3 kernels, both cuBLAS), "gemv" one row per head against the values
      held transposed in the K/V buffer (`StaticCache.values_transposed`), so both matmuls are MLX's gemv kernel
      (4 kernels, no cuBLAS call: MLX CUDA builds a cuBLAS descriptor and asks its heuristic on every call).
    residual: o_proj and down_proj of float layers (and the 1.7B predictor's input projection, with its bias),
      "addmm" the residual added inside the matmul (one cuBLAS call), "add" a matmul (MLX's gemv kernel) and then
      an add.
    rotation: q/k norm weights and RoPE after the RMS norm of q, k and v, "chain" one elementwise kernel (rotate-
      half through a reversed view), "rope" a weight multiply, mx.fast.rope and a select that keeps v (3 kernels).
    """

    attention: Literal["matmul", "addmm", "gemv"] = "matmul"
    residual: Literal["addmm", "add"] = "addmm"
    rotation: Literal["chain", "rope"] = "chain"


DEFAULT_FUSE = FuseOptions()  # what the loader uses


class LinearT(nn.Module):
    """A float Linear without bias holding its weight as the transposed view [in, out] of the checkpoint's
    [out, in] (no copy): `x @ weight_t` records one graph node per call where `x @ weight.T` records two."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = linear.weight.T

    def __call__(self, x: mx.array) -> mx.array:
        return x @ self.weight_t


def pre_transposed(layer: nn.Module, kind: type[LinearT] = LinearT) -> nn.Module:
    """`layer` as a LinearT (or `kind`) where it is a float Linear without bias, else itself."""
    return kind(layer) if type(layer) is nn.Linear and "bias" not in layer else layer


class LinearAddT(LinearT):
    """A LinearT whose caller adds the residual after the matmul (`FuseOptions.residual` "add")."""


class LinearBiasT(LinearT):
    """A float Linear with bias as a one-row matmul against its transposed weight, then the bias added
    (`FuseOptions.residual` "add": nn.Linear's addmm is a cuBLAS call on MLX CUDA)."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        self.bias = linear.bias

    def __call__(self, x: mx.array) -> mx.array:
        return x @ self.weight_t + self.bias


def add_linear(residual: mx.array, layer: nn.Module, x: mx.array) -> mx.array:
    """residual + layer(x); one addmm kernel where the layer is a float Linear without bias (and not a
    LinearAddT)."""
    if type(layer) is LinearT:
        return mx.addmm(residual, x, layer.weight_t)
    if type(layer) is nn.Linear and "bias" not in layer:
        return mx.addmm(residual, x, layer.weight.T)
    return residual + layer(x)


def inv_frequencies(head_dim: int, theta: float) -> mx.array:
    half = head_dim // 2
    return mx.exp(mx.arange(half, dtype=mx.float32) * (-math.log(theta) / half))


def rope_angles(inv_freq: mx.array, positions: mx.array) -> tuple[mx.array, mx.array]:
    """(cos, sin) float32 [n, 1, half] at int positions [n]."""
    angles = positions.astype(mx.float32)[:, None, None] * inv_freq
    return mx.cos(angles), mx.sin(angles)


class Rope:
    """cos/sin of rotate-half RoPE as float32 [n, 1, head_dim / 2], computed as MLX's own RoPE fallback does.

    `fixed` spans are computed and evaluated once here, so a compiled graph that uses them (the predictor's
    positions 0..16) holds them as constants instead of recomputing them per call. A plain object, not a
    Module: its arrays are not parameters."""

    def __init__(self, head_dim: int, theta: float, fixed: tuple[tuple[int, int], ...] = ()):
        self.inv_freq = inv_frequencies(head_dim, theta)
        self.fixed = {span: self.at(mx.arange(span[0], span[0] + span[1])) for span in fixed}
        mx.eval(self.inv_freq, self.fixed)

    def at(self, positions: mx.array) -> tuple[mx.array, mx.array]:
        """(cos, sin) at int positions [n] (an array traced in a compiled graph too)."""
        return rope_angles(self.inv_freq, positions)

    def span(self, offset: int, n: int) -> tuple[mx.array, mx.array]:
        """(cos, sin) at positions offset..offset+n-1."""
        got = self.fixed.get((offset, n))
        return got if got is not None else self.at(mx.arange(offset, offset + n))


class StepTables:
    """Per K/V buffer length C, evaluated once: the positions 0..C-1 (int32 [C], the one-position step's mask
    is `positions <= pos`) and cos/sin at each (float32 [C, 2, 1, head_dim / 2]; the step gathers its row). Inputs
    of the compiled step, which is traced per C anyway: one gather and one compare per step where computing them
    in the graph was six kernels. A plain object, not a Module: its arrays are not parameters."""

    def __init__(self, head_dim: int, theta: float):
        self.rope = Rope(head_dim, theta)
        self.by_size: dict[int, tuple[mx.array, mx.array]] = {}
        self.writes: dict[tuple[int, int, int], tuple[mx.array, mx.array]] = {}

    def of(self, size: int) -> tuple[mx.array, mx.array]:
        if size not in self.by_size:
            positions = mx.arange(size, dtype=mx.int32)
            angles = mx.stack(list(self.rope.at(positions)), axis=1)
            mx.eval(positions, angles)
            self.by_size[size] = positions, angles
        return self.by_size[size]

    def write_at(self, heads: int, size: int, d: int) -> tuple[mx.array, mx.array]:
        """(base, stride) int32 [1, heads, d] and [1, heads, 1]: position p of a buffer [1, heads, size, d] whose
        second half holds the values transposed ([d, size] per head) is written at the flat indices
        base + stride * p (a key row: p * d + j; a value column: j * size + p)."""
        key = (heads, size, d)
        if key not in self.writes:
            j = mx.arange(d, dtype=mx.int32)
            is_v = (mx.arange(heads) >= heads // 2)[:, None]
            base = mx.where(is_v, j * size, j)[None]
            stride = mx.where(is_v, 1, d).astype(mx.int32)[None]
            mx.eval(base, stride)
            self.writes[key] = base, stride
        return self.writes[key]


class Attention(nn.Module):
    """GQA attention with per-head RMSNorm on q and k before RoPE; head_dim is explicit (not hidden/heads).

    K/V live in one buffer per layer, [b, 2 * kv_heads, positions, d]: the keys' heads, then the values'."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, eps: float, theta: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.theta, self.eps = heads, kv_heads, head_dim, theta, eps
        self.scale = head_dim**-0.5
        self.fused = False
        self.attention, self.rotation = "matmul", "chain"  # FuseOptions
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj: nn.Module = nn.Linear(heads * head_dim, hidden, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=eps)

    def fuse(self, options: FuseOptions = DEFAULT_FUSE) -> None:
        """q, k and v from one matmul, and one kernel for the q/k norm weights, RoPE and v (see the module doc)."""
        self.o_proj = pre_transposed(self.o_proj, LinearT if options.residual == "addmm" else LinearAddT)
        self.attention = options.attention
        qkv = concat_linears([self.q_proj, self.k_proj, self.v_proj])
        if qkv is None:
            return
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        self.qkv_proj = pre_transposed(qkv)
        w = mx.concatenate(
            [
                mx.broadcast_to(self.q_norm.weight, (h, d)),
                mx.broadcast_to(self.k_norm.weight, (kv, d)),
                mx.ones((kv, d), self.k_norm.weight.dtype),
            ]
        ).reshape(h + 2 * kv, 1, 2, d // 2)  # per head, broadcast over positions; halves apart for rotate-half
        sign = mx.array([[-1.0], [1.0]], dtype=w.dtype)
        self.qk_weight, self.qk_weight_rot = w, mx.contiguous(sign * w[..., ::-1, :])
        # q leaves the kernel times the attention scale (float32, as the attention's own first multiply), so no
        # attention call multiplies it again
        self.head_scale = mx.where(mx.arange(h + 2 * kv) < h, self.scale, 1.0).astype(mx.float32).reshape(-1, 1, 1, 1)
        self.is_v = (mx.arange(h + 2 * kv) >= h + kv).reshape(-1, 1, 1, 1)
        self.rotation = options.rotation
        if self.rotation == "rope":  # the norm weights [heads, 1, d] with q's scale, in the model's dtype
            self.head_weight = (w.reshape(-1, 1, d) * self.head_scale[..., 0]).astype(w.dtype)
        else:  # frame's row layout [.., heads, 2, d / 2]: the same constants shaped for it
            rows = (h + 2 * kv, 2, d // 2)
            self.row_weights = (
                w.reshape(rows),
                self.qk_weight_rot.reshape(rows),
                self.head_scale.reshape(-1, 1, 1),
                self.is_v.reshape(-1, 1, 1),
            )
            mx.eval(self.row_weights)  # a tuple is no parameter: evaluated here, constants of the compiled frame
        del self.q_proj, self.k_proj, self.v_proj, self.q_norm, self.k_norm
        self.fused = True

    def project(
        self, x: mx.array, offset: int | mx.array, angles: tuple[mx.array, mx.array] | None
    ) -> tuple[mx.array, mx.array]:
        """q [b, heads, n, d], rotated (and scaled in the fused layout), and the new K/V [b, 2 * kv_heads, n, d]
        (keys rotated) of x [b, n, hidden] or [n, hidden] (b = 1) at positions offset.. (`angles`: their Rope
        cos/sin, fused layout)."""
        n, b = x.shape[-2], x.shape[0] if x.ndim == 3 else 1
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        if not self.fused:
            rope = dict(traditional=False, base=self.theta, scale=1.0, offset=offset)
            q = self.q_norm(self.q_proj(x).reshape(b, n, h, d)).transpose(0, 2, 1, 3)
            k = self.k_norm(self.k_proj(x).reshape(b, n, kv, d)).transpose(0, 2, 1, 3)
            v = self.v_proj(x).reshape(b, n, kv, d).transpose(0, 2, 1, 3)
            q, k = mx.fast.rope(q, d, **rope), mx.fast.rope(k, d, **rope)  # type: ignore[arg-type]
            return q, mx.concatenate([k, v.astype(k.dtype)], axis=1)
        if n == 1:  # [b, 1, heads, d] and [b, heads, 1, d] are the same bytes: one reshape, no transpose
            qkv = self.qkv_proj(x).reshape(b, h + 2 * kv, 1, d)
            normed = mx.fast.rms_norm(qkv, None, self.eps)
        else:  # normalised before the transpose: a norm kernel needs its rows contiguous (else MLX copies first)
            heads = self.qkv_proj(x).reshape(b, n, h + 2 * kv, d)
            qkv, normed = heads.transpose(0, 2, 1, 3), mx.fast.rms_norm(heads, None, self.eps).transpose(0, 2, 1, 3)
        if self.rotation == "rope":
            weighted = normed * self.head_weight
            rope = dict(traditional=False, base=self.theta, scale=1.0, offset=offset)
            out = mx.where(self.is_v[..., 0], qkv, mx.fast.rope(weighted, d, **rope))  # type: ignore[arg-type]
            return out[:, :h], out[:, h:]
        if angles is None:  # a caller without the model's tables (the model passes them, computed once)
            angles = rope_angles(inv_frequencies(d, self.theta), offset + mx.arange(n))
        normed = normed.reshape(b, h + 2 * kv, n, 2, d // 2)
        cos, sin = angles
        # rotate-half as x * cos + (-x2, x1) * sin: the swapped halves are a view (negative stride), no copy
        rotated = (normed * self.qk_weight * cos + normed[..., ::-1, :] * self.qk_weight_rot * sin) * self.head_scale
        raw = qkv.reshape(b, h + 2 * kv, n, 2, d // 2)
        out = mx.where(self.is_v, raw, rotated).astype(qkv.dtype).reshape(b, h + 2 * kv, n, d)
        return out[:, :h], out[:, h:]

    def attend(self, q: mx.array, kv: mx.array, mask: Any, residual: mx.array) -> mx.array:
        """residual + o_proj(attention of q (from `project`) over the K/V buffer kv [b, 2 * kv_heads, t, d]), in
        the residual's shape ([b, n, hidden] or [n, hidden])."""
        b, h, n, d = q.shape
        kvh = self.kv_heads
        rows = (*residual.shape[:-1], h * d)
        keys, values = kv[:, :kvh], kv[:, kvh:]
        g = h // kvh  # GQA: the heads of one kv head
        if self.attention == "gemv" and isinstance(mask, mx.array) and n == 1:  # a step: values held transposed
            q = q if self.fused else q * self.scale
            # one row per head, each matmul's second operand a transposed view: MLX's gemv kernel, not cuBLAS
            vt = values.reshape(b, kvh, d, kv.shape[2])
            scores = q.reshape(b, kvh, g, 1, d) @ keys[:, :, None].swapaxes(-1, -2)
            weights = mx.softmax(mx.where(mask, scores, -mx.inf), axis=-1, precise=True)
            out = (weights @ vt[:, :, None].swapaxes(-1, -2)).reshape(rows)
        elif self.fused and isinstance(mask, mx.array) and n == 1:
            # MLX CUDA has no fused kernel for an array mask; its fallback records 5 kernels, these 3-4 (q is scaled)
            if self.attention == "addmm":  # -inf where masked, 0 elsewhere: added inside the matmul
                bias = mx.where(mask, mx.array(0.0, q.dtype), mx.array(-mx.inf, q.dtype))
                scores = mx.addmm(bias, q.reshape(b, kvh, g, d), keys.swapaxes(-1, -2))
            else:
                scores = mx.where(mask, q.reshape(b, kvh, g, d) @ keys.swapaxes(-1, -2), -mx.inf)
            weights = mx.softmax(scores, axis=-1, precise=True)
            out = (weights @ values).reshape(rows)
        else:
            scale = 1.0 if self.fused else self.scale
            out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=scale, mask=mask)
            out = (out if n == 1 else out.transpose(0, 2, 1, 3)).reshape(rows)  # n = 1: the same bytes
        return add_linear(residual, self.o_proj, out)

    @property
    def writes_rows(self) -> bool:
        """Whether `frame` applies: the fused layout with the RoPE chain (its elementwise kernel can write the
        rows into a frame buffer; mx.fast.rope's output cannot fuse with a write)."""
        return self.fused and self.rotation == "chain"

    def frame(
        self,
        x: mx.array,
        buf: mx.array | None,
        slots: list[mx.array],
        start: int,
        angles: tuple[mx.array, mx.array],
        residual: mx.array,
    ) -> tuple[mx.array, mx.array]:
        """The predictor's rows x [n, hidden] at positions start.. (known when the loop is traced) against this
        layer's frame buffer buf [1, P, heads + 2 * kv_heads, d] (None: a new frame, zeros): the new buffer is buf
        with those positions' rows replaced by their rotated, scaled q, rotated k and v, selected where slots[p]
        (bool [1, P, 1, 1, 1], true at p) inside the elementwise kernel that rotates them (writing K/V after it
        was one more kernel, padding a new frame's two); the attention reads q and K/V as strided views of it
        (taken as they are by CUDA's and, for one row, Metal's kernels; Metal copies the prefill's two q rows).
        Returns (residual + attention, the new buffer)."""
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        heads, half, n, positions = h + 2 * kv, d // 2, x.shape[0], len(slots)
        qkv = self.qkv_proj(x)
        raw = qkv.reshape(1, n, heads, 2, half)
        normed = mx.fast.rms_norm(qkv.reshape(1, n, heads, d), None, self.eps).reshape(1, n, heads, 2, half)
        w, w_rot, scale, is_v = self.row_weights
        cos, sin = angles  # [n, 1, half]
        new = mx.array(0, qkv.dtype) if buf is None else buf.reshape(1, positions, heads, 2, half)
        for i in range(n):  # a row at a time (views of the inputs), each broadcast over the positions it selects in
            nrm, r, c, s = normed, raw, cos, sin
            if n > 1:
                nrm, r, c, s = nrm[:, i : i + 1], r[:, i : i + 1], c[i : i + 1], s[i : i + 1]
            rotated = (nrm * w * c + nrm[..., ::-1, :] * w_rot * s) * scale
            new = mx.where(slots[start + i], mx.where(is_v, r, rotated).astype(qkv.dtype), new)
        new = new.reshape(1, positions, heads, d)
        seen = new[:, : start + n].transpose(0, 2, 1, 3)  # [1, heads, start + n, d]
        q, keys, values = seen[:, :h, start:], seen[:, h : h + kv], seen[:, h + kv :]
        # q left the chain scaled; n = 1: [1, h, 1, d] and [1, h * d] are the same bytes
        out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=1.0, mask="causal" if n > 1 else None)
        return add_linear(residual, self.o_proj, (out if n == 1 else out.transpose(0, 2, 1, 3)).reshape(n, h * d)), new

    def __call__(
        self, x: mx.array, cache: Any, residual: mx.array, angles: tuple[mx.array, mx.array] | None = None
    ) -> mx.array:
        """residual + attention(x) over x [b, n, hidden] or [n, hidden] after the positions in `cache` (updated)."""
        q, new = self.project(x, cache.offset, angles)
        kv = cache.update_kv(new)
        return self.attend(q, kv, "causal" if x.shape[-2] > 1 else None, residual)

    def step(
        self,
        x: mx.array,
        pos: mx.array,
        kv: mx.array,
        mask: mx.array,
        angles: tuple[mx.array, mx.array] | None,
        residual: mx.array,
        write_at: mx.array,
    ) -> tuple[mx.array, mx.array]:
        """One position x [1, hidden] at `pos` (int32 scalar array) against the whole K/V buffer
        [1, 2 * kv_heads, C, d]: writes its K/V at `pos` (one scatter at `write_at`, built once per step by
        `TalkerModel.step`); `mask` (bool [C], shared by every layer) hides the positions after it, so every
        shape is fixed by C alone. Returns (residual + attention, kv)."""
        q, new = self.project(x, pos, angles)
        new = new.astype(kv.dtype)
        # a scatter at pos: one GPU kernel, where a slice_update at an array index is two (offset, then copy)
        if write_at.ndim == 4:
            kv = mx.put_along_axis(kv, write_at, new, axis=2)
        else:  # values transposed: one scatter into the flat buffer writes a key row and a value column per head
            b, heads, c, d = kv.shape
            kv = mx.put_along_axis(kv.reshape(b, heads, c * d), write_at, new.reshape(b, heads, d), axis=2)
            kv = kv.reshape(b, heads, c, d)
        return self.attend(q, kv, mask, residual), kv


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.fused = False
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj: nn.Module = nn.Linear(intermediate, hidden, bias=False)

    def fuse(self, options: FuseOptions = DEFAULT_FUSE) -> None:
        """gate and up from one matmul (kept apart where the checkpoint quantizes them differently)."""
        self.down_proj = pre_transposed(self.down_proj, LinearT if options.residual == "addmm" else LinearAddT)
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

    def fuse(self, options: FuseOptions = DEFAULT_FUSE) -> None:
        self.self_attn.fuse(options)
        self.mlp.fuse(options)

    def __call__(
        self, x: mx.array, cache: Any, angles: tuple[mx.array, mx.array] | None = None, normed: mx.array | None = None
    ) -> mx.array:
        """`normed`: input_layernorm(x), where the caller has it already (the predictor's looked-up rows)."""
        x = self.self_attn(self.input_layernorm(x) if normed is None else normed, cache, x, angles)
        return self.mlp(self.post_attention_layernorm(x), x)

    def frame(
        self,
        x: mx.array,
        buf: mx.array | None,
        slots: list[mx.array],
        start: int,
        angles: tuple[mx.array, mx.array],
        normed: mx.array | None = None,
    ) -> tuple[mx.array, mx.array]:
        """`__call__` for predictor rows against the layer's frame buffer (Attention.frame); `normed`:
        input_layernorm(x) where the caller has it."""
        y, buf = self.self_attn.frame(
            self.input_layernorm(x) if normed is None else normed, buf, slots, start, angles, x
        )
        return self.mlp(self.post_attention_layernorm(y), y), buf

    def step(
        self,
        x: mx.array,
        pos: mx.array,
        kv: mx.array,
        mask: mx.array,
        angles: tuple[mx.array, mx.array] | None,
        write_at: mx.array,
    ) -> tuple[mx.array, mx.array]:
        """`__call__` for one position against a static K/V buffer (see Attention.step)."""
        x, kv = self.self_attn.step(self.input_layernorm(x), pos, kv, mask, angles, x, write_at)
        return self.mlp(self.post_attention_layernorm(x), x), kv


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
        self.cfg = cfg
        self.codec_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_hidden_size)
        self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.rope: Rope | None = None  # set by fuse(): the fused layers' RoPE tables
        self.tables = StepTables(cfg.head_dim, cfg.rope_theta)  # the one-position step's inputs per buffer length

    def __call__(self, x: mx.array, cache: list[Any]) -> mx.array:
        angles = self.rope.span(cache[0].offset, x.shape[-2]) if self.rope is not None else None
        for layer, c in zip(self.layers, cache, strict=True):
            x = layer(x, c, angles)
        return self.norm(x)

    @property
    def values_transposed(self) -> bool:
        """Whether the K/V buffers hold the values transposed (`FuseOptions.attention` "gemv")."""
        return self.layers[0].self_attn.attention == "gemv"

    def fuse(self, options: FuseOptions = DEFAULT_FUSE) -> None:
        for layer in self.layers:
            layer.fuse(options)
        self.rope = Rope(self.cfg.head_dim, self.cfg.rope_theta)

    def step(
        self, x: mx.array, pos: mx.array, kvs: list[mx.array], tables: tuple[mx.array, mx.array]
    ) -> tuple[mx.array, list[mx.array]]:
        """One position x [1, hidden] through every layer against static K/V buffers of length C, with
        `StepTables.of(C)`: (post-norm hidden [1, hidden], new buffers). Two-dimensional throughout: a matmul of
        a three-dimensional x records a flatten and an unflatten around it."""
        out = []
        positions, table = tables
        mask = positions <= pos  # built once: compile does not merge the layers' copies
        row = mx.take(table, pos.reshape(1), axis=0)  # [1, 2, 1, half]: cos and sin, once for every layer
        angles = (row[:, 0], row[:, 1]) if self.rope is not None else None
        _, heads, size, d = kvs[0].shape
        if self.values_transposed:  # the flat indices of a key row and a value column per head
            base, stride = self.tables.write_at(heads, size, d)
            write_at = base + stride * pos  # once for every layer
        else:
            write_at = mx.broadcast_to(pos.reshape(1, 1, 1, 1), (1, heads, 1, d))
        for layer, kv in zip(self.layers, kvs, strict=True):
            x, kv = layer.step(x, pos, kv, mask, angles, write_at)
            out.append(kv)
        return self.norm(x), out


class StaticCache:
    """K/V of one talker sequence in one buffer [1, 2 * kv_heads, C, d] (keys' heads, then values') whose length
    C only grows in steps of `STEP` positions.

    `update_kv` writes a prefill (any n); `Talker.step` reads and replaces the whole buffer, so one compiled
    single-position graph serves every position below C (no per-step shape change).
    """

    STEP = 256  # positions per growth: ~1% of a 0.6B frame's weight bytes in extra masked K/V reads

    def __init__(self, values_transposed: bool = False) -> None:
        """`values_transposed`: the buffer's second half holds the values as [kv_heads, d, C] (the same bytes as
        [kv_heads, C, d]), for `FuseOptions.attention` "gemv"; `update_kv` still returns the standard layout."""
        self.kv: mx.array | None = None
        self.offset = 0
        self.values_transposed = values_transposed

    def halves(self) -> tuple[mx.array, mx.array]:
        """The keys [1, kv, C, d] and the values transposed [1, kv, d, C] of a values-transposed buffer (views)."""
        assert self.kv is not None and self.values_transposed
        b, heads, c, d = self.kv.shape
        return self.kv[:, : heads // 2], self.kv[:, heads // 2 :].reshape(b, heads // 2, d, c)

    @property
    def capacity(self) -> int:
        return 0 if self.kv is None else self.kv.shape[2]

    def reserve(self, like: mx.array, n: int) -> None:
        """Room for n more positions (a buffer shaped like `like` [1, 2 * kv, *, d]), growing by whole steps."""
        need = self.offset + n
        if need <= self.capacity:
            return
        size = -(-need // self.STEP) * self.STEP
        b, heads, _, d = like.shape
        grow = size - self.capacity
        more = mx.zeros((b, heads, grow, d), like.dtype)
        if self.kv is None or not self.values_transposed:
            self.kv = more if self.kv is None else mx.concatenate([self.kv, more], axis=2)
            return
        keys, vt = self.halves()
        vt = mx.concatenate([vt, mx.zeros((b, heads // 2, d, grow), like.dtype)], axis=3)
        keys = mx.concatenate([keys, more[:, : heads // 2]], axis=2)
        self.kv = mx.concatenate([keys, vt.reshape(b, heads // 2, size, d)], axis=1)

    def update_kv(self, new: mx.array) -> mx.array:
        """Write new [1, 2 * kv, n, d] at the next positions; returns the keys and values written so far,
        [1, 2 * kv, offset, d] (a view, or a copy where the values are held transposed)."""
        self.reserve(new, new.shape[2])
        assert self.kv is not None
        # a new array, never an in-place write: the buffer may be a voice prefix's snapshot (see `share`)
        start, new = mx.array([self.offset]), new.astype(self.kv.dtype)
        self.offset += new.shape[2]
        if not self.values_transposed:
            self.kv = mx.slice_update(self.kv, new, start, axes=(2,))
            return self.kv[:, :, : self.offset]
        b, heads, c, d = self.kv.shape
        keys, vt = self.halves()
        keys = mx.slice_update(keys, new[:, : heads // 2], start, axes=(2,))
        vt = mx.slice_update(vt, new[:, heads // 2 :].swapaxes(2, 3), start, axes=(3,))
        self.kv = mx.concatenate([keys, vt.reshape(b, heads // 2, c, d)], axis=1)
        return mx.concatenate([keys[:, :, : self.offset], vt[..., : self.offset].swapaxes(2, 3)], axis=1)

    def share(self, kv: mx.array, n: int) -> None:
        """Start from a whole buffer [1, 2 * kv, C, d] whose first n positions are written (a voice prefix's): no
        copy now; the first write makes one (MLX copies a buffer it cannot update in place), the source stays."""
        self.kv, self.offset = kv, n


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

    def fuse(self, options: FuseOptions = DEFAULT_FUSE) -> None:
        """The talker's and the predictor's layers in the fused layout (module doc); before anything compiles."""
        self.model.fuse(options)
        self.code_predictor.model.fuse(options)
        self.codec_head = pre_transposed(self.codec_head)
        self.code_predictor.lm_head = [pre_transposed(head) for head in self.code_predictor.lm_head]
        cp = self.code_predictor
        if options.residual == "add" and cp.has_projection and type(cp.small_to_mtp_projection) is nn.Linear:
            cp.small_to_mtp_projection = LinearBiasT(cp.small_to_mtp_projection)
        cp.fuse_inputs()
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
        return [StaticCache(self.model.values_transposed) for _ in self.model.layers]

    def step(self, x: mx.array, cache: list[StaticCache]) -> mx.array:
        """One input vector x [hidden] at the cache's next position: the post-norm hidden state [hidden] (lazy).

        Compiled once per buffer length (quantized models too: compiled 4-bit graphs ran on MLX 0.32.4 CUDA), in one
        form, so `warm_steps` covers every call. The frame loop's x (E(frame) + text) comes summed from the frame
        kernel."""
        kv = cache[0].kv
        assert kv is not None
        for c in cache:
            c.reserve(kv, 1)
        pos = mx.array(cache[0].offset, dtype=mx.int32)
        fn = self.compiled.get("step", lambda: mx.compile(self.model.step))
        h, kvs = fn(x[None], pos, [c.kv for c in cache], self.model.tables.of(cache[0].capacity))
        for c, kv in zip(cache, kvs, strict=True):
            c.kv = kv
            c.offset += 1
        return cast(mx.array, h[0, :])

    def warm_steps(self, positions: int) -> None:
        """Compile the one-position step for every buffer length a sequence of `positions` meets (at start-up:
        a new length mid-utterance would trace and compile the graph between two frames)."""
        a = self.model.layers[0].self_attn
        dtype = self.model.codec_embedding.weight.dtype
        x = mx.zeros((self.cfg.hidden_size,), dtype)
        for size in range(StaticCache.STEP, positions + StaticCache.STEP, StaticCache.STEP):
            cache = self.make_cache()
            for c in cache:
                c.kv = mx.zeros((1, 2 * a.kv_heads, size, a.head_dim), dtype)
                c.offset = size - 1
            mx.eval(self.step(x, cache))


class Qwen3TTSModel(nn.Module):
    """The checkpoint's top level: `talker.*` (the speaker encoder is loaded beside it, not inside)."""

    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.talker = Talker(cfg)

    def fuse(self, options: FuseOptions = DEFAULT_FUSE) -> None:
        self.talker.fuse(options)
