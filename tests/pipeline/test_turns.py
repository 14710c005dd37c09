"""Pure turn bookkeeping: the heard-text map, the audio ring, the capture clock and the latency trace."""

from __future__ import annotations

import asyncio

import numpy as np

from assistant.audio.format import SILENT_DBFS, TTS_FRAME_SAMPLES, TTS_RATE, level_dbfs
from assistant.audio.ring import AudioRing, CaptureClock
from assistant.reply import HeardMap, Reply, TurnTrace
from assistant.turns import Responder


def test_heard_map_follows_played_position() -> None:
    """The heard text is what was pushed when the chunk holding the last played sample was made."""
    m = HeardMap()
    for word in ["Hello", " there", " my", " friend"]:
        m.pushed(word)
        m.chunk(100)
    assert m.heard(0) == ""
    assert m.heard(1) == "Hello"
    assert m.heard(100) == "Hello"
    assert m.heard(101) == "Hello there"
    assert m.heard(10_000) == "Hello there my friend"


def test_heard_map_never_keeps_half_a_word() -> None:
    """A cut inside a word (sub-word tokens) falls back to the previous whole word."""
    m = HeardMap()
    for piece in ["Un", "believ", "able", " news"]:
        m.pushed(piece)
        m.chunk(10)
    assert m.heard(10) == ""
    assert m.heard(15) == ""
    assert m.heard(25) == "Unbelievable"
    assert m.heard(40) == "Unbelievable news"


def test_audio_ring_addresses_absolute_positions() -> None:
    """The ring returns samples by absolute position and clamps to what it still holds after wrapping."""
    r = AudioRing(10)
    r.append(np.arange(0, 7, dtype=np.int16))
    r.append(np.arange(7, 16, dtype=np.int16))
    assert r.start == 6 and r.end == 16
    assert r.slice(0, 16).tolist() == list(range(6, 16))
    assert r.slice(8, 12).tolist() == [8, 9, 10, 11]
    r.append(np.arange(16, 40, dtype=np.int16))  # longer than the ring
    assert r.slice(0, 40).tolist() == list(range(30, 40))


def test_sample_clock_and_trace() -> None:
    """Sample positions map back to their capture time; the trace is ms after the true end of speech."""
    c = CaptureClock()
    assert c.add(0, 9.0, SILENT_DBFS, None, 200) is None
    assert c.add(16_000, 10.0, -20.0, None, 200) == -20.0
    assert c.time_of(8_000) == 9.5 and c.time_of(16_000 + 1600) == 10.1
    assert not c.echo_at(8_000) and c.echo_at(17_000)
    t = TurnTrace(turn=1, speech_end=9.5, endpoint=10.2)
    t.mark("stt_final", 9.6)
    t.mark("stt_final", 9.9)  # only the first counts
    t.mark("tts_first_audio", 10.5)
    out = t.trace()
    assert out.vad_hangover_ms == 700.0 and out.stt_final_ms == 100.0 and out.tts_first_audio_ms == 1000.0
    assert out.llm_first_token_ms is None


# (capture time, speaker dBFS, speaker_end, the level the block is judged against), one 20 ms block after another
ECHO_TAIL = [
    (10.00, SILENT_DBFS, None, None),  # nothing played yet
    (10.02, -20.0, None, -20.0),  # the speaker plays
    (10.04, -30.0, None, -30.0),  # quieter: judged against what plays now
    (10.06, SILENT_DBFS, None, -30.0),  # a gap inside the reply (its last sample not yet out): the last level heard
    (10.30, SILENT_DBFS, 10.10, None),  # over 200 ms after the last sample left: no echo
    (10.40, -25.0, None, -25.0),  # the next reply
    (10.50, SILENT_DBFS, 10.45, -25.0),  # its last sample left 50 ms ago: the tail
    (10.64, SILENT_DBFS, 10.45, -25.0),
    (10.66, SILENT_DBFS, 10.45, None),  # 210 ms after: the tail is over
]


def test_capture_clock_judges_a_block_by_the_speaker_and_its_echo_tail() -> None:
    """A block recorded while the speaker played is judged against that level; after the speaker's last sample,
    echo_tail_ms more (200) against the last level heard; then against nothing, and echo_at says the same."""
    c = CaptureClock()
    for i, (t, dbfs, speaker_end, judged) in enumerate(ECHO_TAIL):
        assert c.add(i * 320, t, dbfs, speaker_end, 200) == judged, (t, dbfs, speaker_end)
        assert c.echo_at(i * 320 + 10) is (judged is not None)


def test_level_dbfs() -> None:
    """A full-scale square wave is 0 dBFS, a tenth of it -20 dBFS, silence -120."""
    assert abs(level_dbfs(np.ones(100, dtype=np.float32))) < 1e-6
    assert abs(level_dbfs(np.full(100, 0.1, dtype=np.float32)) + 20.0) < 1e-4
    assert level_dbfs(np.zeros(10, dtype=np.float32)) == -120.0


class TimedUtterance:
    """A TTS stand-in with known word timings: word i is spoken during codec frames [2i, 2i + 2) (160 ms a
    word at speed 1), and the talker consumes a word's characters at its first frame."""

    def __init__(self, words: list[str], speed: float = 1.0) -> None:
        self.words, self.speed = words, speed

    def chars_at_frame(self, frame: int) -> int:
        return len("".join(self.words[: frame // 2 + 1]))


def timed_reply(words: list[str], speed: float = 1.0) -> Reply:
    """A reply whose whole text was pushed before its first chunk (HeardMap alone would say it was all heard)."""
    loop = asyncio.new_event_loop()
    try:
        reply = Reply(1, TurnTrace(1, 0.0, 0.0), Responder(user_text="hi"), result=loop.create_future())
    finally:
        loop.close()
    for w in words:
        reply.heard.pushed(w)
    reply.heard.chunk(TTS_FRAME_SAMPLES * 2 * len(words))
    reply.utt = TimedUtterance(words, speed)  # type: ignore[assignment]
    reply.audio_started = True
    return reply


def test_heard_text_after_an_interruption_follows_audio_time() -> None:
    """Interrupted after 1.0 s of played audio, the reply's heard text is the words spoken up to then (frame
    12 of 80 ms: the 7th word, 0.96-1.12 s) within one word, not the whole text that had been fed to the TTS;
    a time-stretched voice (speed 2) has said twice as many words by the same played time."""
    words = [f"{w} " for w in "one two three four five six seven eight nine ten eleven twelve thirteen".split()]
    reply = timed_reply(words)
    assert reply.heard.heard(TTS_RATE) == "".join(words).strip()  # the old estimate: everything fed
    heard = reply.heard_text(TTS_RATE).split()
    assert heard == "one two three four five six seven".split()[: len(heard)] and 6 <= len(heard) <= 7
    fast = timed_reply(words, speed=2.0).heard_text(TTS_RATE).split()  # frame 24: the 13th word
    assert fast == [w.strip() for w in words][: len(fast)] and 12 <= len(fast) <= 13
    assert timed_reply(words).heard_text(0) == ""
