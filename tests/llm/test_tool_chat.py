"""Tool rounds over tiny random-weight models whose chat templates render tools (Gemma 4's syntax and Qwen 3's
JSON): teacher-forced calls in each model's own format are split from the speech as they stream, the result
goes back as a tool message, and the greedy continuation from the persistent cache equals a full re-prefill."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.models.cache import RotatingKVCache
from mlx_lm.sample_utils import greedy_sampler

from assistant.config import LlmConfig
from assistant.llm import Chat, History, Message
from assistant.tools import calls
from assistant.tools.calls import CallDetector, Speech, ToolCall
from tests.llm.test_chat import reference
from tests.llm.tiny import make_tiny

TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "description": "IANA time zone"}},
            "required": ["zone"],
        },
    },
}
RESULT = '{"time": "14:05", "zone": "Europe/Paris"}'

# What each family's model writes to call get_time (its own syntax), and the token that follows the call.
SCRIPTS = {
    "gemma4-tools": ('<|tool_call>call:get_time{zone:<|"|>Europe/Paris<|"|>}<tool_call|>', "<|tool_response>"),
    "qwen3": ('<tool_call>\n{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}\n</tool_call>', "<|im_end|>"),
}


@pytest.fixture(
    scope="module",
    params=[("gemma4-tools", 4096), ("gemma4-tools", 16), ("qwen3", 4096)],
    ids=["gemma4-tools", "gemma4-tools-rotating", "qwen3"],
)
def family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Window 16 makes Gemma's sliding caches rotate (untrimmable): tool rounds go through the checkpoint."""
    family, window = request.param
    return family, make_tiny(tmp_path_factory.mktemp(family), family, seed=3, window=window)


def load(folder: Path, **changes: Any) -> Chat:
    cfg = LlmConfig(model=str(folder), temperature=0.0, max_tokens=72, system_prompt="Be brief.")
    chat = Chat.load(dataclasses.replace(cfg, **changes))
    chat.set_tools([TIME_TOOL])
    return chat


def force(chat: Chat, text: str) -> None:
    """Teacher forcing: the real model runs every step, but the sampled tokens are `text`'s, then greedy."""
    script = iter(chat.tokenizer.encode(text, add_special_tokens=False))

    def sampler(logprobs: mx.array) -> mx.array:
        token = next(script, None)
        return greedy_sampler(logprobs) if token is None else mx.array([token])

    chat._sampler = sampler


def split(chat: Chat, gen: Iterator[str]) -> tuple[list[Speech | ToolCall], CallDetector]:
    """The reply pump's loop: feed deltas to the detector, stop generating once the calls are complete."""
    detector = CallDetector(chat.tool_format)
    out: list[Speech | ToolCall] = []
    for delta in gen:
        out += detector.feed(delta)
        if detector.calls_ready:
            break
    else:
        out += detector.finish()
    return out, detector


def test_template_renders_tools_and_names_the_format(family_dir: tuple[str, Path]) -> None:
    """set_tools() puts the tool's schema into the prompt; the call format is read from the chat template."""
    family, folder = family_dir
    chat = load(folder)
    prompt = chat.tokenizer.decode(chat.render([Message("user", "hi")], add_generation_prompt=True))
    assert "get_time" in prompt and "IANA time zone" in prompt
    assert chat.tool_format is {"gemma4-tools": calls.GEMMA4, "qwen3": calls.HERMES}[family]
    chat.set_tools([])
    assert "get_time" not in chat.tokenizer.decode(chat.render([Message("user", "hi")], add_generation_prompt=True))


@pytest.mark.parametrize("preamble", ["", "Let me check. "])
def test_tool_round_continues_from_cache_like_a_reprefill(family_dir: tuple[str, Path], preamble: str) -> None:
    """A forced call in the model's format is parsed and never spoken; after its result, the greedy answer from
    the persistent cache equals a fresh prefill of the whole history, and so does the next turn."""
    family, folder = family_dir
    chat = load(folder)
    call_text, after = SCRIPTS[family]
    force(chat, preamble + call_text + after)
    segments, detector = split(chat, chat.respond("What time is it in Paris?"))
    first_prompt = chat.stats.prompt_tokens
    speech = "".join(s.text for s in segments if isinstance(s, Speech))
    found = [s for s in segments if isinstance(s, ToolCall)]
    assert speech == preamble
    assert [(c.name, dict(c.arguments), c.error) for c in found] == [("get_time", {"zone": "Europe/Paris"}, "")]
    chat._sampler = greedy_sampler
    answer = "".join(chat.continue_with_results(detector.speech, [(found[0], RESULT)]))
    expected = reference(chat, chat.history, chat.cfg.max_tokens)
    assert chat.answer_tokens == expected
    assert answer == chat.tokenizer.decode(expected).lstrip(" ") or chat.answer_tokens == []
    # The whole first prompt came from the cache; the call tokens too when the template re-renders them alike.
    assert chat.stats.reused_tokens >= first_prompt
    chat.finish_turn(None)
    roles = [(m.role, bool(m.tool_calls)) for m in chat.history]
    said = [("assistant", False)] if preamble and family == "gemma4-tools" else []
    assert roles == [("user", False), *said, ("assistant", True), ("tool", False), ("assistant", False)]
    assert chat.history[-2] == Message("tool", RESULT, tool_call_id=found[0].id, name="get_time")
    assert chat.last_turn() == chat.history
    expected = reference(chat, [*chat.history, Message("user", "Thank you.")], chat.cfg.max_tokens)
    "".join(chat.respond("Thank you."))
    assert chat.answer_tokens == expected
    assert chat.cache.rewinds["clear"] == 0
    if any(isinstance(c, RotatingKVCache) and c.offset > c.max_size for c in chat.cache.layers):
        assert chat.cache.rewinds["checkpoint"] >= 1  # past the window: rewinds restore the checkpoint


