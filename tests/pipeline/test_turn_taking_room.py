"""Turn-taking in the virtual room with the real Smart Turn v3.2 detector (issue 13 (c), (d)) and the wake
phrase (issue 20).

The real daemon objects run over real PortAudio on the private PulseAudio room: Capture, the VAD, the turn core,
the Smart Turn model on onnxruntime, the tiny random-weight LLM and TTS, and Playback. espeak-ng speech is played
into the virtual microphone. The STT is a test double (tests/pipeline/known_speech.py: it recognises the known
phrases by their loudness contour) because the tiny STT model writes random words and these tests are about the
words: both halves of a paused question in one transcript, and the wake phrase at the start of one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from assistant import cli
from assistant.audio.format import CAPTURE_RATE, AudioBlock
from assistant.compute import Compute
from assistant.config import Config
from assistant.conversation import Conversation
from assistant.daemon import ReopeningSource
from assistant.events import (
    AttentionChanged,
    FinalTranscript,
    LatencyTrace,
    ResponseDone,
    StateChanged,
    TurnState,
)
from tests import tiny_engines
from tests.event_log import EventLog
from tests.pipeline.known_speech import KnownSpeech
from tests.speech import needs_espeak, silence, trimmed

pytestmark = [pytest.mark.audio, needs_espeak]

WAIT_S = 60.0  # safety net per awaited event on a busy shared CPU; never a timing assertion
LEAD_S = 0.3  # silence played before each utterance
VOICED = round(32768 * 10 ** (-45 / 20))  # 184: |int16| of a -45 dBFS peak, the clip set's speech threshold
END_WITHIN_MS = 300  # issue 13 (d): median end-of-turn decision after the true end of speech
CLIPS, MAX_PLAYS = 20, 30  # clips the median is over; plays allowed for it (the room may cut a few)
ROOM_GAP_MS = 150  # a silent run inside a played clip this long (the clips have none over 140 ms) was inserted by
# the room: the VAD reports it as a pause (endofturn.score_after_ms) and the turn may end there
PAUSED = "What time is it | in London?"  # issue 13 (c), a thinking pause where "|" is


def text_of(sentence: str) -> str:
    return " ".join(sentence.replace("|", " ").split())


class TapSource:
    """The microphone as the daemon reads it, keeping every block with its capture time (for the true end)."""

    def __init__(self, source: ReopeningSource) -> None:
        self.source = source
        self.blocks: list[AudioBlock] = []

    async def read(self) -> AudioBlock:
        block = await self.source.read()
        assert isinstance(block, AudioBlock)
        self.blocks.append(block)
        return block

    def gap_ms(self, since: int) -> float:
        """The longest run of near-silence (ms) between the first and last voiced sample of the blocks from index
        `since`: a paplay underrun on a starved machine inserts silence into the speech (the clips have none over
        140 ms)."""
        audio = np.concatenate([b.samples for b in self.blocks[since:]] or [np.zeros(0, np.int16)])
        loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > VOICED)
        return float(np.diff(loud).max()) * 1000 / CAPTURE_RATE if len(loud) > 1 else 0.0

    def last_voiced_time(self, since: int) -> float | None:
        """Capture time just after the last sample louder than -45 dBFS in the blocks from index `since`."""
        last = None
        for block in self.blocks[since:]:
            loud = np.flatnonzero(np.abs(block.samples.astype(np.int32)) > VOICED)
            if len(loud):
                last = block.t + (int(loud[-1]) + 1) / CAPTURE_RATE
        return last


async def until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def room_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Tiny LLM and TTS with short replies, the real Smart Turn v3.2 as the end-of-turn detector."""
    from tests.turn_clips import smart_turn_file

    changes = {
        "pipeline.mode": "both",  # hands-free turns and the push-to-talk hotkey
        "server.enabled": False,
        "endofturn.detector": "smart_turn",
        "endofturn.model": str(smart_turn_file().parent),  # a folder holding the .onnx
        "llm.max_tokens": 4,
        "tts.max_frames": 8,  # ~0.7 s of reply audio: the replies are not what these tests look at
    }
    return tiny_engines.tiny_config(tmp_path_factory.mktemp("turn_room_models"), changes)


