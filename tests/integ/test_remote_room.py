"""Spoken turns in the virtual room with `llm.backend = "openai"` against a real `mlx_lm.server` on the tiny LLM.

The whole daemon pipeline runs as `assistant run` builds it (cli.build_engines picks the remote backend); the
tiny STT and TTS are local. Proves: the reply is spoken, a barge-in closes the HTTP stream (the server logs the
broken connection), a server that is gone fails its turn with one error event and a spoken apology while the daemon
keeps listening, the next turn after the server is back is answered, and the listening task ends when cancelled;
and a tool round trip (the server parses the model's call, the daemon runs the tool, the result goes back and the
answer is spoken).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant import cli
from assistant.compute import Compute
from assistant.config import Config
from assistant.conversation import Conversation
from assistant.daemon import ReopeningSource
from assistant.events import (
    BargeIn,
    ErrorEvent,
    FinalTranscript,
    ResponseDone,
    ResponseTextDelta,
)
from assistant.llm_remote import RemoteChat
from assistant.tools.builtin import time_tool, zone
from assistant.tools.registry import Toolbox
from assistant.turns import APOLOGY
from tests import tiny_engines
from tests.event_log import EventLog
from tests.llm import tiny
from tests.llm.servers import MlxLmServer, free_port
from tests.speech import needs_espeak

pytestmark = [pytest.mark.audio, needs_espeak]

RATE = 24_000
WAIT_S = 180.0  # safety net for a busy shared CPU; never a timing assertion
SHOUT_GAIN = 16.0  # louder than the reply (barge_in_energy_margin_db = 0), as in tests/pipeline/test_e2e_room.py
BROKEN = ("BrokenPipeError", "ConnectionResetError")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, MlxLmServer]:
    root = tmp_path_factory.mktemp("remote_room")
    local = tiny_engines.tiny_config(root)
    server = MlxLmServer(Path(local.llm.model), free_port(), root / "server.log")
    changes = {
        "pipeline.mode": "hands_free",
        "vad.barge_in_energy_margin_db": 0.0,
        "echo.enabled": False,  # this room has no echo path (tests/pipeline/test_echo_turns_room.py has one)
        "pipeline.backchannels": [],  # the VAD's start interrupts (the tiny STT writes random words)
        "server.enabled": False,
        "llm.backend": "openai",
        "llm.base_url": server.base_url,
        "llm.model": "default_model",
        "llm.max_tokens": 4000,  # the server keeps generating into the open stream until the reply ends
        "llm.timeout_s": 60.0,
    }
    return local.replace(changes), server


# A tiny qwen3-format model that always makes the same tool call: a random model never emits well-formed call
# markup by itself, so its weights are set to a lookup table from the prompt's last token to the next token (every
# layer's output projection is zero, the head maps each token's embedding to its successor). The template marks a
# prompt that ends with a tool result; only then does the model answer in words.
CALL = '{"name":"get_time","arguments":{}}'
SPOKEN = "It is noon."
AFTER_TOOL = "<|after_tool|>"


def make_caller(folder: Path) -> Path:
    """A checkpoint for `mlx_lm.server` that calls get_time after a user turn and says SPOKEN after its result."""
    import mlx.core as mx
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", AFTER_TOOL]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator([*tiny.CORPUS * 8, *[CALL, SPOKEN] * 64], trainer)  # each piece of both is one token
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    prompt = "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    assert prompt in tiny.QWEN3_TEMPLATE
    marked = f"{prompt}{{%- if messages[-1]['role'] == 'tool' -%}}{{{{- '{AFTER_TOOL}' -}}}}{{%- endif -%}}"
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": tiny.QWEN3_TEMPLATE.replace(prompt, marked),
        "tool_parser_type": "json_tools",  # mlx_lm.server parses <tool_call>{json}</tool_call>
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    v = tok.token_to_id
    calls = [*tok.encode("\n").ids, v("<tool_call>"), *tok.encode(CALL).ids, v("</tool_call>"), v("<|im_end|>")]
    says = [v(AFTER_TOOL), *tok.encode(SPOKEN).ids, v("<|im_end|>")]
    successor: dict[int, int] = {}
    for chain in (calls, says):
        for a, b in itertools.pairwise(chain):
            assert successor.setdefault(a, b) == b, f"token {a} needs two successors"
    vocab = (tok.get_vocab_size() + 63) // 64 * 64
    model_cfg = {**tiny.qwen3_config(vocab, [v("<|im_end|>")]), "tie_word_embeddings": False}
    tiny.write_model(folder, model_cfg, seed=11)
    dim = model_cfg["hidden_size"]
    weights = mx.load(str(folder / "model.safetensors"))
    embed = weights["model.embed_tokens.weight"]
    normed = embed / mx.sqrt(mx.mean(embed * embed, axis=-1, keepdims=True))  # what the final RMSNorm gives
    head = mx.zeros((vocab, dim))
    for a, b in successor.items():
        head[b] = head[b] + normed[a] / dim  # the successor's logit is 1; any other is a random cosine / 1
    weights.update({"lm_head.weight": head, "model.norm.weight": mx.ones((dim,))})
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = mx.zeros(weights[name].shape)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    return folder


async def until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


def test_remote_llm_turns_barge_in_and_outage(room_env: Any, setup: tuple[Config, MlxLmServer]) -> None:
    """A spoken turn is answered via mlx_lm.server; barge-in drops its stream; an outage is one error and an apology,
    then recovery."""
    from assistant.audio.capture import Capture
    from assistant.audio.playback import Playback
    from tests.speech import say, silence

    cfg, server = setup
    server.start()

    async def main() -> tuple[EventLog, list[Any], str]:
        compute = Compute()
        engines = await compute.run(cli.build_engines, cfg)
        assert isinstance(engines.chat, RemoteChat)
        source = ReopeningSource(lambda: Capture(cfg.audio))
        runner: asyncio.Task[None] | None = None
        try:
            with Playback(cfg.audio, rate=engines.tts.sample_rate) as sink:
                pipeline = Conversation(cfg, engines, source, sink, compute)
                events = EventLog(pipeline, WAIT_S)
                runner = asyncio.create_task(pipeline.run())
                await until(lambda: pipeline.core.ring.end > 0)

                # 1. a spoken question, answered aloud through the server; then the user talks over it
                room_env.play(np.concatenate([silence(0.3), say("What time is it now?")]).astype(np.int16))
                await events.until(FinalTranscript)
                await events.until(ResponseTextDelta)
                await until(lambda: sink.played_samples >= RATE // 2)
                shout = np.clip(say("Stop, wait a moment please.").astype(np.float32) * SHOUT_GAIN, -32768, 32767)
                room_env.play(shout.astype(np.int16))
                await events.until(BargeIn)
                cut = await events.until(ResponseDone, lambda e: e.interrupted)
                await until(lambda: any(b in server.log() for b in BROKEN))
                await events.until(ResponseDone, lambda e: e.turn > cut.turn)  # the shout is a turn of its own

                # 2. the server is gone: that turn fails with an error event and a spoken apology
                server.stop()
                room_env.play(np.concatenate([silence(0.3), say("Are you still there?")]).astype(np.int16))
                await events.until(ErrorEvent)
                failed = await events.until(ResponseDone)
                # the next question waits for the apology's end: spoken over it, it would be under the barge-in gate
                apology = await events.until(ResponseDone, lambda e: e.text == APOLOGY)

                # 3. the server is back: the next turn is answered
                server.start()
                room_env.play(np.concatenate([silence(0.3), say("Tell me a short story.")]).astype(np.int16))
                final = await events.until(FinalTranscript)
                done = await events.until(ResponseDone, lambda e: e.turn > apology.turn)
                history = await compute.run(lambda: list(engines.chat.history))
                return events, history, f"{failed.turn}|{final.text}|{done.text}"
        finally:
            if runner is not None:  # the listening loop ends when cancelled (it once swallowed the cancellation)
                runner.cancel()
                ended, _ = await asyncio.wait([runner], timeout=WAIT_S)
                assert runner in ended, "the listening task did not end when cancelled"
                await pipeline.aclose()
            await source.aclose()
            compute.close(5.0)
            server.stop()

    events, history, summary = asyncio.run(main())
    seen = events.seen
    errors = [e for e in seen if isinstance(e, ErrorEvent)]
    assert len(errors) == 1, events.timeline()  # one outage, one error
    assert server.base_url in errors[0].message and "\n" not in errors[0].message
    assert [e.text for e in seen if isinstance(e, ResponseDone) and e.text == APOLOGY] == [APOLOGY]
    barge = next(e for e in seen if isinstance(e, BargeIn))
    assert barge.heard and any(b in server.log() for b in BROKEN)
    last = [e for e in seen if isinstance(e, ResponseDone)][-1]
    assert not last.interrupted and last.text, summary
    assert history[-1].role == "assistant" and history[-1].content == last.text.strip()


def test_remote_llm_tool_round_in_a_spoken_turn(room_env: Any, tmp_path: Path) -> None:
    """A spoken question answered through mlx_lm.server with a tool round: the server's call runs get_time here, its
    result goes back to the server, and the answer it then streams is spoken and kept in the history."""
    from assistant.audio.capture import Capture
    from assistant.audio.playback import Playback
    from tests.speech import say, silence

    local = tiny_engines.tiny_config(tmp_path)
    server = MlxLmServer(make_caller(tmp_path / "caller"), free_port(), tmp_path / "server.log")
    cfg = local.replace(
        {
            "pipeline.mode": "hands_free",
            "server.enabled": False,
            "llm.backend": "openai",
            "llm.base_url": server.base_url,
            "llm.model": "default_model",
            "llm.timeout_s": 60.0,
        }
    )
    toolbox = Toolbox([time_tool(zone(cfg.tools.timezone))])  # what tools.enabled = ["time"] builds
    server.start()

    async def main() -> tuple[Any, list[Any]]:
        compute = Compute()
        engines = await compute.run(cli.build_engines, cfg)
        source = ReopeningSource(lambda: Capture(cfg.audio))
        try:
            with Playback(cfg.audio, rate=engines.tts.sample_rate) as sink:
                pipeline = Conversation(cfg, engines, source, sink, compute, toolbox=toolbox)
                await pipeline.prepare()  # offers the tools to the chat, as serve() does
                events = EventLog(pipeline, WAIT_S)
                runner = asyncio.create_task(pipeline.run())
                await until(lambda: pipeline.core.ring.end > 0)
                room_env.play(np.concatenate([silence(0.3), say("What time is it now?")]).astype(np.int16))
                done = await events.until(ResponseDone, lambda e: not e.interrupted and bool(e.text))
                played = sink.played_samples
                history = await compute.run(lambda: list(engines.chat.history))
                runner.cancel()
                await pipeline.aclose()
                assert played > 0  # the answer was heard
                return done, history
        finally:
            await source.aclose()
            compute.close(5.0)
            server.stop()

    done, history = asyncio.run(main())
    assert done.text.strip() == SPOKEN
    user, call, result, answer = history[-4:]
    assert user.role == "user" and [c.name for c in call.tool_calls] == ["get_time"]
    assert result.role == "tool" and result.name == "get_time" and '"time"' in result.content
    assert answer.role == "assistant" and answer.content == SPOKEN