def test_malformed_call_gets_an_error_result_and_the_answer_goes_on(family_dir: tuple[str, Path]) -> None:
    """A call the parser cannot read comes out with an error (never as speech); the error fed back as its result
    lets the answer continue like a re-prefill."""
    family, folder = family_dir
    chat = load(folder)
    fmt = chat.tool_format
    assert fmt is not None
    force(chat, f"{fmt.start}call get_time(zone=Paris{fmt.end}{SCRIPTS[family][1]}")
    segments, _ = split(chat, chat.respond("What time is it?"))
    assert not [s for s in segments if isinstance(s, Speech)]
    (bad,) = segments
    assert isinstance(bad, ToolCall) and bad.error.startswith("the tool call could not be parsed")
    chat._sampler = greedy_sampler
    "".join(chat.continue_with_results("", [(bad, json.dumps({"error": bad.error}))]))
    assert chat.answer_tokens == reference(chat, chat.history, chat.cfg.max_tokens)


def test_restore_trims_to_the_budget(family_dir: tuple[str, Path]) -> None:
    """A stored history longer than llm.history_tokens is loaded without its oldest whole turns."""
    _, folder = family_dir
    budget = len(load(folder).render([], add_generation_prompt=False)) + 200  # the system turn plus ~6 turns
    chat = load(folder, history_tokens=budget)
    turns = []
    for i in range(12):
        turns += [Message("user", f"Question {i}: tell me a short story."), Message("assistant", f"Answer {i}.")]
    dropped = chat.restore(turns)
    assert dropped > 0 and dropped % 2 == 0
    assert chat.history == turns[dropped:]
    assert len(chat.render(chat.history, add_generation_prompt=False)) <= budget
    assert chat.restore(turns[:2]) == 0 and chat.restore([]) == 0


def test_model_without_a_tool_format_gets_no_tools(tmp_path: Path) -> None:
    """A chat template without tool syntax (the plain Gemma 3 one) gets no tools offered: set_tools says so."""
    chat = Chat.load(LlmConfig(model=str(make_tiny(tmp_path, "gemma3", seed=1))))
    assert chat.tool_format is None and chat.can_call_tools is False
    assert chat.set_tools([TIME_TOOL]) is False
    assert chat.set_tools([]) is True


def test_history_overflow_drops_whole_tool_turns(family_dir: tuple[str, Path]) -> None:
    """When turns with tool rounds overflow llm.history_tokens, whole turns (call, result and answer with their
    question) are dropped from the front, and the answer still equals a re-prefill of what is kept."""
    _, folder = family_dir
    budget = len(load(folder).render([], add_generation_prompt=False)) + 300
    chat = load(folder, history_tokens=budget, max_tokens=8)
    turns = []
    for i in range(4):
        call = ToolCall("get_time", {"zone": "Europe/Paris"}, id=f"c{i}")
        turns += [
            Message("user", f"Question {i}: what time is it in Paris?"),
            Message("assistant", "", tool_calls=(call,)),
            Message("tool", RESULT, tool_call_id=call.id, name="get_time"),
            Message("assistant", f"It is five past two, {i}."),
        ]
    chat._history = History(turns)  # a stored history as is (restore() would trim it): the overflow is in respond()
    "".join(chat.respond("And in Tokyo?"))
    dropped = chat.stats.dropped_messages
    assert dropped > 0 and dropped % 4 == 0
    assert chat.history[0].role == "user" and chat.history == [*turns[dropped:], Message("user", "And in Tokyo?")]
    assert chat.answer_tokens == reference(chat, chat.history, chat.cfg.max_tokens)


# The arguments each family's model writes after the opening of a forced get_time call, and the call's end.
AFTER_OPENING = {
    "gemma4-tools": 'zone:<|"|>Europe/Paris<|"|>}<tool_call|><|tool_response>',
    "qwen3": '{"zone": "Europe/Paris"}}\n</tool_call><|im_end|>',
}


def test_tool_choice_none_required_and_a_named_function(family_dir: tuple[str, Path]) -> None:
    """tool_choice "none" leaves the tools out of the prompt; "required" makes the answer begin with the model's
    call marker; a named function makes it begin with the opening of that call in the model's own syntax, so the
    arguments the model writes after it complete a call the detector parses."""
    family, folder = family_dir
    chat = load(folder)
    fmt = chat.tool_format
    assert fmt is not None
    assert chat.set_tools([TIME_TOOL], calls.ToolChoice("none"))
    assert "get_time" not in chat.tokenizer.decode(chat.render([Message("user", "hi")], add_generation_prompt=True))
    chat.set_tools([TIME_TOOL], calls.ToolChoice("required"))
    assert next(d for d in chat.respond("What time is it?") if d) == fmt.start  # "" while the prompt prefills
    chat.discard_answer()
    chat.set_tools([TIME_TOOL], calls.ToolChoice("function", "get_time"))
    force(chat, AFTER_OPENING[family])
    gen = chat.respond("What time is it?")
    assert next(d for d in gen if d) == fmt.named.replace("NAME", "get_time")
    detector = CallDetector(fmt)
    segments = detector.feed(fmt.named.replace("NAME", "get_time"))
    for delta in gen:
        segments += detector.feed(delta)
        if detector.calls_ready:
            break
    (call,) = [s for s in segments if isinstance(s, ToolCall)]
    assert (call.name, dict(call.arguments), call.error) == ("get_time", {"zone": "Europe/Paris"}, "")
