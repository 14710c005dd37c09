"""The wake-phrase matcher and the gate that decides which hands-free turns are answered."""

from __future__ import annotations

import pytest

from assistant.wake import Attention, Wake, WakeGate, match_wake


@pytest.mark.parametrize(
    ("text", "rest"),
    [
        ("hey nova what time is it", "what time is it"),
        ("Hey, Nova! What time is it?", "What time is it?"),
        ("a nova, what time is it", "what time is it"),
        ("Hay Nova. Set a timer.", "Set a timer."),
        ("Nova, set a timer", "set a timer"),
        ("heynova set a timer", "set a timer"),
        ("hey no va set a timer", "set a timer"),
        ("Hey Novah, lights off", "lights off"),
        ("okay nova lights off", "lights off"),
        ("HEY NOVA", ""),
    ],
)
def test_phrase_variants_are_found_and_stripped(text: str, rest: str) -> None:
    """What ASR makes of "hey nova" (punctuation, case, misheard or dropped greeting, split or fused name) matches."""
    m = match_wake("hey nova", text)
    assert m.status is Wake.PRESENT
    assert m.text == rest


@pytest.mark.parametrize(
    "text",
    [
        "what time is it",
        "hey what time is it",
        "I told Nova about it",  # the name, but not at the start
        "the news at nine over",
        "now turn it off",
        "hey now",
        "",
    ],
)
def test_turns_without_the_phrase_do_not_match(text: str) -> None:
    """Ordinary speech, the name mid-sentence and near-miss words are ABSENT in a final transcript."""
    m = match_wake("hey nova", text)
    assert m.status is Wake.ABSENT and m.text == text


def test_streaming_partials_wait_then_decide() -> None:
    """A partial that may still become the phrase is PENDING; once it cannot, ABSENT; once said, PRESENT."""
    partials = ["", "hey", "hey no", "hey nova", "hey nova what"]
    assert [match_wake("hey nova", p, final=False).status for p in partials] == [
        Wake.PENDING,
        Wake.PENDING,
        Wake.PENDING,
        Wake.PRESENT,
        Wake.PRESENT,
    ]
    assert match_wake("hey nova", "what time", final=False).status is Wake.ABSENT
    assert match_wake("hey nova", "hey", final=True).status is Wake.ABSENT


def test_empty_phrase_answers_everything() -> None:
    """With no phrase configured every turn is answered unchanged, and the assistant is always engaged."""
    gate = WakeGate("", 8.0)
    assert not gate.active
    d = gate.decide("what time is it", 0.0, "hands_free")
    assert d.answer and d.text == "what time is it" and d.reason == "no_phrase"
    assert gate.attention(100.0) is Attention.ENGAGED


def test_gate_follow_up_window_and_bypass() -> None:
    """Unaddressed turns are dropped, the phrase is answered, a follow-up only inside the window; PTT bypasses."""
    gate = WakeGate("hey nova", follow_up_s=8.0)
    assert gate.attention(0.0) is Attention.NAME
    for i in range(10):
        assert not gate.decide(f"sentence number {i} on the TV", float(i), "hands_free").answer
    d = gate.decide("Hey Nova, what time is it?", 20.0, "hands_free")
    assert d.answer and d.text == "what time is it?" and d.reason == "phrase"
    gate.replying()
    assert gate.attention(25.0) is Attention.ENGAGED
    gate.stopped(30.0)
    follow = gate.decide("and in Paris?", 37.0, "hands_free")
    assert follow.answer and follow.reason == "follow_up"
    gate.replying()
    gate.stopped(40.0)
    assert gate.attention(48.5) is Attention.NAME
    late = gate.decide("and in Berlin?", 48.5, "hands_free")
    assert not late.answer and late.reason == "not_addressed"
    for source in ("push_to_talk", "client"):
        bypass = gate.decide("and in Rome?", 100.0, source)  # type: ignore[arg-type]
        assert bypass.answer and bypass.reason == "bypass"
    assert gate.decide("hey nova and in Rome?", 100.0, "push_to_talk").text == "and in Rome?"


def test_name_alone_opens_the_window() -> None:
    """ "Hey Nova." alone is not answered, but what the user says next inside the window is."""
    gate = WakeGate("hey nova", follow_up_s=8.0)
    alone = gate.decide("Hey Nova.", 10.0, "hands_free")
    assert not alone.answer and alone.reason == "phrase"
    assert gate.attention(12.0) is Attention.ENGAGED
    assert gate.decide("what time is it", 13.0, "hands_free").answer


def test_partial_status_through_the_gate() -> None:
    """The gate reports PENDING/ABSENT/PRESENT for partials, so speculative work can wait for the name."""
    gate = WakeGate("hey nova", 8.0)
    assert gate.partial("hey") is Wake.PENDING
    assert gate.partial("turn it off") is Wake.ABSENT
    assert gate.partial("hey nova turn") is Wake.PRESENT


def test_attention_is_announced_once_per_change_and_a_retune_is_announced() -> None:
    """`announce` gives each change of attention once (the window opening and closing), and turning the phrase on
    announces that the assistant now listens for its name."""
    gate = WakeGate("", 8.0)
    assert gate.announce(0.0) is None and gate.follow_up_ends(0.0) is None  # no phrase: always engaged, silent
    gate.retune("hey nova", 8.0)
    assert gate.announce(1.0) is Attention.NAME and gate.announce(2.0) is None
    gate.replying()
    assert gate.announce(3.0) is Attention.ENGAGED and gate.follow_up_ends(3.0) is None  # answering: no end yet
    gate.stopped(4.0)
    assert gate.follow_up_ends(5.0) == 12.0 and gate.announce(11.9) is None
    assert gate.announce(12.1) is Attention.NAME and gate.follow_up_ends(12.1) is None


def test_speculation_waits_for_the_name_only_outside_the_window() -> None:
    """A hands-free partial that cannot become the phrase is not worth a speculative answer, unless the turn began
    inside the follow-up window or came from push-to-talk."""
    gate = WakeGate("hey nova", 8.0)
    assert not gate.may_speculate("turn it off", 0.0, "hands_free")
    assert gate.may_speculate("hey no", 0.0, "hands_free") and gate.may_speculate("turn it off", 0.0, "push_to_talk")
    gate.stopped(10.0)
    assert gate.may_speculate("turn it off", 17.0, "hands_free") and not gate.may_speculate("off", 19.0, "hands_free")
