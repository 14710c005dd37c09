"""The pure tool-call formats and the streaming detector: every format parsed whole and one character at a
time, markers split across deltas, malformed and cut-off calls, and speech that never contains call text."""

from __future__ import annotations

import pytest

from assistant.tools import calls
from assistant.tools.calls import CallDetector, Speech, ToolCall, detect_format

CASES = [
    (calls.GEMMA4, '<|tool_call>call:set_reminder{in_minutes:10,text:<|"|>call Anna, {now}<|"|>}<tool_call|>',
     [("set_reminder", {"in_minutes": 10, "text": "call Anna, {now}"})]),
    (calls.GEMMA4, '<|tool_call>call:f{a:[1,2.5,<|"|>x<|"|>],b:{c:true,d:null},e:"json"}<tool_call|>'
     '<|tool_call>call:g{}<tool_call|>',
     [("f", {"a": [1, 2.5, "x"], "b": {"c": True, "d": None}, "e": "json"}), ("g", {})]),
    (calls.HERMES, '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>\n'
     '<tool_call>{"name": "list_reminders", "arguments": "{}"}</tool_call>',
     [("get_time", {"zone": "UTC"}), ("list_reminders", {})]),
    (calls.QWEN_XML, "<tool_call>\n<function=set_reminder>\n<parameter=text>\ncall Anna\n</parameter>\n"
     "<parameter=in_minutes>\n10\n</parameter>\n</function>\n</tool_call>",
     [("set_reminder", {"text": "call Anna", "in_minutes": 10})]),
    (calls.MISTRAL, '[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "UTC"}}]',
     [("get_time", {"zone": "UTC"})]),
    (calls.MISTRAL, '[TOOL_CALLS]get_time[ARGS]{"zone": "UTC"}cancel_reminder[ARGS]{"id": 3}',
     [("get_time", {"zone": "UTC"}), ("cancel_reminder", {"id": 3})]),
    (calls.PYTHONIC, '<|tool_call_start|>[get_time(zone="UTC"), cancel_reminder(id=3, all=false)]<|tool_call_end|>',
     [("get_time", {"zone": "UTC"}), ("cancel_reminder", {"id": 3, "all": False})]),
]  # fmt: skip


def run(detector: CallDetector, pieces: list[str]) -> list[Speech | ToolCall]:
    out: list[Speech | ToolCall] = []
    for piece in pieces:
        out += detector.feed(piece)
    return out + detector.finish()


@pytest.mark.parametrize("fmt, text, expected", CASES, ids=[f"{c[0].name}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("chunking", ["whole", "chars"])
def test_calls_are_parsed_in_every_format_whole_or_streamed(
    fmt: calls.CallFormat, text: str, expected: list[tuple[str, dict]], chunking: str
) -> None:
    """Speech before a call is spoken; the calls come out parsed whether the text arrives at once or a character
    at a time, and no marker or argument text is ever in the speech."""
    pieces = ["Sure. " + text] if chunking == "whole" else list("Sure. " + text)
    out = run(CallDetector(fmt), pieces)
    speech = "".join(s.text for s in out if isinstance(s, Speech))
    got = [(c.name, dict(c.arguments), c.error) for c in out if isinstance(c, ToolCall)]
    assert speech == "Sure. "
    assert got == [(name, args, "") for name, args in expected]


def test_held_back_text_that_was_not_a_marker_is_spoken() -> None:
    """A '<' that might start a marker is held, then spoken once the text shows it was not one."""
    detector = CallDetector(calls.GEMMA4)
    assert detector.feed("3 <") == [Speech("3 ")]
    assert detector.feed("| 4") == [Speech("<| 4")]
    assert detector.finish() == []
    assert detector.speech == "3 <| 4"


def test_calls_ready_once_the_model_moves_past_the_calls() -> None:
    """Whitespace after a call may precede another call; other text means the calls are complete, and it is
    never spoken (the model should be waiting for the results)."""
    detector = CallDetector(calls.GEMMA4)
    out = detector.feed("<|tool_call>call:get_time{}<tool_call|>\n")
    assert [c.name for c in out if isinstance(c, ToolCall)] == ["get_time"] and not detector.calls_ready
    assert detector.feed("<|tool_resp") == [] and detector.calls_ready
    assert detector.finish() == []
    assert detector.speech == ""


@pytest.mark.parametrize(
    "text, error",
    [
        ("<|tool_call>call get_time()<tool_call|>", "could not be parsed"),
        ('<|tool_call>call:get_time{zone:<|"|>UTC}<tool_call|>', "could not be parsed"),
        ("<|tool_call>call:get_time{zone:", "cut off"),
    ],
)
def test_malformed_and_cut_off_calls_carry_an_error(text: str, error: str) -> None:
    """A call that cannot be parsed, or that the stream cut off, comes out as a call with an error naming the
    right syntax, never as speech."""
    out = run(CallDetector(calls.GEMMA4), list(text))
    assert len(out) == 1 and isinstance(out[0], ToolCall)
    assert error in out[0].error and calls.GEMMA4.example in out[0].error
    assert out[0].raw.startswith("<|tool_call>")


def test_json_errors_and_formats_without_tools() -> None:
    """Broken JSON in a Hermes call is an error call; a model without a tool format speaks everything."""
    (bad,) = run(CallDetector(calls.HERMES), ['<tool_call>{"name": "x", "arguments": [1]}</tool_call>'])
    assert isinstance(bad, ToolCall) and "JSON object" in bad.error
    out = run(CallDetector(None), ["<tool_call>", "{}</tool_call>"])
    assert out == [Speech("<tool_call>"), Speech("{}</tool_call>")]


def test_detect_format_from_the_chat_template() -> None:
    """The format comes from the markers the template renders for past calls; none without them."""
    assert detect_format("{{ '<|tool_call>call:' + name }}{{ '<tool_call|>' }}") is calls.GEMMA4
    assert detect_format("{{ '<tool_call>\\n' }}{{ tool_call.name }}{{ '</tool_call>' }}") is calls.HERMES
    assert detect_format("{{ '<tool_call>\\n<function=' + name + '>' }}{{ '</tool_call>' }}") is calls.QWEN_XML
    assert detect_format("[TOOL_CALLS]{{ calls }}") is calls.MISTRAL
    assert detect_format("{{ messages }}", vocab={"<|tool_call_start|>": 1, "<|tool_call_end|>": 2}) is calls.PYTHONIC
    assert detect_format("{{ messages }}") is None
    assert detect_format(None) is None


def test_call_ids_are_unique_and_render_for_templates() -> None:
    """Each call gets its own id; template_dict() is the OpenAI-style shape chat templates read."""
    a, b = ToolCall("f", {"x": 1}), ToolCall("f", {"x": 1})
    assert a.id != b.id and a.id.startswith("call_")
    assert a.template_dict() == {"id": a.id, "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
