"""Chat over tiny random-weight Gemma 3 and Gemma 4 checkpoints: the persistent prompt cache against mlx-lm's
own generate_step on a fresh cache, cancellation, history truncation and load errors."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import RotatingKVCache, make_prompt_cache
from mlx_lm.sample_utils import greedy_sampler

from assistant import llm
from assistant.config import LlmConfig
from assistant.errors import InputError, ModelError
from assistant.llm import Chat, Message
from tests.llm.tiny import make_tiny

MAX_TOKENS = 10
QUESTIONS = [
    "Hello, how are you today?",
    "Tell me a short story about a cat who learns to fly.",
    "What is 3.14 times 2?",
    "今日はいい天気ですね。",
    "Set a timer for ten minutes and remind me to call Anna.",
]


@pytest.fixture(
    scope="module",
    params=[("gemma3", None, 16), ("gemma4", 4, 16), ("gemma3", None, 4096)],
    ids=["gemma3", "gemma4-4bit", "gemma3-trimmable"],
)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Window 16 makes the sliding caches rotate (untrimmable); 4096 keeps every cache trimmable."""
    family, bits, window = request.param
    return make_tiny(tmp_path_factory.mktemp(family), family, seed=7, window=window, bits=bits)


def rotates(chat: Chat) -> bool:
    return chat.model.args.model_type == "gemma4" or chat.model.args.sliding_window < 1000


def greedy_cfg(folder: Path, **changes: Any) -> LlmConfig:
    base = LlmConfig(model=str(folder), temperature=0.0, max_tokens=MAX_TOKENS, system_prompt="Be brief.")
    return dataclasses.replace(base, **changes)


def reference(chat: Chat, messages: list[Message], max_tokens: int = MAX_TOKENS) -> list[int]:
    """Greedy answer tokens from mlx-lm's generate_step with a fresh cache over the whole rendered history."""
    prompt = mx.array(chat.render(messages, add_generation_prompt=True))
    out = []
    steps = generate_step(
        prompt, chat.model, max_tokens=max_tokens, sampler=greedy_sampler, prompt_cache=make_prompt_cache(chat.model)
    )
    for token, _ in steps:
        if token in chat.tokenizer.eos_token_ids:
            break
        out.append(int(token))
    return out


def run(gen: Iterator[str], steps: int | None = None) -> str:
    return "".join(itertools.islice(gen, steps))


def test_cached_turns_equal_full_reprefill(model_dir: Path) -> None:
    """Over five turns, each greedy answer from the persistent cache equals a full re-prefill of the history."""
    chat = Chat.load(greedy_cfg(model_dir))
    previous_prompt = 0
    for i, question in enumerate(QUESTIONS):
        expected = reference(chat, [*chat.history, Message("user", question)])
        text = run(chat.respond(question))
        assert chat.answer_tokens == expected, f"turn {i + 1}"
        assert text == chat.tokenizer.decode(expected).lstrip(" ")
        # The whole previous prompt comes from the cache; only the answer as recorded and the new message are new.
        assert chat.stats.reused_tokens >= previous_prompt
        assert chat.stats.prefilled_tokens == chat.stats.prompt_tokens - chat.stats.reused_tokens
        previous_prompt = chat.stats.prompt_tokens
        chat.finish_turn(None)
        assert chat.history[-1] == Message("assistant", text.strip())
    assert chat.cache.rewinds["clear"] == 0
    if rotates(chat):  # the sliding-window caches ran past their window, so the checkpoint path was taken
        assert any(isinstance(c, RotatingKVCache) and c.offset > c.max_size for c in chat.cache.layers)
        assert chat.cache.rewinds["checkpoint"] >= 3
    else:
        assert chat.cache.rewinds["trim"] >= 3


