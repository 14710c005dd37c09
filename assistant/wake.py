"""Addressed by name: a pure wake-phrase matcher over transcripts, and the gate that decides which turns count.

`match_wake(phrase, text, final)` finds the phrase at the start of a (partial or final) transcript, tolerant of
what ASR makes of it: punctuation and case ("Hey, Nova!"), a misheard greeting ("a nova", "hay nova"), a dropped
greeting ("Nova, ..."), a fused or split name ("heynova", "no va") and small misspellings ("hey novah"). A partial
transcript that could still become the phrase ("hey", "hey no") is `pending`, not `absent`.

`WakeGate` is the policy of the one turn core: a hands-free turn is answered (and kept in the history) only when
it begins with the phrase or starts inside the follow-up window after the assistant last spoke; push-to-talk and
WebSocket/API turns bypass it. Time is an input (monotonic seconds), never read here.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Literal

# Similarity (1 - edit distance / longer length, on simplified spellings) at which a word counts as the name:
# 0.75 takes one wrong letter in four ("novah", "nowa"), not a different word ("over", "now").
NAME_SIMILARITY = 0.75
# Words ASR writes for a short unstressed greeting before a name ("hey" heard as "a", "hay", "hi", "okay").
GREETING_VARIANTS = frozenset(
    {"hey", "hay", "hei", "he", "hi", "a", "ay", "eh", "ey", "ei", "okay", "ok", "oh", "o", "yo", "hej", "hallo"}
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")  # letters/digits, with an inner apostrophe ("what's")


class Wake(enum.Enum):
    PRESENT = "present"  # the transcript begins with the phrase
    ABSENT = "absent"  # it does not, and (partial) cannot become so with more words
    PENDING = "pending"  # a partial transcript that may still turn into the phrase


@dataclass(frozen=True)
class WakeMatch:
    status: Wake
    text: str  # the transcript without the phrase (and the punctuation after it) when PRESENT, else unchanged


def _simplify(word: str) -> str:
    """A spelling that ASR variants share: lower case, ph->f, ck->k, y->i, doubled letters collapsed."""
    w = word.lower().replace("ph", "f").replace("ck", "k").replace("y", "i")
    return re.sub(r"(.)\1+", r"\1", w)


def _distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def similarity(a: str, b: str) -> float:
    """1.0 for the same simplified spelling, down to 0.0 for nothing in common."""
    a, b = _simplify(a), _simplify(b)
    if not a or not b:
        return 0.0
    return 1.0 - _distance(a, b) / max(len(a), len(b))


def _lead_like(word: str, lead: list[str]) -> bool:
    """Whether `word` can be (what ASR made of) one of the phrase's words before the name."""
    w = word.lower()
    return w in GREETING_VARIANTS or any(similarity(w, x) >= NAME_SIMILARITY for x in lead)


def match_wake(phrase: str, text: str, final: bool = True) -> WakeMatch:
    """Whether `text` begins with `phrase` (see the module docstring for the tolerance); an empty phrase is PRESENT.

    With `final=False` (a streaming partial), a beginning that may still become the phrase is PENDING.
    """
    want = [w.lower() for w in _WORD.findall(phrase)]
    if not want:
        return WakeMatch(Wake.PRESENT, text)
    name, lead = want[-1], want[:-1]
    spans = list(_WORD.finditer(text))
    words = [m.group().lower() for m in spans]
    # The name may come after up to len(lead) + 1 lead-like words (one extra for a split greeting: "o k nova").
    for j in range(min(len(words), len(lead) + 2)):
        if not all(_lead_like(w, lead) for w in words[:j]):
            break
        for width in (1, 2):  # the name as one word, or split in two ("no va")
            if j + width > len(words):
                continue
            heard = "".join(words[j : j + width])
            fused = "".join(words[: j + width])  # "heynova": greeting and name in one word
            if similarity(heard, name) >= NAME_SIMILARITY or (
                width == 1 and j == 0 and len(lead) > 0 and similarity(fused, "".join(want)) >= NAME_SIMILARITY
            ):
                rest = text[spans[j + width - 1].end() :]
                return WakeMatch(Wake.PRESENT, re.sub(r"^[\s\W_]+", "", rest))
    if not final and _could_become(words, name, lead):
        return WakeMatch(Wake.PENDING, text)
    return WakeMatch(Wake.ABSENT, text)