class Daemon:
    """One daemon session in the room: the real Conversation over Capture and Playback, with KnownSpeech."""

    def __init__(self, room: Any, cfg: Config, phrases: list[tuple[str, np.ndarray]]) -> None:
        self.room, self.cfg, self.phrases = room, cfg, phrases

    async def __aenter__(self) -> Daemon:
        from assistant.audio.capture import Capture
        from assistant.audio.playback import Playback

        self.compute = Compute()
        engines = await self.compute.run(cli.build_engines, self.cfg)
        self.scores: list[tuple[float, float, float]] = []  # (asked, answered, P(complete)) per model decision
        self.cpu_ms: list[float] = []  # the scoring thread's CPU time per decision (wall time minus starvation)
        score = engines.score_turn

        def scored(audio: np.ndarray) -> float:
            asked, cpu = time.monotonic(), time.thread_time()
            assert score is not None
            p = score(audio)
            self.cpu_ms.append(1000.0 * (time.thread_time() - cpu))
            self.scores.append((asked, time.monotonic(), p))
            return p

        self.engines = dataclasses.replace(
            engines, transcriber=KnownSpeech(self.phrases), score_turn=scored if score else None
        )
        self.source = TapSource(ReopeningSource(lambda: Capture(self.cfg.audio)))
        self.playback = Playback(self.cfg.audio, rate=engines.tts.sample_rate).__enter__()
        self.pipeline = Conversation(self.cfg, self.engines, self.source, self.playback, self.compute)
        self.events = EventLog(self.pipeline, WAIT_S)
        self.runner = asyncio.create_task(self.pipeline.run())
        await until(lambda: self.pipeline.core.ring.end > 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.runner.cancel()
        await self.pipeline.aclose()
        self.playback.__exit__(None, None, None)
        await self.source.source.aclose()
        self.compute.close(5.0)

    def say(self, audio: np.ndarray) -> tuple[int, int, Any]:
        """Play `audio` after LEAD_S of silence: (event mark, tap mark, the paplay process)."""
        mark = len(self.events.seen), len(self.source.blocks)
        return *mark, self.room.play(np.concatenate([silence(LEAD_S), audio]))

    async def settled(self, mark: int, quiet_s: float = 0.3) -> None:
        """Wait until a turn ended after event `mark`, then until the daemon is idle (reply played) for `quiet_s`."""
        await self.events.until(StateChanged, lambda e: e.new is TurnState.THINKING)
        since = time.monotonic()
        deadline = since + WAIT_S
        while time.monotonic() - since < quiet_s:
            assert time.monotonic() < deadline, "the daemon never went idle"
            if self.pipeline.core.state is not TurnState.IDLE:
                since = time.monotonic()
            await asyncio.sleep(0.01)
        await self.events.drain(0.01)

    async def history(self) -> list[Any]:
        chat = self.engines.chat
        return await self.compute.run(lambda: list(chat.history))


def paused_clips(kinds: tuple[str, ...]) -> tuple[list[np.ndarray], list[tuple[str, np.ndarray]]]:
    """The paused question with the pauses of `kinds` (turn_clips: "pause600", "pause900") in that order, and its
    halves as KnownSpeech phrases."""
    from tests.turn_clips import make_clip

    paused, phrases = [], []
    for kind in kinds:
        clip = make_clip(PAUSED, kind)
        cut = clip.points[0].at  # where the thinking pause starts
        paused.append(trimmed(clip.audio))
        phrases += [("What time is it", trimmed(clip.audio[:cut])), ("in London?", trimmed(clip.audio[cut:]))]
    return paused, phrases


@pytest.mark.parametrize("kinds", [("pause600", "pause900"), ("pause900", "pause600")], ids=["600-first", "900-first"])
def test_thinking_pauses_keep_one_turn(room_env: Any, room_config: Config, kinds: tuple[str, str]) -> None:
    """(c) "What time is it ... in London?" with a 600 ms and a 900 ms thinking pause (either first) is one turn
    each time.

    Smart Turn v3.2 may hear "What time is it" + silence as a finished question (offline P(complete) 0.59-0.92 at
    every scoring point; benchmarks/endofturn.py cuts exactly these two of its 60 thinking pauses). On the fresh
    daemon's first clip the echo canceller has not heard the room yet (over the reply AEC3 would turn the user down
    to nothing), so no pause shorter than `endofturn.resume_ms` ends the turn and the user goes on in the same turn.
    From then on the room is known and the turn may end at the pause: the user goes on within `resume_ms`, over
    the early answer, which is retracted (stopped, reported as interrupted with nothing heard, kept nowhere) and the
    whole question is transcribed and answered once. Either way: the last transcript is the whole question, exactly
    one answer, and the history holds the whole question once per clip."""
    paused, phrases = paused_clips(kinds)
    # replies of a real length (~3 s): the early answer is still playing when the user goes on
    cfg = room_config.replace({"llm.max_tokens": 16, "tts.max_frames": 40})

    async def main() -> tuple[list[tuple[list[str], list[Any]]], list[Any], list[float]]:
        async with Daemon(room_env, cfg, phrases) as d:
            ev = d.events
            seen = []
            for audio in paused:
                mark, _, _ = d.say(audio)
                await ev.until(ResponseDone, lambda e: not e.interrupted)
                await ev.drain(0.5)  # a second turn (the question's tail) would have ended within this
                seen.append(([e.text for e in ev.since(mark, FinalTranscript)], ev.since(mark, ResponseDone)))
            return seen, await d.history(), [p for _, _, p in d.scores]

    seen, history, scores = asyncio.run(main())
    print(f"P(complete) at each pause and end: {[round(p, 2) for p in scores]}; per clip {seen}")
    for kind, (texts, done) in zip(kinds, seen, strict=True):
        answered = [e for e in done if not e.interrupted]
        retracted = [e for e in done if e.interrupted]
        assert texts and texts[-1] == "What time is it in London?", (kind, texts)
        assert len(answered) == 1 and all(e.text == "" for e in retracted), (kind, done)
        assert len(texts) == 1 + len(retracted), (kind, texts, done)  # a first half only where it was retracted
    users = [m.content for m in history if m.role == "user"]
    assert users == ["What time is it in London?"] * 2, history


@pytest.mark.slow  # ~60 s of real time: over the CI suite's room budget
def test_complete_questions_end_fast(room_env: Any, room_config: Config) -> None:
    """(d) 20 complete short requests each end their turn once, whole (never at a gap inside a word), and within
    300 ms (median) of the true end of speech, the capture time of the last voiced sample that reached the
    virtual microphone."""
    from tests.turn_clips import SENTENCES, make_clip

    complete = [(text_of(s), trimmed(make_clip(s, "complete").audio)) for s in SENTENCES]
    skipped: list[str] = []
    steps: list[tuple[float, float, float, float]] = []  # per clip: the last score before the turn ended (ms after
    # the true end when it was asked and answered, P(complete)), and the turn's end (ms after the true end)

    async def main() -> tuple[list[float], list[tuple[float, float, float]], list[float]]:
        async with Daemon(room_env, room_config, complete) as d:
            ev = d.events
            latencies: list[float] = []
            for text, audio in (complete * 2)[:MAX_PLAYS]:  # each once the previous reply has played
                mark, tap, proc = d.say(audio)
                await asyncio.to_thread(proc.wait)
                await d.settled(mark)
                true_end = d.source.last_voiced_time(tap)
                if d.source.gap_ms(tap) > ROOM_GAP_MS:
                    skipped.append(text)  # the room cut the clip: not the speech this test is about
                    continue
                finals = [e.text for e in ev.since(mark, FinalTranscript)]
                ended = [e.time for e in ev.since(mark, StateChanged) if e.new is TurnState.THINKING]
                # on failure, the turn's events in ms after the true end (a cut inside the speech shows up here)
                timeline = [
                    f"{type(e).__name__}@{1000 * (e.time - (true_end or 0)):.0f}"
                    for e in ev.seen[mark:]
                    if not isinstance(e, LatencyTrace)  # the one event without a time
                ]
                assert finals == [text] and len(ended) == 1 and true_end is not None, (text, finals, timeline)
                latencies.append(1000.0 * (ended[0] - true_end))
                ask, answer, p = max((s for s in d.scores if s[0] <= ended[0]), default=(true_end, true_end, -1.0))
                steps.append((1000.0 * (ask - true_end), 1000.0 * (answer - true_end), p, latencies[-1]))
                if len(latencies) == CLIPS:
                    break
            return latencies, d.scores, d.cpu_ms

    latencies, scores, cpu_ms = asyncio.run(main())
    assert len(latencies) == CLIPS, f"only {len(latencies)} clips arrived whole; the room cut {skipped}"
    median = statistics.median(latencies)
    wall_ms = [1000 * (b - a) for a, b, _ in scores]
    print(
        f"model per decision, ms: wall median {statistics.median(wall_ms):.0f} (max {max(wall_ms):.0f}), CPU median"
        f" {statistics.median(cpu_ms):.0f} (max {max(cpu_ms):.0f}); clips the room cut (not counted): {skipped}"
    )
    print(
        "per clip, the last score before the end (asked and answered, ms after the true end; P) and the end: "
        f"{[(round(a), round(b), round(p, 2), round(e)) for a, b, p, e in steps]}"
    )
    print(
        f"end of turn after the true end of speech, ms: median {median:.0f}, p90 {np.percentile(latencies, 90):.0f},"
        f" min {min(latencies):.0f}, max {max(latencies):.0f}; all: {[round(x) for x in sorted(latencies)]}"
    )
    assert median <= END_WITHIN_MS, sorted(latencies)


WAKE_CHANGES = {"pipeline.wake_phrase": "hey nova", "pipeline.follow_up_s": 3.0}
ADDRESSED = ("Hey Nova, what is the weather like today?", "What is the weather like today?")


def test_wake_phrase_in_the_room(room_env: Any, room_config: Config) -> None:
    """With `pipeline.wake_phrase = "hey nova"`: 10 utterances without it get no reply and no history entry; one
    beginning with it is answered (the phrase stripped); a follow-up inside the window is answered, one after the
    window is not; a push-to-talk turn without the phrase is answered."""
    from tests.speech import say
    from tests.turn_clips import SENTENCES, make_clip

    complete = [(text_of(s), trimmed(make_clip(s, "complete").audio)) for s in SENTENCES]
    addressed = (ADDRESSED[0], trimmed(say(ADDRESSED[0])))
    phrases = [*complete, addressed]
    unaddressed, (follow_up, late, ptt) = complete[:10], complete[10:13]
    cfg = room_config.replace(WAKE_CHANGES)

    async def main() -> tuple[list[int], list[Any], list[Any]]:
        async with Daemon(room_env, cfg, phrases) as d:
            ev = d.events
            replies = []

            async def turn(audio: np.ndarray, text: str, answered: bool) -> None:
                mark, _, _ = d.say(audio)
                final = await ev.until(FinalTranscript)
                assert final.text == text, (final.text, text)
                if answered:
                    await ev.until(ResponseDone)
                else:
                    await ev.drain(0.2)
                replies.append(len(ev.since(mark, ResponseDone)))

            for text, audio in unaddressed:
                await turn(audio, text, answered=False)
            unaddressed_history = await d.history()
            await turn(addressed[1], addressed[0], answered=True)
            await asyncio.sleep(0.3)
            await turn(follow_up[1], follow_up[0], answered=True)
            await ev.until(AttentionChanged, lambda e: e.attention == "listening_for_name")  # the window closed
            await turn(late[1], late[0], answered=False)
            # push-to-talk: held from before the speech until after it, so the hotkey (not the VAD) ends the turn
            d.pipeline.command("ptt_start")
            mark, _, proc = d.say(ptt[1])
            await asyncio.to_thread(proc.wait)
            await asyncio.sleep(0.5)  # the sink's and PortAudio's latency: the last sample reaches the capture
            d.pipeline.command("ptt_stop")
            final = await ev.until(FinalTranscript)
            assert final.text == ptt[0], final.text
            await ev.until(ResponseDone)
            replies.append(len(ev.since(mark, ResponseDone)))
            return replies, unaddressed_history, await d.history()

    replies, before, history = asyncio.run(main())
    assert replies == [0] * 10 + [1, 1, 0, 1], replies
    assert before == []  # nothing of the ten unaddressed turns was kept
    users = [m.content for m in history if m.role == "user"]
    assert users == [ADDRESSED[1].lower(), follow_up[0], ptt[0]] or users == [ADDRESSED[1], follow_up[0], ptt[0]], users