def test_interrupted_answer_then_truncation_equal_reprefill(model_dir: Path) -> None:
    """After an answer cut off mid-way and after the oldest turns are dropped, answers still equal a re-prefill."""
    chat = Chat.load(greedy_cfg(model_dir, history_tokens=256))
    run(chat.respond(QUESTIONS[0]))
    chat.finish_turn(None)
    gen = chat.respond(QUESTIONS[1])
    run(gen, 6)
    heard = chat.answer[: len(chat.answer) // 2]
    chat.finish_turn(heard)  # closes the generator itself
    assert chat.history[-1] == Message("assistant", heard.strip(), interrupted=True)
    # The cache now holds a prefix of the history as recorded, never the unheard words.
    recorded = chat.render(chat.history, add_generation_prompt=False)
    assert chat.cache.tokens == recorded[: len(chat.cache.tokens)]
    long_question = " ".join(QUESTIONS)  # about 70 tokens: a few turns overflow the 256-token budget
    dropped = 0
    for i in range(5):
        expected_history = [*chat.history, Message("user", f"{i}. {long_question}")]
        run(chat.respond(f"{i}. {long_question}"))
        dropped += chat.stats.dropped_messages
        kept = expected_history[chat.stats.dropped_messages :] if chat.stats.dropped_messages else expected_history
        assert chat.history == kept
        assert chat.answer_tokens == reference(chat, chat.history), f"turn {i + 3}"
        assert chat.stats.prompt_tokens <= 256
        chat.finish_turn(None)
    assert dropped >= 2
    assert chat.history[0].role == "user"


def test_cancel_mid_generation_then_continue(model_dir: Path) -> None:
    """Closing the answer after a few tokens leaves a consistent cache: the next turn equals a re-prefill."""
    chat = Chat.load(greedy_cfg(model_dir))
    gen = chat.respond(QUESTIONS[0])
    partial = run(gen, 4)
    gen.close()  # cancelled, never recorded by finish_turn(): respond() records what was generated
    # The cache holds the prompt and every token but the last one yielded (it enters on the next step).
    prompt = chat.render(chat.history, add_generation_prompt=True)
    assert chat.cache.tokens == prompt + chat.answer_tokens[:-1]
    expected = reference(chat, [*chat.history, Message("assistant", partial.strip()), Message("user", QUESTIONS[2])])
    run(chat.respond(QUESTIONS[2]))
    assert chat.history[1] == Message("assistant", partial.strip(), interrupted=True)
    assert chat.answer_tokens == expected


def test_cancel_during_prefill_then_continue(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing while the prompt is still being prefilled (one chunk per next()) keeps the cache usable."""
    monkeypatch.setattr(llm, "PREFILL_STEP", 8)
    chat = Chat.load(greedy_cfg(model_dir))
    gen = chat.respond(QUESTIONS[1])
    assert next(gen) == ""  # the first prompt chunk only
    assert 0 < len(chat.cache.tokens) < chat.stats.prompt_tokens
    chat.finish_turn("")  # interrupted before a word was heard: the empty answer keeps roles alternating
    assert chat.history[-1] == Message("assistant", "", interrupted=True)
    expected = reference(chat, [*chat.history, Message("user", QUESTIONS[3])])
    run(chat.respond(QUESTIONS[3]))
    assert chat.answer_tokens == expected


def test_one_model_step_per_next(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each next() runs at most one prompt chunk (plus the last prompt token) or one token step, so closing the
    generator cancels within one step."""
    monkeypatch.setattr(llm, "PREFILL_STEP", 16)
    chat = Chat.load(greedy_cfg(model_dir))
    calls: list[int] = []
    model = chat.cache._model

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0].shape[1])
        return model(*args, **kwargs)

    chat.cache._model = counting
    per_step = []
    for _ in chat.respond(QUESTIONS[1]):
        per_step.append(list(calls))
        calls.clear()
    prompt = chat.stats.prompt_tokens
    assert prompt > 3 * 16
    prefill_steps = (prompt - 1 + 15) // 16
    assert per_step[: prefill_steps - 1] == [[16]] * (prefill_steps - 1)  # yields "" between chunks
    assert per_step[prefill_steps - 1] == [(prompt - 1) - 16 * (prefill_steps - 1), 1]  # last chunk, last token
    generation = per_step[prefill_steps:]
    assert generation[: MAX_TOKENS - 1] == [[1]] * (MAX_TOKENS - 1)  # then one token per step
    assert all(not s for s in generation[MAX_TOKENS - 1 :])  # at most the detokenizer's held-back tail
    assert chat.stats.generated_tokens == MAX_TOKENS


def test_end_of_turn_token_stops_the_answer(model_dir: Path) -> None:
    """The answer ends at an end-of-turn token, here made one of the first tokens greedy decoding produces."""
    chat = Chat.load(greedy_cfg(model_dir))
    expected = reference(chat, [Message("user", QUESTIONS[0])])
    stop = expected[3]
    chat._eos.add(stop)
    run(chat.respond(QUESTIONS[0]))
    assert chat.answer_tokens == expected[: expected.index(stop)]


def test_seeded_sampling_is_reproducible(model_dir: Path) -> None:
    """With llm.seed set, sampling at temperature 0.9 with top-p, top-k and a repetition penalty repeats itself."""
    cfg = greedy_cfg(model_dir, temperature=0.9, top_p=0.9, top_k=20, repetition_penalty=1.3, seed=11)
    answers = []
    for _ in range(2):
        chat = Chat.load(cfg)
        answers.append((run(chat.respond(QUESTIONS[0])), chat.answer_tokens))
    assert answers[0] == answers[1]
    assert len(answers[0][1]) > 0


