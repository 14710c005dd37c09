"""History: the one record of a conversation that Chat and RemoteChat own and change only through its operations."""

from __future__ import annotations

from assistant.llm import History, Message
from assistant.tools.calls import ToolCall


def turn(i: int) -> list[Message]:
    return [Message("user", f"q{i}"), Message("assistant", f"a{i}")]


def test_answers_tool_rounds_and_the_newest_turn() -> None:
    """An answer is recorded whole or as heard (interrupted), a tool round adds the call message and one result
    each, and the newest turn is the last user message with everything after it."""
    h = History(turn(0))
    h.add_user("what time is it?")
    call = ToolCall("get_time", {}, id="c1")
    h.add_tool_round(" Let me look. ", [(call, "14:05")], said_apart=True)
    h.add_answer("It is five past two.", "It is five", complete=True)
    assert h.newest_turn() == [
        Message("user", "what time is it?"),
        Message("assistant", "Let me look."),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "14:05", tool_call_id="c1", name="get_time"),
        Message("assistant", "It is five", interrupted=True),
    ]
    h.drop_newest_turn()
    assert h.messages() == turn(0)
    h.add_answer("a1", None, complete=False)  # cut off by max_tokens or a cancel: not heard whole
    assert h.messages()[-1] == Message("assistant", "a1", interrupted=True)


def test_revise_and_trim_keep_roles_alternating() -> None:
    """revise() cuts the newest matching answer to what was heard; dropping the oldest turn keeps the newest
    unless asked, and trim() drops whole turns from the front until the condition fails."""
    h = History([*turn(0), *turn(1), *turn(2)])
    assert h.revise("a1", "a") and h.messages()[3] == Message("assistant", "a", interrupted=True)
    assert not h.revise("never said", "x")
    assert h.drop_oldest_turn() == 2 and h.messages()[0] == Message("user", "q1")
    assert h.trim(lambda m: len(m) > 2) == 2 and h.messages() == turn(2)
    assert h.drop_oldest_turn() == 0 and len(h) == 2  # the newest turn stays
    assert h.trim(lambda m: True) == 2 and len(h) == 0


def test_forget_joins_neighbours_so_roles_alternate() -> None:
    """forget() drops the newest message of that role and text (a truncated answer matches the text it was cut
    from), joins the neighbours it leaves side by side, and reports False when there is no such message."""
    h = History([*turn(0), Message("user", "q1"), Message("assistant", "a1 heard", interrupted=True), *turn(2)])
    assert not h.forget("user", "never said") and len(h) == 6
    assert h.forget("assistant", "a1 heard and the rest")
    assert h.messages() == [*turn(0), Message("user", "q1\nq2"), Message("assistant", "a2")]
    assert h.forget("user", "q0")
    assert h.messages() == [Message("assistant", "a0"), Message("user", "q1\nq2"), Message("assistant", "a2")]
