"""Pure text shaping for speech: what the TTS should read, and where to cut the answer stream into pieces.

`speakable()` turns a whole answer into plain spoken text. `SpeakableStream` does the same to a stream of deltas,
releasing text as soon as a word is complete (the TTS incremental-text mode reads it). `ClauseChunker` cuts the
filtered stream into a short first fragment, so speech starts early, then sentence-sized pieces.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Literal

# Blocks whose whole content is never spoken: reasoning (Qwen/DeepSeek style, Gemma 4 channels) and code.
SKIPPED_BLOCKS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<reasoning>", "</reasoning>"),
    ("<|channel>", "<channel|>"),
    ("```", "```"),
)

_LINE_MARKER = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|>[ \t]*|[-*+•][ \t]+|\d{1,3}[.)][ \t]+)")
_RULE_LINE = re.compile(r"^[ \t]*([-*_=])\1{2,}[ \t]*$")
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, flags, symbols and pictographs extended
    "\u2300-\u23ff"  # misc technical (watch, hourglass, alarm clock)
    "\u2600-\u27bf"  # misc symbols and dingbats
    "\u2b00-\u2bff"  # arrows and stars
    "\ufe00-\ufe0f\u200d\u20e3"  # variation selectors, zero-width joiner, keycap
    "\U000e0020-\U000e007f"  # tag characters of subdivision flags
    "\u3030\u303d"
    "]+"
)
# (pattern, replacement), applied in order to text that holds whole words (cuts are made at whitespace).
_INLINE: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, flags), r)
    for p, r, flags in (
        (r"!\[[^\]\s]*\]\(\S*?\)", "", 0),  # image without spaces in its alt text
        (r"\]\(\S*?\)", "", 0),  # the target of a markdown link: the link text stays
        (r"(?:https?://|ftp://|www\.)\S+", "", re.IGNORECASE),  # URLs are never read out
        (r"</?\|?[A-Za-z][\w:.-]*\|?>", "", 0),  # special tokens and HTML tags
        (r"\*\*|__|~~|`", "", 0),  # bold, strike-through, inline code
        (r"(?<=\S)\*|\*(?=\S)", "", 0),  # emphasis stars touching a word ("a * b" stays a product)
        (r"(?<!\w)_|_(?!\w)", "", 0),  # emphasis underscores, not the ones inside snake_case
        (r"[\[\]]", "", 0),  # link brackets
        (r"(?<!\S)\*(?!\S)", "times", 0),
        (r"(?<!\S)&(?!\S)", "and", 0),
        (r"(?<!\S)=(?!\S)", "equals", 0),
        (r"(?<=\d) ?%", " percent", 0),
        (r"(?<!\w)e\.g\.(?!\w)", "for example", re.IGNORECASE),
        (r"(?<!\w)i\.e\.(?!\w)", "that is", re.IGNORECASE),
        (r"(?<!\w)etc\.(?!\w)", "et cetera", re.IGNORECASE),
        (r"(?<!\w)vs\.?(?!\w)", "versus", re.IGNORECASE),
        (r"(?<!\S)(?:->|→|=>)(?!\S)", "to", 0),
        (r"(?<=\d) ?°C\b", " degrees Celsius", 0),
        (r"(?<=\d) ?°F\b", " degrees Fahrenheit", 0),
        (r"(?<!\S)~(?=\d)", "about ", 0),
        (r"(?<!\S)#(?=\d)", "number ", 0),
    )
)
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
# Punctuation that already ends a spoken line; a line break after anything else becomes a full stop.
_LINE_END_PUNCT = frozenset(".,;:!?…。！？、，；：")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


class SpeakableStream:
    """A stateful `speakable()` over deltas: `push()` returns the newly speakable text, `flush()` the rest.

    Text is held back only while a word is incomplete or a skipped block (reasoning, code) is open, so the
    concatenated output equals `speakable()` of the concatenated input, up to surrounding whitespace.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._raw = ""
        self._closer: str | None = None  # inside a skipped block until this marker
        self._line_start = True
        self._line_has_text = False
        self._last = ""  # last character emitted ("" at the start)

    def push(self, delta: str) -> str:
        self._raw += delta
        return self._drain(final=False)

    def flush(self) -> str:
        out = self._drain(final=True)
        self._reset()
        return out

    def _drain(self, final: bool) -> str:
        out: list[str] = []
        while self._raw:
            if self._closer is not None:
                end = self._raw.find(self._closer)
                if end < 0:
                    # Keep only what could be the start of the closing marker.
                    self._raw = "" if final else self._raw[-(len(self._closer) - 1) :]
                    break
                self._raw = self._raw[end + len(self._closer) :]
                self._closer = None
                continue
            start, opener, closer = _first_block(self._raw)
            if opener:
                out.append(self._clean(self._raw[:start]))
                self._raw = self._raw[start + len(opener) :]
                self._closer = closer
                continue
            cut = len(self._raw) if final else _last_space(self._raw)
            out.append(self._clean(self._raw[:cut]))
            self._raw = self._raw[cut:]
            break
        return "".join(out)

    def _clean(self, text: str) -> str:
        """Clean `text`, which holds whole words; updates the line state and whitespace across calls."""
        out: list[str] = []
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if i:  # a line break
                if self._line_has_text and self._last and self._last not in _LINE_END_PUNCT:
                    out.append(self._emit("。" if _CJK.match(self._last) else "."))
                out.append(self._emit(" "))
                self._line_start, self._line_has_text = True, False
            if not line:
                continue
            if self._line_start:
                if _RULE_LINE.match(line) and i < len(lines) - 1:
                    continue
                stripped = line.lstrip(" \t")
                if not stripped:
                    continue
                line = _LINE_MARKER.sub("", line, count=1)
                self._line_start = False
            line = _clean_inline(line)
            if line.strip():
                self._line_has_text = True
            out.append(self._emit(line))
        return "".join(out)

    def _emit(self, text: str) -> str:
        if text.startswith(" ") and (self._last in ("", " ")):
            text = text.lstrip(" ")
        if text:
            self._last = text[-1]
        return text


