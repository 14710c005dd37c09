"""Tiny random-weight chat models in the on-disk layout of real mlx-lm checkpoints, regenerated from seeds.

Each folder holds config.json, model.safetensors, tokenizer.json (a byte-level BPE trained here with the
`tokenizers` library) and tokenizer_config.json with a chat template written for these tests in the turn format
of the family. They load through `mlx_lm.load`, the same path as real models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CORPUS = [
    "Hello, how are you today? I am fine, thank you.",
    "The weather is sunny with a light breeze; it will rain tomorrow.",
    "Tell me a short story about a cat who learns to fly.",
    "What is 3.14 times 2? It is 6.28, e.g. a bit more than six.",
    "Set a timer for ten minutes and remind me to call Anna.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "I like music, books, coffee & long walks in the park!",
    "今日はいい天気ですね。散歩に行きましょう！",
    "你好，今天天气很好。我们去公园散步吧？",
    "Numbers: 1 2 3 4 5 6 7 8 9 10 100 1000. Done.",
]

GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}"
    "{% if messages[0]['role'] == 'system' %}{% set ns.sys = messages[0]['content'] + '\n\n' %}"
    "{% set messages = messages[1:] %}{% endif %}"
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{% if loop.first %}{{ ns.sys }}{% endif %}{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

GEMMA4_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<|turn>{{ role }}\n{{ m['content'] | trim }}<turn|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)

# Gemma 4's tool syntax as its released template renders it: declarations in the system turn, calls as
# call:NAME{key:value} with <|"|> strings, results right after the calls in the same model turn, which the model
# then continues (no new turn header after a tool response; a model message after a tool message continues it).
GEMMA4_TOOLS_TEMPLATE = (
    "{%- macro arg(v) -%}{%- if v is string -%}{{- '<|\"|>' + v + '<|\"|>' -}}"
    "{%- elif v is boolean -%}{{- 'true' if v else 'false' -}}"
    "{%- elif v is mapping -%}{{- '{' -}}{%- for k, x in v | dictsort -%}{{- k + ':' -}}{{- arg(x) -}}"
    "{{- ',' if not loop.last -}}{%- endfor -%}{{- '}' -}}"
    "{%- elif v is sequence -%}{{- '[' -}}{%- for x in v -%}{{- arg(x) -}}{{- ',' if not loop.last -}}"
    "{%- endfor -%}{{- ']' -}}{%- else -%}{{- v -}}{%- endif -%}{%- endmacro -%}"
    "{{- bos_token -}}{%- set ns = namespace(prev=none, last=none) -%}{%- set loop_messages = messages -%}"
    "{%- if tools or messages[0]['role'] == 'system' -%}{{- '<|turn>system\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] | trim -}}"
    "{%- set loop_messages = messages[1:] -%}{%- endif -%}"
    "{%- for t in tools or [] -%}{{- '<|tool>declaration:' + t['function']['name'] -}}"
    "{{- arg({'description': t['function']['description'], 'parameters': t['function']['parameters']}) -}}"
    "{{- '<tool|>' -}}{%- endfor -%}{{- '<turn|>\n' -}}{%- endif -%}"
    "{%- for m in loop_messages -%}{%- if m['role'] == 'tool' -%}"
    "{{- '<|tool_response>response:' + m['name'] + '{value:' + arg(m['content']) + '}<tool_response|>' -}}"
    "{%- set ns.prev = 'tool_response' -%}{%- else -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
    "{%- if not (role == 'model' and ns.last == 'model') -%}{{- '<|turn>' + role + '\n' -}}{%- endif -%}"
    "{{- m['content'] | trim -}}{%- if m['tool_calls'] -%}{%- for c in m['tool_calls'] -%}"
    "{{- '<|tool_call>call:' + c['function']['name'] + arg(c['function']['arguments']) + '<tool_call|>' -}}"
    "{%- endfor -%}{%- set ns.prev = 'tool_call' -%}"
    "{%- else -%}{{- '<turn|>\n' -}}{%- set ns.prev = role -%}{%- endif -%}{%- set ns.last = role -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt and ns.prev not in ['tool_call', 'tool_response'] -%}"
    "{{- '<|turn>model\n' -}}{%- endif -%}"
)

# Qwen 3's (and Hermes') JSON tool syntax in ChatML: tools listed as JSON in the system turn, calls as
# <tool_call>{"name": ..., "arguments": ...}</tool_call>, consecutive results in one user turn.
QWEN3_TEMPLATE = (
    "{%- if tools or messages[0]['role'] == 'system' -%}{{- '<|im_start|>system\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] -}}{%- endif -%}"
    "{%- if tools -%}{{- '\n\n# Tools\n\nYou may call one or more functions.\n<tools>' -}}"
    "{%- for t in tools -%}{{- '\n' + (t | tojson) -}}{%- endfor -%}"
    "{{- '\n</tools>\n\nReturn each call within <tool_call></tool_call> XML tags.' -}}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}{%- endif -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}"
    "{{- '<|im_start|>user\n' + m['content'] + '<|im_end|>\n' -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- '<|im_start|>assistant\n' + m['content'] -}}"
    "{%- for c in m['tool_calls'] or [] -%}{%- if m['content'] or not loop.first -%}{{- '\n' -}}{%- endif -%}"
    "{{- '<tool_call>\n{\"name\": \"' + c['function']['name'] + '\", \"arguments\": ' -}}"
    "{{- c['function']['arguments'] | tojson -}}{{- '}\n</tool_call>' -}}{%- endfor -%}{{- '<|im_end|>\n' -}}"
    "{%- elif m['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\n<tool_response>\n' + m['content'] + '\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

FAMILIES: dict[str, dict[str, Any]] = {
    "gemma3": {
        "special": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        "end_of_turn": "<end_of_turn>",
        "template": GEMMA3_TEMPLATE,
    },
    "gemma4": {
        "special": ["<pad>", "<eos>", "<bos>", "<|turn>", "<turn|>", "<|channel>", "<channel|>"],
        "end_of_turn": "<turn|>",
        "template": GEMMA4_TEMPLATE,
    },
    "gemma4-tools": {
        "special": [
            "<pad>",
            "<eos>",
            "<bos>",
            "<|turn>",
            "<turn|>",
            "<|channel>",
            "<channel|>",
            "<|tool>",
            "<tool|>",
            "<|tool_call>",
            "<tool_call|>",
            "<|tool_response>",
            "<tool_response|>",
            '<|"|>',
        ],
        "end_of_turn": "<turn|>",
        "template": GEMMA4_TOOLS_TEMPLATE,
    },
    "qwen3": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"],
        "end_of_turn": "<|im_end|>",
        "template": QWEN3_TEMPLATE,
        "bos": None,
    },
}


def build_tokenizer(folder: Path, family: str, vocab_size: int = 384) -> int:
    """Train a byte-level BPE on CORPUS into `folder`; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    spec = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    bos = spec.get("bos", "<bos>")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": "<eos>" if bos else "<|im_end|>",
        "pad_token": "<pad>" if bos else "<|endoftext|>",
        "chat_template": spec["template"],
        "model_max_length": 131072,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return int(tok.get_vocab_size())


