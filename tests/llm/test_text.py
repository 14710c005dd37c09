"""Speakable text and the clause chunker on tricky input, whole and streamed in arbitrary deltas."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.text import ClauseChunker, SpeakableStream, speakable

TRICKY = [
    "**Sure!** Here's a list:\n\n1. Eggs\n2. Milk & bread\n- Apples\n\nSee https://example.com/x?y=1 for more.",
    "<think>The user wants pi.\nLet me think.</think>Pi is about 3.14, e.g. a bit more than 3. 😀👍🏽 Done.",
    "```python\nprint('hi')\n```\nThat prints hi. Use `print()`.",
    "# Heading\nSome *emphasis* and _underscored_ snake_case_name, 50% off, 2 * 3 = 6.",
    "Check [the docs](https://docs.python.org/3/) -> they help. Dr. Smith lives on Main St. in the U.S. today.",
    "今日はいい天気ですね。散歩に行きましょう！「はい」と彼は言った。",
    "你好，今天天气很好。我们去公园散步吧？好的！",
    "<|channel>thought\nthinking hard<channel|>The answer is 42.<end_of_turn>",
    "It costs $4.50, i.e. less than 5 dollars; it's ~3 km away & open 24/7 (see www.shop.example).",
]


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Bold** and *italic* and ~~gone~~ text", "Bold and italic and gone text"),
        ("1. First\n2. Second\n- third item\n* fourth", "First. Second. third item. fourth"),
        ("## Title\n> quoted line\n---\nbody", "Title. quoted line. body"),
        ("Pi is 3.14159 and e is 2.718.", "Pi is 3.14159 and e is 2.718."),
        (
            "Fruit, e.g. apples, i.e. red ones, etc. are fine",
            "Fruit, for example apples, that is red ones, et cetera are fine",
        ),
        ("Visit https://example.com/a?b=1 or www.example.org now", "Visit or now"),
        ("Read [the guide](https://x.org/guide) first", "Read the guide first"),
        ("Great job 🎉🎉 👍🏽 see you ❤️", "Great job see you"),
        (
            "Salt & pepper, 20% more, 25°C, #1 -> done",
            "Salt and pepper, 20 percent more, 25 degrees Celsius, number 1 to done",
        ),
        ("Use `pip install x` then:\n```bash\nrm -rf /\n```\nDone.", "Use pip install x then: Done."),
        ("<think>secret plan</think>Hello!", "Hello!"),
        ("<think>never closed", ""),
        ("snake_case_name stays, 2 * 3 = 6", "snake_case_name stays, 2 times 3 equals 6"),
        ("你好，世界！😀", "你好，世界！"),
        ("第一行\n第二行", "第一行。 第二行"),
        ("Hello<end_of_turn>", "Hello"),
    ],
)
def test_speakable_examples(raw: str, spoken: str) -> None:
    """Markdown, code, URLs, emoji, think blocks and symbols become what a person would say."""
    assert speakable(raw) == spoken


def stream_all(text: str, cuts: list[int]) -> str:
    stream = SpeakableStream()
    out, last = [], 0
    for c in sorted(set(cuts)):
        out.append(stream.push(text[last:c]))
        last = c
    out.append(stream.push(text[last:]))
    out.append(stream.flush())
    return "".join(out).strip()


def cuts_for(text: str) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(text)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), index=st.integers(0, len(TRICKY) - 1))
def test_stream_equals_whole(data: st.DataObject, index: int) -> None:
    """Streaming the text in any deltas gives exactly speakable() of the whole text."""
    text = TRICKY[index]
    assert stream_all(text, data.draw(cuts_for(text))) == speakable(text)


def test_stream_releases_complete_words_early() -> None:
    """A word is released as soon as whitespace follows it; a think block is held until it closes."""
    s = SpeakableStream()
    assert s.push("Hello wor") == "Hello "
    assert s.push("ld <thi") == "world "
    assert s.push("nk>hidden</think> ok") == ""
    assert s.push(" ") == "ok "
    assert s.flush() == ""


def chunk(text: str, cuts: list[int], **kw: object) -> list[str]:
    ch = ClauseChunker(**kw)  # type: ignore[arg-type]
    out, last = [], 0
    for c in sorted(set(cuts)):
        out += ch.push(text[last:c])
        last = c
    out += ch.push(text[last:])
    return out + ch.flush()


def test_first_fragment_is_short_then_sentences() -> None:
    """The first piece ends at the first punctuation or after four words; then whole sentences follow."""
    text = "Well, the weather today is sunny. It will rain tomorrow, so take an umbrella. Bye!"
    assert chunk(text, list(range(len(text)))) == [
        "Well,",
        "the weather today is sunny.",
        "It will rain tomorrow, so take an umbrella.",
        "Bye!",
    ]
    text = "The weather today is sunny and warm. Enjoy it."
    assert chunk(text, [5, 9, 17])[0] == "The weather today is"


def test_chunker_does_not_split_decimals_or_abbreviations() -> None:
    """Decimals, e.g., Dr., St., initials and U.S. never end a piece."""
    text = "Hi. Pi is 3.14 and Dr. Smith of Main St. met J. R. R. Tolkien in the U.S. last year. Fine."
    assert chunk(text, list(range(0, len(text), 2))) == [
        "Hi.",
        "Pi is 3.14 and Dr. Smith of Main St. met J. R. R. Tolkien in the U.S. last year.",
        "Fine.",
    ]


def test_chunker_cjk_punctuation() -> None:
    """Chinese and Japanese sentence marks end pieces without spaces; a closing quote stays with its sentence."""
    assert chunk("你好，今天天气很好。我们去公园散步吧？好的！", [2, 5, 11]) == [
        "你好，",
        "今天天气很好。",
        "我们去公园散步吧？",
        "好的！",
    ]
    assert chunk("「はい」と言った。「行こう。」散歩！", [3, 9, 13]) == ["「はい」と言った。", "「行こう。」", "散歩！"]


def test_long_sentence_is_cut_near_max_chars() -> None:
    """A sentence longer than max_chars is cut at its last clause end (else a word end) before the limit."""
    text = "Intro. " + "one two three, " * 10 + "end."
    pieces = chunk(text, [], max_chars=60)
    assert all(len(p) <= 60 for p in pieces)
    assert " ".join(pieces) == speakable(text)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), index=st.integers(0, len(TRICKY) - 1))
def test_chunks_join_to_speakable_text(data: st.DataObject, index: int) -> None:
    """Whatever the deltas, the pieces put back together are exactly the speakable text (spaces between
    western pieces, none needed in Chinese and Japanese)."""
    text = TRICKY[index]
    pieces = chunk(text, data.draw(cuts_for(text)))
    assert all(p == p.strip() and p for p in pieces)
    spoken = speakable(text)
    assert re.sub(r"\s+", "", "".join(pieces)) == re.sub(r"\s+", "", spoken)
    if not re.search(r"[\u3040-\u9fff]", text):
        assert " ".join(pieces) == spoken


def test_stream_mode_passes_words_through() -> None:
    """mode="stream" hands on speakable text word by word, for the TTS incremental-text mode."""
    ch = ClauseChunker(mode="stream")
    assert ch.push("**Hi** the") == ["Hi "]
    assert ch.push("re, friend") == ["there, "]
    assert ch.flush() == ["friend"]
    with pytest.raises(ValueError, match="mode"):
        ClauseChunker(mode="words")  # type: ignore[arg-type]