def _clean_inline(text: str) -> str:
    text = _EMOJI.sub("", text)
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return _SPACES.sub(" ", text)


def _first_block(text: str) -> tuple[int, str, str]:
    """The earliest opener of a skipped block in `text`: (index, opener, closer), or (-1, "", "")."""
    best = (-1, "", "")
    for opener, closer in SKIPPED_BLOCKS:
        i = text.find(opener)
        if i >= 0 and (best[0] < 0 or i < best[0]):
            best = (i, opener, closer)
    return best


def _last_space(text: str) -> int:
    """The cut after the last whitespace, so the (maybe incomplete) last word waits for more text."""
    for i in range(len(text) - 1, -1, -1):
        if text[i].isspace():
            return i + 1
    return 0


def speakable(text: str) -> str:
    """`text` as it should be spoken: no markdown, code, URLs, emoji or reasoning; "&" read as "and"."""
    stream = SpeakableStream()
    return (stream.push(text) + stream.flush()).strip()


# ---- chunking ----------------------------------------------------------------------------------------------

_SENTENCE_END = frozenset(".!?…")
_CJK_SENTENCE_END = frozenset("。！？")
_CLAUSE_END = frozenset(",;:—–")
_CJK_CLAUSE_END = frozenset("，、；：")
_CLOSERS = frozenset("\"'”’)]」』）】")
# Words whose final period does not end a sentence (lower case, without the period).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc inc ltd co corp no nos approx ca fig figs dept est mt ave blvd gen col "
    "sgt lt capt rev hon jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun".split()
)


@dataclass(frozen=True)
class _Cut:
    end: int  # the piece is text[:end]
    sentence: bool  # a sentence end (else a clause end or a forced cut)


def _find_cut(text: str, clause_ok: bool, final: bool) -> _Cut | None:
    """The first boundary in `text`: a sentence end, or a clause end when `clause_ok`."""
    n = len(text)
    for i, ch in enumerate(text):
        if ch in _CJK_SENTENCE_END or (clause_ok and ch in _CJK_CLAUSE_END):
            end = i + 1
            while end < n and text[end] in _CLOSERS:
                end += 1
            if end == n and not final:
                return None  # a closing quote may follow
            return _Cut(end, ch in _CJK_SENTENCE_END)
        western_sentence = ch in _SENTENCE_END
        if not (western_sentence or (clause_ok and ch in _CLAUSE_END)):
            continue
        end = i + 1
        while end < n and (text[end] in _CLOSERS or text[end] in _SENTENCE_END):
            end += 1
        if end == n:
            if final:
                return _Cut(end, western_sentence)
            return None  # what follows decides (a decimal, "..." or more punctuation)
        if not text[end].isspace():
            continue  # 3.14, e.g.x, 1,000
        if ch == "." and _is_abbreviation(text[: i + 1]):
            continue
        return _Cut(end, western_sentence)
    return None