def gemma3_config(vocab: int, eos: list[int], window: int = 16) -> dict[str, Any]:
    """A Gemma 3 text (gemma3_text) config: 2 sliding layers per global layer, window `window`."""
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 6,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "query_pre_attn_scalar": 32,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "sliding_window": window,
        "sliding_window_pattern": 3,
        "max_position_embeddings": 32768,
        "vocab_size": vocab,
        "bos_token_id": 2,
        "pad_token_id": 0,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }


def gemma4_text_config(vocab: int, window: int = 16) -> dict[str, Any]:
    """A Gemma 4 E-model text config in miniature: per-layer inputs, KV-shared layers, sliding + full layers."""
    layer_types = (["sliding_attention"] * 3 + ["full_attention"]) * 2
    return {
        "model_type": "gemma4_text",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": len(layer_types),
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "global_head_dim": 64,
        "num_kv_shared_layers": 4,
        "hidden_size_per_layer_input": 64,
        "vocab_size": vocab,
        "vocab_size_per_layer_input": vocab,
        "sliding_window": window,
        "layer_types": layer_types,
        "use_double_wide_mlp": True,
        "final_logit_softcapping": 30.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
    }


def qwen3_config(vocab: int, eos: list[int]) -> dict[str, Any]:
    """A Qwen 3 dense config in miniature (full attention only: every cache is trimmable)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 32768,
        "vocab_size": vocab,
        "tie_word_embeddings": True,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }


def write_model(folder: Path, config: dict[str, Any], seed: int, bits: int | None = None) -> None:
    """Random weights for `config` from `seed`, saved (optionally quantized) like a converted checkpoint."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    model_cls, args_cls = _get_classes(config)
    mx.random.seed(seed)
    model = model_cls(args_cls.from_dict(config))
    # Norm weights start constant; make them random too so every path matters.
    params = dict(tree_flatten(model.parameters()))
    for name, p in params.items():
        if "norm" in name and name.endswith("weight"):
            params[name] = 0.1 * mx.random.normal(p.shape)
    model.load_weights(list(params.items()))
    if bits is not None:
        predicate = getattr(model, "quant_predicate", None)

        def quantizable(path: str, module: nn.Module) -> bool | dict[str, int]:
            if not hasattr(module, "to_quantized") or module.weight.shape[-1] % 64:
                return False
            return predicate(path, module) if predicate else True

        nn.quantize(model, group_size=64, bits=bits, class_predicate=quantizable)
        config = {**config, "quantization": {"group_size": 64, "bits": bits}}
    weights = dict(tree_flatten(model.parameters()))
    if config["model_type"] == "gemma4":
        # The original checkpoint layout: model.language_model.*, plus towers mlx-lm must drop.
        weights = {k.replace("language_model.model.", "model.language_model."): v for k, v in weights.items()}
        weights["model.vision_tower.patch_embedder.weight"] = mx.zeros((4, 4))
        weights["model.audio_tower.conv.weight"] = mx.zeros((4, 4))
    mx.eval(weights)
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def make_tiny(folder: Path, family: str, seed: int = 0, window: int = 16, bits: int | None = None) -> Path:
    """A complete tiny checkpoint of `family` (a FAMILIES key) in `folder`."""
    vocab = build_tokenizer(folder, family)
    vocab_padded = (vocab + 63) // 64 * 64  # real checkpoints pad the embedding table too
    end = FAMILIES[family]["special"].index(FAMILIES[family]["end_of_turn"])
    if family == "gemma3":
        config = gemma3_config(vocab_padded, [1, end], window)
    elif family == "qwen3":
        config = qwen3_config(vocab_padded, [end])
    else:
        config = {
            "architectures": ["Gemma4ForConditionalGeneration"],
            "model_type": "gemma4",
            "text_config": gemma4_text_config(vocab_padded, window),
            "vocab_size": vocab_padded,
            "eos_token_id": [1, end],
        }
    write_model(folder, config, seed, bits)
    return folder