def _could_become(words: list[str], name: str, lead: list[str]) -> bool:
    """A partial whose words so far are greeting-like, or end in the start of the name ("hey no")."""
    if len(words) > len(lead) + 2:
        return False
    if all(_lead_like(w, lead) for w in words):
        return True
    *before, last = words
    return all(_lead_like(w, lead) for w in before) and _simplify(name).startswith(_simplify(last)[:3])


# ---- the policy ------------------------------------------------------------------------------------------------


class Attention(enum.Enum):
    """What the assistant is listening for, for the events clients see."""

    NAME = "listening_for_name"  # hands-free turns need the phrase
    ENGAGED = "engaged"  # in a conversation: turns without the phrase are answered too


TurnSource = Literal["hands_free", "push_to_talk", "client"]


@dataclass(frozen=True)
class WakeDecision:
    answer: bool  # answer the turn and keep it in the history; False: drop it entirely
    text: str  # the prompt (the phrase stripped when it was said)
    reason: Literal["no_phrase", "bypass", "phrase", "follow_up", "not_addressed"]


class WakeGate:
    """The wake-phrase policy: which turns are answered, and when the assistant is engaged.

    The turn core calls `decide()` with the final transcript and the time the user STARTED speaking (so a slow
    transcription cannot push a turn out of the window), `replying()` when it starts an answer and `stopped(t)`
    when the assistant's audio ended (played out or interrupted); `announce(t)` says when to tell clients.
    """

    def __init__(self, phrase: str, follow_up_s: float) -> None:
        self.phrase = phrase.strip()
        self.follow_up_s = follow_up_s
        self._engaged_until = -math.inf  # +inf while an answer is being given
        self._announced = self.attention(0.0)

    def retune(self, phrase: str, follow_up_s: float) -> None:
        """A new phrase or window from now on: nobody is engaged yet (what was last announced is kept, so the
        next `announce()` tells clients when the change alters it)."""
        if (phrase.strip(), follow_up_s) != (self.phrase, self.follow_up_s):
            self.phrase, self.follow_up_s, self._engaged_until = phrase.strip(), follow_up_s, -math.inf

    @property
    def active(self) -> bool:
        """False when no phrase is configured: every turn is answered."""
        return bool(_WORD.findall(self.phrase))

    def partial(self, text: str) -> Wake:
        """PRESENT / ABSENT / PENDING for a streaming partial (lets the core skip speculative work when ABSENT)."""
        return match_wake(self.phrase, text, final=False).status

    def decide(self, text: str, started_at: float, source: TurnSource) -> WakeDecision:
        """Whether to answer a turn whose final transcript is `text` and whose speech began at `started_at`."""
        if not self.active:
            return WakeDecision(True, text, "no_phrase")
        m = match_wake(self.phrase, text, final=True)
        if source != "hands_free":
            return WakeDecision(True, m.text if m.status is Wake.PRESENT else text, "bypass")
        if m.status is Wake.PRESENT:
            if not m.text.strip():
                # Only the name ("Hey Nova."): nothing to answer, but the window opens for what the user says next.
                self._engaged_until = max(self._engaged_until, started_at + self.follow_up_s)
                return WakeDecision(False, "", "phrase")
            return WakeDecision(True, m.text, "phrase")
        if started_at <= self._engaged_until:
            return WakeDecision(True, text, "follow_up")
        return WakeDecision(False, text, "not_addressed")

    def replying(self) -> None:
        """An answer started: engaged until it stops."""
        self._engaged_until = math.inf

    def stopped(self, at: float) -> None:
        """The assistant's audio ended at `at`: the follow-up window runs from here."""
        self._engaged_until = at + self.follow_up_s

    def attention(self, at: float) -> Attention:
        if not self.active or at <= self._engaged_until:
            return Attention.ENGAGED
        return Attention.NAME

    def announce(self, at: float) -> Attention | None:
        """The attention to tell clients at `at`, when it changed since the last announcement (None: unchanged)."""
        now = self.attention(at)
        if now is self._announced:
            return None
        self._announced = now
        return now

    def may_speculate(self, partial: str, started_at: float, source: TurnSource) -> bool:
        """Whether a turn that began at `started_at` is worth a speculative answer: not a hands-free one whose
        partial transcript plainly does not begin with the phrase outside the follow-up window."""
        if source != "hands_free" or self.attention(started_at) is Attention.ENGAGED:
            return True
        return self.partial(partial) is not Wake.ABSENT

    def follow_up_ends(self, now: float) -> float | None:
        """When the follow-up window still open at `now` closes (None: no phrase, none open, or an answer runs);
        the caller asks `announce()` again then, since no input of its own marks that moment."""
        end = self._engaged_until
        return end if self.active and now < end < math.inf else None