def _is_abbreviation(text: str) -> bool:
    """Whether the period ending `text` ends an abbreviation or an initial rather than a sentence."""
    word = text.rsplit(None, 1)[-1].rstrip(".").lower().lstrip("\"'(“‘")
    if not word:
        return False
    if len(word) == 1 and word.isalpha():
        return True  # an initial: J. R. R. Tolkien
    if "." in word and all(len(p) <= 2 for p in word.split(".")):
        return True  # U.S., a.m.
    return word in ABBREVIATIONS


class ClauseChunker:
    """Cut the answer's deltas into pieces for the TTS.

    mode "clauses": first a short fragment (up to the first punctuation, or `first_words` words) so speech starts
    early, then whole sentences (long ones cut at a clause or word boundary near `max_chars`).
    mode "stream": the speakable text as soon as each word is complete, for the TTS incremental-text mode.
    """

    def __init__(self, mode: Literal["clauses", "stream"] = "clauses", first_words: int = 4, max_chars: int = 200):
        if mode not in ("clauses", "stream"):
            raise ValueError(f"ClauseChunker mode must be 'clauses' or 'stream', got {mode!r}")
        self.mode = mode
        self.first_words = first_words
        self.max_chars = max_chars
        self._stream = SpeakableStream()
        self._buf = ""
        self._pieces = 0

    def push(self, delta: str) -> list[str]:
        """Pieces completed by `delta` (often none)."""
        text = self._stream.push(delta)
        if self.mode == "stream":
            return [text] if text else []
        self._buf += text
        return self._cut(final=False)

    def flush(self) -> list[str]:
        """The remaining pieces at the end of the answer; the chunker is then ready for the next one."""
        text = self._stream.flush()
        if self.mode == "stream":
            self._pieces = 0
            return [text.rstrip()] if text.strip() else []
        self._buf += text
        out = self._cut(final=True)
        rest = self._buf.strip()
        if rest:
            out.append(rest)
        self._buf, self._pieces = "", 0
        return out

    def _cut(self, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            self._buf = self._buf.lstrip()
            piece = self._next_piece(final)
            if piece is None:
                return out
            piece = piece.strip()
            if piece:
                out.append(piece)
                self._pieces += 1

    def _next_piece(self, final: bool) -> str | None:
        buf = self._buf
        if not buf:
            return None
        first = self._pieces == 0
        cut = _find_cut(buf, clause_ok=first, final=final)
        ends = [cut.end] if cut is not None and cut.end <= self.max_chars else []
        if first:  # or after a few words, whichever comes first
            words = list(itertools.islice(re.finditer(r"\S+\s", buf), self.first_words))
            if len(words) == self.first_words:
                ends.append(words[-1].end())
        if ends:
            end = min(ends)
            self._buf = buf[end:]
            return buf[:end]
        if len(buf) > self.max_chars:
            return self._force_cut(buf)
        return None

    def _force_cut(self, buf: str) -> str:
        """A long sentence: cut at its last clause end (else word end, else anywhere) before `max_chars`."""
        end = _forced_end(buf, self.max_chars)
        self._buf = buf[end:]
        return buf[:end]


def _forced_end(buf: str, max_chars: int) -> int:
    """Where to cut a sentence longer than `max_chars`: its last clause end, else word end, else anywhere."""
    head = buf[:max_chars]
    clause = max((head.rfind(c + " ") for c in _CLAUSE_END), default=-1)
    cjk = max((head.rfind(c) for c in _CJK_CLAUSE_END), default=-1)
    end = max(clause + 1, cjk + 1)
    if end <= 0:
        end = _last_space(head) or max_chars
    return end


def sentences(text: str, max_chars: int = 300) -> list[str]:
    """`text` made speakable and cut into whole sentences; one longer than `max_chars` is cut at a clause or word
    end before it. An empty list when nothing speakable is left (emoji, markup or symbols only)."""
    buf, out = speakable(text), []
    while buf := buf.lstrip():
        cut = _find_cut(buf, clause_ok=False, final=True)
        if cut is not None and cut.end <= max_chars:
            end = cut.end
        else:
            end = len(buf) if len(buf) <= max_chars else _forced_end(buf, max_chars)
        if piece := buf[:end].strip():
            out.append(piece)
        buf = buf[end:]
    return out
