"""Time to first token of a chat turn with the persistent prompt cache versus a full re-prefill (not a test).

Builds Gemma 4 E2B / E4B text models at real size with random 4-bit weights (no download), fills the history to
about 500 / 2000 / 4000 tokens with turns of plain sentences, answers turn N-1 (which leaves the cache warm),
then times turn N twice on the same prompt: once from the warm cache (prefilling only the previous answer as heard
and the new message) and once after clearing the cache (a full re-prefill). The ratio comes from the same run.

    python -m benchmarks.llm --small                 # a scaled-down Gemma 4, quick on a CPU
    python -m benchmarks.llm --sizes e2b --history 500,2000 --out /tmp/llm.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from assistant.config import LlmConfig
from assistant.llm import Chat, Message
from tests.llm.tiny import CORPUS, build_tokenizer

VOCAB = 262_144
# Gemma 4 text shapes (google/gemma-4-E2B-it and -E4B-it config.json, text_config).
SIZES: dict[str, dict[str, Any]] = {
    "e2b": {
        "hidden_size": 1536,
        "num_hidden_layers": 35,
        "intermediate_size": 6144,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "num_kv_shared_layers": 20,
        "sliding_window_pattern": 5,
        "use_double_wide_mlp": True,
    },
    "e4b": {
        "hidden_size": 2560,
        "num_hidden_layers": 42,
        "intermediate_size": 10240,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "num_kv_shared_layers": 18,
        "sliding_window_pattern": 6,
        "use_double_wide_mlp": False,
    },
    "small": {  # the same architecture scaled down, for a quick run
        "hidden_size": 128,
        "num_hidden_layers": 6,
        "intermediate_size": 512,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "num_kv_shared_layers": 2,
        "sliding_window_pattern": 3,
        "use_double_wide_mlp": True,
    },
}
GROUP, BITS = 64, 4


def text_config(size: str) -> dict[str, Any]:
    shape = SIZES[size]
    pattern = ["sliding_attention"] * (shape["sliding_window_pattern"] - 1) + ["full_attention"]
    n = shape["num_hidden_layers"]
    vocab = 4096 if size == "small" else VOCAB
    return {
        "model_type": "gemma4_text",
        **{k: v for k, v in shape.items() if k != "sliding_window_pattern"},
        "head_dim": 256 if size != "small" else 64,
        "global_head_dim": 512 if size != "small" else 128,
        "hidden_size_per_layer_input": 256 if size != "small" else 64,
        "vocab_size": vocab,
        "vocab_size_per_layer_input": vocab,
        "sliding_window": 512,
        "layer_types": (pattern * n)[:n],
        "final_logit_softcapping": 30.0,
        "tie_word_embeddings": True,
    }


def random_quantized_model(size: str, seed: int, dtype: mx.Dtype) -> nn.Module:
    """A Gemma 4 text model with random 4-bit weights, built directly quantized (the float weights never exist)."""
    from mlx_lm.models import gemma4_text

    mx.random.seed(seed)
    model = gemma4_text.Model(gemma4_text.ModelArgs.from_dict(text_config(size)))
    nn.quantize(model, GROUP, BITS, class_predicate=lambda _p, m: hasattr(m, "to_quantized"))
    for _, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear | nn.QuantizedEmbedding):
            rows, packed = module.weight.shape
            fan_in = packed * 32 // BITS
            # Uniform codes 0..15 with scale s and bias -7.5 s: zero mean, std 4.6 s = 1 / sqrt(fan_in).
            s = 1.0 / (4.6 * math.sqrt(fan_in))
            module.weight = mx.random.randint(0, 2**31 - 1, (rows, packed)).astype(mx.uint32)
            module.scales = mx.full((rows, fan_in // GROUP), s, dtype=dtype)
            module.biases = mx.full((rows, fan_in // GROUP), -7.5 * s, dtype=dtype)
            mx.eval(module.weight, module.scales, module.biases)
    model.set_dtype(dtype)  # norms and scalars, as the checkpoints store them
    mx.eval(model.parameters())
    return model


def fill_history(chat: Chat, tokens: int) -> None:
    """Plain-sentence turns until the rendered history is about `tokens` long."""
    i = 0
    chat.history = []
    while len(chat.render(chat.history, True)) < tokens:
        user = " ".join(CORPUS[(i + k) % len(CORPUS)] for k in range(2))
        answer = " ".join(CORPUS[(i + k) % len(CORPUS)] for k in range(2, 6))
        chat.history += [Message("user", user), Message("assistant", answer)]
        i += 1


def time_turn(chat: Chat, text: str) -> dict[str, Any]:
    """Seconds from respond() to the first generated token, and what the turn prefilled."""
    start = time.perf_counter()
    gen = chat.respond(text)
    ttft = None
    for _ in gen:
        if chat.stats.generated_tokens >= 1 and ttft is None:
            ttft = time.perf_counter() - start
    total = time.perf_counter() - start
    chat.finish_turn(None)
    s = chat.stats
    return {
        "ttft_s": round(ttft if ttft is not None else total, 4),
        "prompt_tokens": s.prompt_tokens,
        "reused_tokens": s.reused_tokens,
        "prefilled_tokens": s.prefilled_tokens,
        "generated_tokens": s.generated_tokens,
    }


def bench(
    size: str, histories: list[int], answer_tokens: int, seed: int, dtype: mx.Dtype, one_prefill: bool
) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = random_quantized_model(size, seed, dtype)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        build_tokenizer(Path(d), "gemma4")
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        tokenizer = load_tokenizer(Path(d), eos_token_ids=[1])
    cfg = LlmConfig(model=f"random {size}", temperature=0.0, max_tokens=answer_tokens, history_tokens=1_000_000)
    results = []
    for n in histories:
        chat = Chat(model, tokenizer, cfg)
        fill_history(chat, n)
        del chat.history[-2:]
        question = "And what about tomorrow? Tell me in one sentence."
        if one_prefill:
            # Turn N from a cold cache (a full prefill), then turn N+1 from the cache it leaves: one full prefill
            # in all, for slow machines; turn N+1's prompt is longer by the answer and the new message.
            full = time_turn(chat, " ".join(CORPUS[:2]))
            cached = time_turn(chat, question)
        else:
            # Turn N-1 is answered live (untimed), leaving the cache as a conversation does; then turn N is timed
            # from that cache and again from a cleared one: the same prompt both ways.
            time_turn(chat, " ".join(CORPUS[:2]))
            cached = time_turn(chat, question)
            chat.history = chat.history[:-2]
            chat.cache.clear()
            full = time_turn(chat, question)
            assert cached["prompt_tokens"] == full["prompt_tokens"]
        row = {
            "history_tokens": n,
            "cached": cached,
            "full_reprefill": full,
            "ttft_ratio_full_over_cached": round(full["ttft_s"] / cached["ttft_s"], 2),
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        results.append(row)
    return {
        "model": f"gemma-4-{size} text shapes, random {BITS}-bit weights (group {GROUP}), {dtype}",
        "weight_bytes": sum(v.nbytes for _, v in tree_flatten(model.parameters())),
        "build_s": round(build_s, 1),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="a scaled-down Gemma 4 (quick on a CPU)")
    p.add_argument("--sizes", default="e2b,e4b", help="comma-separated: e2b, e4b (default: both)")
    p.add_argument("--history", default="500,2000,4000", help="history lengths in tokens (default: 500,2000,4000)")
    p.add_argument("--answer-tokens", type=int, default=8, help="tokens generated per timed turn (default: 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"), help="scales and activations"
    )
    p.add_argument(
        "--one-prefill",
        action="store_true",
        help="time a cold turn N then a cached turn N+1 (one full prefill per history length, for slow machines)",
    )
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    sizes = ["small"] if args.small else [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            p.error(f"unknown size {s!r}; use e2b or e4b (or --small)")
    histories = [int(h) for h in args.history.split(",")]
    report = {
        "benchmark": "llm ttft, persistent prompt cache vs full re-prefill",
        "method": "cold turn N, cached turn N+1" if args.one_prefill else "turn N cached and cleared, same prompt",
        "device": str(mx.default_device()),
        "platform": f"{platform.system()} {platform.machine()}",
        "mlx": mx.__version__,
        "runs": [
            bench(s, histories, args.answer_tokens, args.seed, getattr(mx, args.dtype), args.one_prefill) for s in sizes
        ],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