def test_set_temperature_changes_the_sampling_of_the_next_answer(model_dir: Path) -> None:
    """set_temperature(0) makes a chat loaded at temperature 2 answer greedily (the reference answer); set back to
    2 (seeded) it samples as a chat loaded at 2 does (a Realtime session's temperature is honoured)."""
    hot = greedy_cfg(model_dir, temperature=2.0, seed=5)
    chat = Chat.load(hot)
    chat.set_temperature(0.0)
    expected = reference(chat, [Message("user", QUESTIONS[1])])
    run(chat.respond(QUESTIONS[1]))
    assert chat.answer_tokens == expected
    chat.reset()
    mx.random.seed(5)
    chat.set_temperature(2.0)
    run(chat.respond(QUESTIONS[1]))
    sampled = Chat.load(hot)  # seeds the generator with 5 again
    run(sampled.respond(QUESTIONS[1]))
    assert chat.answer_tokens == sampled.answer_tokens != expected


def test_reset_and_system_prompt(model_dir: Path) -> None:
    """reset() clears the history; a new system prompt changes the rendered prompt and the answer follows it."""
    chat = Chat.load(greedy_cfg(model_dir))
    run(chat.respond(QUESTIONS[0]))
    chat.finish_turn(None)
    chat.reset()
    assert chat.history == []
    chat.set_system_prompt("Answer like a pirate.")
    assert "pirate" in chat.tokenizer.decode(chat.render([Message("user", "hi")], True))
    expected = reference(chat, [Message("user", QUESTIONS[2])])
    run(chat.respond(QUESTIONS[2]))
    assert chat.answer_tokens == expected
    if rotates(chat):  # past the window, with the change before the checkpoint: a full re-prefill
        assert chat.cache.rewinds["clear"] == 1 and chat.stats.reused_tokens == 0
    else:  # trimmed back to the shared start of the first turn
        assert chat.stats.reused_tokens > 0


def test_empty_message_is_refused(model_dir: Path) -> None:
    """An empty user message raises InputError naming the problem."""
    chat = Chat.load(greedy_cfg(model_dir))
    with pytest.raises(InputError, match="empty"):
        chat.respond("   ")


def test_a_message_the_template_refuses_leaves_the_history_usable(model_dir: Path) -> None:
    """A user message the chat template cannot render (a lone surrogate) fails that turn only; the next message is
    answered (it stayed in the history, so every later turn failed with `roles must alternate`)."""
    chat = Chat.load(greedy_cfg(model_dir))
    with pytest.raises(ModelError, match="chat template"):
        chat.respond("caf\udce9")
    assert chat.history == []
    assert run(chat.respond("Hello, how are you today?")) != ""
    chat.finish_turn(None)
    assert [m.role for m in chat.history] == ["user", "assistant"]


def test_load_errors_name_the_fix(tmp_path: Path, model_dir: Path) -> None:
    """A missing folder, a folder without weights and a model without a chat template fail with ModelError."""
    with pytest.raises(ModelError, match="folder not found"):
        Chat.load(LlmConfig(model=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="failed to load"):
        Chat.load(LlmConfig(model=str(tmp_path / "empty")))
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in model_dir.iterdir():
        (bare / f.name).write_bytes(f.read_bytes())
    tc = json.loads((bare / "tokenizer_config.json").read_text())
    del tc["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(ModelError, match="no chat template"):
        Chat.load(LlmConfig(model=str(bare)))


def test_warmup_changes_no_answer(model_dir: Path) -> None:
    """Chat.warmup (run at start-up so the first turn compiles nothing) leaves the history and the prompt cache
    empty, and a seeded sampled answer after it equals the same answer without it."""
    cfg = greedy_cfg(model_dir, temperature=0.9, top_p=0.9, top_k=20, repetition_penalty=1.3, seed=11)
    answers = []
    for warm in (False, True):
        chat = Chat.load(cfg)
        if warm:
            chat.warmup()
            assert chat.history == [] and chat.cache.tokens == []
        answers.append((run(chat.respond(QUESTIONS[1])), chat.answer_tokens, chat.stats.reused_tokens))
    assert answers[0] == answers[1]


def test_a_model_without_its_tokenizer_is_one_line_naming_it(tmp_path: Path, model_dir: Path) -> None:
    """An LLM folder whose tokenizer.json is missing (a download cut short) fails in one line naming the file and
    `assistant pull` (it was six lines of transformers' text ending in `install sentencepiece or tiktoken`)."""
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in model_dir.iterdir():
        if f.name != "tokenizer.json":
            (partial / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ModelError) as e:
        Chat.load(LlmConfig(model=str(partial)))
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"LLM `{partial}` has no tokenizer file in {partial} (tokenizer.json")
    assert str(e.value).endswith("run `assistant pull` again, or copy the model's tokenizer files in")
