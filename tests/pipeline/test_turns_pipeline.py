"""The turn state machine with scripted engine doubles: speculation, barge-in, push-to-talk, errors."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest

from assistant.audio.format import CAPTURE_RATE
from assistant.endofturn import SCORE_LEAD_IN
from assistant.errors import ConfigError, InputError, ModelError
from assistant.events import (
    BargeIn,
    ErrorEvent,
    FalseStart,
    FinalTranscript,
    LatencyTrace,
    ResponseDone,
    ResponseTextDelta,
    SpeculationCancelled,
    SpeculationStarted,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
    TurnState,
)
from assistant.turns import APOLOGY
from tests.pipeline.doubles import BLOCK, FRAME, FakeSink, Message, ScriptedChat
from tests.pipeline.harness import ANSWER, Harness, eventually

FULL = "".join(ANSWER)


def test_hands_free_turn_event_sequence() -> None:
    """A spoken turn goes IDLE -> USER_SPEAKING -> THINKING -> ASSISTANT_SPEAKING -> IDLE with every event."""

    async def main() -> None:
        async with Harness() as h:
            h.speak("hello", "world")
            h.silence(6)
            trace = await h.next_event(LatencyTrace)  # sent just before the ResponseDone
            done = await h.next_event(ResponseDone)
            assert done.text == FULL and not done.interrupted
            assert [e.new for e in h.of(StateChanged)] == [
                TurnState.USER_SPEAKING,
                TurnState.THINKING,
                TurnState.ASSISTANT_SPEAKING,
            ]
            await h.next_event(StateChanged, lambda e: e.new is TurnState.IDLE)
            assert h.of(FinalTranscript)[0].text == "hello world"
            assert "".join(e.text for e in h.of(ResponseTextDelta)) == FULL
            assert h.chat.history == [Message("user", "hello world"), Message("assistant", FULL)]
            assert h.sink.written_all == FRAME * len(ANSWER)
            assert h.sink.on_write and all(ended == 1 for ended in h.sink.on_write)  # audio only after SpeechEnded
            assert trace.vad_hangover_ms > 0 and trace.stt_final_ms is not None
            # milestones come in pipeline order (each one after the true end of speech)
            order = [trace.llm_first_token_ms, trace.tts_first_text_ms, trace.tts_first_audio_ms]
            assert all(ms is not None and ms >= 0 for ms in order) and order == sorted(order)
            assert trace.first_sample_played_ms is not None and trace.first_sample_played_ms >= trace.vad_hangover_ms
            # the speculative answer started at SilenceStarted was the one used: one prompt, no restart
            assert len(h.of(SpeculationStarted)) == 1 and h.chat.prompts == ["hello world"]
            assert len(h.stt.threads | h.chat.threads) == 1 and threading.get_ident() not in h.chat.threads

    asyncio.run(main())


def test_speculative_start_then_resume() -> None:
    """Silence starts a speculative answer that plays nothing; resumed speech cancels it and continues the turn."""

    async def main() -> None:
        async with Harness() as h:
            h.speak("hello")
            h.silence(3)  # SilenceStarted, shorter than the 5-block hangover
            await h.next_event(SpeculationStarted)
            await eventually(lambda: h.chat.steps >= 1)  # the answer really began speculatively
            assert h.chat.prompts == ["hello"]
            h.speak("world")  # SpeechResumed
            await h.next_event(SpeculationCancelled)
            await eventually(lambda: h.chat.closed == 1)
            assert h.sink.written_all == 0 and h.chat.history == []  # nothing played, nothing recorded
            h.silence(6)
            final = await h.next_event(FinalTranscript)
            assert final.text == "hello world"  # the same user turn went on
            done = await h.next_event(ResponseDone)
            assert done.text == FULL
            assert h.chat.prompts == ["hello", "hello world"]
            assert h.chat.history == [Message("user", "hello world"), Message("assistant", FULL)]
            assert len(h.of(SpeechStarted)) == 1 and all(ended == 1 for ended in h.sink.on_write)

    asyncio.run(main())


def test_a_confirmed_speculation_counts_its_latency_from_the_end_of_speech() -> None:
    """A speculative answer already running when the turn ends is confirmed with the turn's speech end and
    decision time: its latency trace counts from the end of speech, not from the speculation's start."""

    async def main() -> None:
        async with Harness() as h:
            h.speak("hello")
            end = h.t  # the capture time of the end of speech
            h.silence(3)  # SilenceStarted: the speculative answer starts
            await h.next_event(SpeculationStarted)
            await eventually(lambda: h.chat.steps >= 1)  # it runs before the end of turn
            h.silence(3)  # the hangover: the turn ends and confirms it
            thinking = await h.next_event(StateChanged, lambda e: e.new is TurnState.THINKING)
            trace = await h.next_event(LatencyTrace)
            assert h.chat.prompts == ["hello"]  # the speculative answer was the one used
            assert abs(trace.vad_hangover_ms - 1000.0 * (thinking.time - end)) <= 20.0  # within a block
            assert trace.stt_final_ms is not None and trace.stt_final_ms > 0

    asyncio.run(main())


def test_barge_in_trims_history_to_heard_part() -> None:
    """Speech during playback flushes the sink, cancels the reply and keeps only the heard words, interrupted."""

    async def main() -> None:
        async with Harness(sink=FakeSink(auto=False)) as h:
            h.speak("hello")
            h.silence(6)
            await eventually(lambda: h.sink.total >= 5 * FRAME)
            h.sink.played = 3 * FRAME + 17  # the listener is inside the 4th frame
            h.speak("stop")  # 4 voiced blocks > the 3 needed during playback
            barge = await h.next_event(BargeIn)
            assert barge.heard == "One two three four"
            done = await h.next_event(ResponseDone)
            assert done.interrupted and done.text == "One two three four"
            assert h.sink.log[-1][0] == "flush"  # nothing written after the flush
            await eventually(lambda: len(h.chat.history) == 2)
            assert h.chat.history[1] == Message("assistant", "One two three four", interrupted=True)
            assert h.p.core.state is TurnState.USER_SPEAKING
            h.sink.auto = True
            h.silence(6)  # the interruption is a turn of its own
            final = await h.next_event(FinalTranscript)
            assert final.text == "stop"
            await h.next_event(ResponseDone, lambda e: not e.interrupted)
            assert [m.content for m in h.chat.history] == ["hello", "One two three four", "stop", FULL]

    asyncio.run(main())


def test_false_start_loses_nothing() -> None:
    """With barge_in_min_words=1, noise during the reply never interrupts it and the full answer is kept."""

    async def main() -> None:
        async with Harness({"pipeline.barge_in_min_words": 1}, sink=FakeSink(auto=False)) as h:
            h.speak("hello")
            h.silence(6)
            await eventually(lambda: h.sink.total >= 2 * FRAME)
            h.noise(5)
            h.silence(6)
            await h.next_event(FalseStart)
            h.sink.auto = True
            done = await h.next_event(ResponseDone)
            assert done.text == FULL and not done.interrupted and not h.of(BargeIn)
            assert h.sink.flushes == 1  # only the flush that starts every reply
            assert h.chat.history[-1] == Message("assistant", FULL)

    asyncio.run(main())


def test_barge_in_after_enough_words() -> None:
    """With barge_in_min_words=2, the interruption happens once the partial transcript holds two words."""

    async def main() -> None:
        async with Harness({"pipeline.barge_in_min_words": 2}, sink=FakeSink(auto=False)) as h:
            h.speak("hello")
            h.silence(6)
            await eventually(lambda: h.sink.total >= 2 * FRAME)
            h.sink.played = FRAME
            h.speak("stop")
            await asyncio.sleep(0.05)
            assert not h.of(BargeIn) and h.p.core.state is TurnState.ASSISTANT_SPEAKING
            h.speak("now")
            barge = await h.next_event(BargeIn)
            assert barge.heard == "One"
            h.sink.auto = True
            h.silence(6)
            assert (await h.next_event(FinalTranscript)).text == "stop now"

    asyncio.run(main())


def test_push_to_talk_overrides_vad() -> None:
    """While the hotkey is held the VAD's end of speech is ignored: the turn ends only at release."""

    async def main() -> None:
        async with Harness({"pipeline.mode": "both"}) as h:
            h.p.command("ptt_start")
            h.speak("what", "time")
            h.silence(8)  # the VAD ends its utterance here
            h.speak("is", "it")
            assert h.vad.ended >= 1 and not h.of(FinalTranscript)
            h.p.command("ptt_stop")
            final = await h.next_event(FinalTranscript)
            assert final.text == "what time is it"
            await h.next_event(ResponseDone)
            assert not h.of(SpeculationStarted) and h.chat.prompts == ["what time is it"]

    asyncio.run(main())


def test_push_to_talk_mode_ignores_voice() -> None:
    """In push_to_talk mode speech alone starts no turn; the hotkey does."""

    async def main() -> None:
        async with Harness({"pipeline.mode": "push_to_talk"}) as h:
            h.speak("hello")
            h.silence(6)
            await asyncio.sleep(0.05)
            assert h.p.core.state is TurnState.IDLE and h.chat.prompts == []
            h.p.command("ptt_start")
            h.speak("world")
            h.p.command("ptt_stop")
            assert (await h.next_event(FinalTranscript)).text == "world"

    asyncio.run(main())


def test_ptt_press_interrupts_reply() -> None:
    """Pressing the hotkey during the reply is a barge-in; the heard part is kept."""

    async def main() -> None:
        async with Harness({"pipeline.mode": "both"}, sink=FakeSink(auto=False)) as h:
            h.speak("hello")
            h.silence(6)
            await eventually(lambda: h.sink.total >= 3 * FRAME)
            h.sink.played = 2 * FRAME
            h.p.command("ptt_start")
            assert (await h.next_event(BargeIn)).heard == "One two"
            h.sink.auto = True
            h.speak("stop")
            h.p.command("ptt_stop")
            assert (await h.next_event(FinalTranscript)).text == "stop"

    asyncio.run(main())


def test_interrupt_cancels_within_one_step() -> None:
    """After interrupt() the LLM and the TTS each run at most one more step, and the generator is closed."""

    async def main() -> None:
        llm_gate, tts_gate = threading.Semaphore(0), threading.Semaphore(0)
        chat = ScriptedChat(list(ANSWER), gate=llm_gate)
        from tests.pipeline.doubles import WordTts

        tts = WordTts(gate=tts_gate)
        async with Harness(chat=chat, tts=tts, sink=FakeSink(auto=False)) as h:
            h.speak("hello")
            h.silence(6)
            for _ in range(3):
                llm_gate.release()
                tts_gate.release()
            # the worker is inside a step (LLM or TTS) that waits for the gate
            await eventually(lambda: chat.steps >= 2 and (chat.waiting or tts.utterances[0].blocked))
            steps, frames = chat.steps, tts.utterances[0].frames_emitted
            h.p.command("interrupt")
            for _ in range(20):
                llm_gate.release()
                tts_gate.release()
            await h.next_event(ResponseDone)
            await eventually(lambda: chat.closed == 1)
            assert chat.steps - steps <= 1 and tts.utterances[0].frames_emitted - frames <= 1
            assert h.p.core.state is TurnState.IDLE

    asyncio.run(main())


def test_error_in_turn_returns_to_listening() -> None:
    """An LLM failure mid-answer is reported as an ErrorEvent, and the next turn works."""

    async def main() -> None:
        async with Harness(chat=ScriptedChat(list(ANSWER), fail_at=2)) as h:
            h.speak("hello")
            h.silence(6)
            err = await h.next_event(ErrorEvent)
            assert "scripted failure" in err.message
            await h.next_event(StateChanged, lambda e: e.new is TurnState.IDLE)
            h.speak("world")
            h.silence(6)
            done = await h.next_event(ResponseDone, lambda e: not e.interrupted)
            assert done.text == FULL and h.chat.history[-1] == Message("assistant", FULL)
            assert h.chat.history[-2] == Message("user", "world")

    asyncio.run(main())


def test_bad_input_in_a_turn_is_logged_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """A turn that fails on the user's input (an InputError, whose message says what to fix) is logged as one
    line naming it, without a traceback; any other failure keeps its traceback for the bug report."""

    async def main() -> None:
        async with Harness(chat=ScriptedChat(list(ANSWER), fail_at=1, error=InputError)) as h:
            h.speak("hello")
            h.silence(6)
            await h.next_event(ErrorEvent)
            await h.next_event(StateChanged, lambda e: e.new is TurnState.IDLE)

    with caplog.at_level(logging.ERROR, logger="assistant"):
        asyncio.run(main())
    [record] = [r for r in caplog.records if "back to listening" in r.getMessage()]
    assert "scripted failure" in record.getMessage() and record.exc_info is None


def test_a_model_failure_is_followed_by_an_apology() -> None:
    """An LLM that fails mid-answer with a ModelError (a server gone, say) is reported, and the daemon then says
    aloud that it could not answer; the next turn asks the model again."""

    async def main() -> None:
        async with Harness(chat=ScriptedChat(list(ANSWER), fail_at=2, error=ModelError)) as h:
            h.speak("hello")
            h.silence(6)
            err = await h.next_event(ErrorEvent)
            assert "ModelError: scripted failure" in err.message
            failed = await h.next_event(ResponseDone)
            assert failed.interrupted  # ends as heard so far
            apology = await h.next_event(ResponseDone)
            assert apology.turn > failed.turn and apology.text == APOLOGY and not apology.interrupted
            h.speak("world")
            h.silence(6)
            done = await h.next_event(ResponseDone)
            assert done.text == FULL and h.chat.history[-2:] == [Message("user", "world"), Message("assistant", FULL)]

    asyncio.run(main())


def test_a_failing_transcriber_drops_the_turn_and_listening_goes_on() -> None:
    """A transcriber that raises while fed is an error event naming it; the turn is dropped unanswered, and the
    next turn, transcribed again, is answered."""

    async def main() -> None:
        async with Harness() as h:
            feed = h.stt.feed

            def broken(audio: np.ndarray) -> str | None:
                raise RuntimeError("the STT ran out of memory")

            h.stt.feed = broken  # type: ignore[method-assign]
            h.speak("hello")
            err = await h.next_event(ErrorEvent)
            assert err.message == "transcribing: RuntimeError: the STT ran out of memory"
            h.stt.feed = feed  # type: ignore[method-assign]
            h.silence(6)
            await h.next_event(StateChanged, lambda e: e.new is TurnState.IDLE)
            h.speak("world")
            h.silence(6)
            done = await h.next_event(ResponseDone)
            assert done.text == FULL and h.chat.prompts == ["world"]

    asyncio.run(main())


def test_ask_and_say() -> None:
    """ask() answers text aloud and returns the answer; say() speaks without touching the history."""

    async def main() -> None:
        async with Harness() as h:
            assert await h.p.ask("what time") == FULL
            assert h.chat.history == [Message("user", "what time"), Message("assistant", FULL)]
            before = h.sink.written_all
            await h.p.say("good morning to you")
            assert h.sink.written_all - before == 4 * FRAME and len(h.chat.history) == 2
            assert h.p.core.state is TurnState.IDLE

    asyncio.run(main())


def test_empty_transcript_gives_no_answer() -> None:
    """Noise that transcribes to nothing ends the turn without asking the LLM."""

    async def main() -> None:
        async with Harness() as h:
            h.noise(4)
            h.silence(6)
            await h.next_event(SpeechEnded)
            await h.next_event(StateChanged, lambda e: e.new is TurnState.IDLE)
            assert h.chat.prompts == [] and h.sink.written_all == 0

    asyncio.run(main())


def test_subscription_drops_oldest() -> None:
    """A full subscriber queue drops its oldest events and counts them."""

    async def main() -> None:
        async with Harness() as h:
            sub = h.p.subscribe(maxsize=2)
            h.p.command("mute")
            h.p.command("unmute")
            h.p.command("mute")
            assert sub.dropped == 1
            assert [e.muted for e in [await anext(sub), await anext(sub)]] == [False, True]

    asyncio.run(main())


def test_mute_ignores_the_microphone() -> None:
    """Muted, speech starts nothing."""

    async def main() -> None:
        async with Harness() as h:
            h.p.command("mute")
            h.speak("hello")
            h.silence(6)
            assert h.stt.fed_samples == 0 and h.control.status()["muted"]

    asyncio.run(main())


def test_config_set() -> None:
    """config_set validates keys, applies pipeline keys live and refuses keys that need a restart."""

    async def main() -> None:
        async with Harness() as h:
            with pytest.raises(ConfigError, match=r"pipeline\.barge_in_min_word"):
                h.control.config_set({"pipeline.barge_in_min_word": 2})
            with pytest.raises(ConfigError, match=r"`llm\.max_tokens` takes effect only at start"):
                h.control.config_set({"pipeline.barge_in_min_words": 3, "llm.max_tokens": 10})
            assert h.p.cfg.pipeline.barge_in_min_words == 0  # nothing changed
            out = h.control.config_set({"pipeline.barge_in_min_words": 3})
            assert out["pipeline"]["barge_in_min_words"] == 3 and h.p.cfg.pipeline.barge_in_min_words == 3

    asyncio.run(main())


def test_config_set_voice_applies_to_the_next_reply() -> None:
    """config.set tts.voice switches the daemon's voice without a restart: the next reply speaks with it."""

    async def main() -> None:
        async with Harness() as h:
            await h.p.ask("hello")
            with pytest.raises(ConfigError, match=r"unknown voice 'nobody'"):
                h.control.config_set({"tts.voice": "nobody"})
            h.control.config_set({"tts.voice": "alice"})
            for _ in range(100):  # the voice loads on the compute thread
                if h.p.engines.voice == "alice":
                    break
                await asyncio.sleep(0.01)
            await h.p.ask("hello again")
            assert h.tts.voices_started[0] != "alice" and h.tts.voices_started[-1] == "alice"
            assert "tts.voice" not in h.control.status()["restart_required"]

    asyncio.run(main())


def test_chunked_text_mode_pushes_clauses() -> None:
    """With tts.text_mode = "chunked" the TTS gets whole clauses from the ClauseChunker, not tokens."""
    tokens = ["Well", ",", " the", " weather", " is", " fine", " today", ".", " Bring", " a", " hat", "."]

    async def main() -> None:
        async with Harness({"tts.text_mode": "chunked"}, chat=ScriptedChat(tokens)) as h:
            assert await h.p.ask("weather") == "".join(tokens)
            pushed = list(h.tts.utterances[-1].consumed)
            assert len(pushed) < len(tokens) and "".join(pushed).replace(" ", "") == "".join(tokens).replace(" ", "")

    asyncio.run(main())


def test_vad_positions_follow_resets() -> None:
    """After the VAD restarts its positions (PTT release, unmute), the next turn still gets the right audio."""

    async def main() -> None:
        async with Harness({"pipeline.mode": "both", "vad.preroll_ms": 60}) as h:
            h.silence(10)
            h.p.command("ptt_start")
            h.speak("what")
            h.p.command("ptt_stop")  # resets the VAD
            await h.next_event(ResponseDone)
            h.p.command("mute")
            h.speak("hello")  # not heard
            h.p.command("unmute")  # resets the VAD again
            h.silence(7)
            h.speak("time", "is")
            h.silence(6)
            final = await h.next_event(FinalTranscript, lambda e: e.text != "what")
            assert final.text == "time is"
            started = h.of(SpeechStarted)[-1]
            assert started.onset_sample == (10 + 4 + 4 + 7) * 320  # on the capture clock, not the VAD's

    asyncio.run(main())


def test_ask_during_reply_cuts_it_short() -> None:
    """A new ask() while a reply plays interrupts it (heard part kept) before answering the new question."""

    async def main() -> None:
        async with Harness(sink=FakeSink(auto=False)) as h:
            first = asyncio.create_task(h.p.ask("what"))
            await eventually(lambda: h.sink.total >= 2 * FRAME)
            h.sink.played = FRAME
            second = asyncio.create_task(h.p.ask("time"))
            assert (await h.next_event(BargeIn)).heard == "One"
            h.sink.auto = True
            assert await first == "One" and await second == FULL
            assert h.chat.history == [
                Message("user", "what"),
                Message("assistant", "One", interrupted=True),
                Message("user", "time"),
                Message("assistant", FULL),
            ]

    asyncio.run(main())


def test_interrupt_while_thinking_ends_the_turn() -> None:
    """interrupt() before any word was heard ends the turn with an interrupted, empty ResponseDone."""

    async def main() -> None:
        gate = threading.Semaphore(0)
        async with Harness(chat=ScriptedChat(list(ANSWER), gate=gate)) as h:
            asked = asyncio.create_task(h.p.ask("what"))
            await eventually(lambda: h.chat.waiting)
            h.p.command("interrupt")
            for _ in range(len(ANSWER)):
                gate.release()  # the step in progress finishes; no later one runs
            done = await h.next_event(ResponseDone)
            assert done.interrupted and done.text == "" and await asked == ""
            await eventually(lambda: h.chat.closed == 1)
            assert h.chat.steps == 1
            assert h.chat.history == [Message("user", "what"), Message("assistant", "", interrupted=True)]
            assert h.p.core.state is TurnState.IDLE

    asyncio.run(main())


def test_history_reset_after_interrupt_is_empty() -> None:
    """history_reset() during a reply clears everything, the interrupted answer included (jobs stay in order)."""

    async def main() -> None:
        async with Harness(sink=FakeSink(auto=False)) as h:
            asked = asyncio.create_task(h.p.ask("what"))
            await eventually(lambda: h.sink.total >= 2 * FRAME)
            h.control.history_reset()
            await asked
            await eventually(lambda: h.chat.closed == 1)
            await h.p.compute.run(lambda: None)  # every job submitted before has run
            assert h.chat.history == []

    asyncio.run(main())


def test_end_of_turn_model_holds_a_thinking_pause_and_runs_off_the_loop() -> None:
    """With an end-of-turn model loaded, a pause it scores as mid-thought does not end the turn ("what time is
    ... it now" is one turn), and the model runs on a worker thread: neither the event loop nor the compute
    thread that owns MLX."""

    async def main() -> None:
        h = Harness()
        scored: list[tuple[int, int]] = []  # (thread, samples) per call

        def score(audio: np.ndarray) -> float:
            scored.append((threading.get_ident(), len(audio)))
            return 0.1 if len(scored) == 1 else 0.9

        h.engines.score_turn = score
        async with h:
            h.speak("what", "time", "is")
            h.silence(20)  # 400 ms: past the score point (180 ms) and the VAD's hangover, short of max_wait_ms
            await eventually(lambda: len(scored) == 1)
            await asyncio.sleep(0.05)  # the low score lands; the turn must stay open
            h.speak("it", "now")
            h.silence(20)
            final = await h.next_event(FinalTranscript)
            assert final.text == "what time is it now"
            assert len(h.of(FinalTranscript)) == 1 and len(scored) == 2
            threads = {t for t, _ in scored}
            assert threading.get_ident() not in threads and not threads & h.stt.threads
            # the first hears the turn so far (3 words of 4 blocks); the second the resumed segment (2 words) with
            # 200 ms before it, not the whole turn; each with the pause's first score_after_ms of silence
            after = h.p.cfg.endofturn.score_after_ms * CAPTURE_RATE // 1000
            assert [n for _, n in scored] == [3 * 4 * BLOCK + after, 2 * 4 * BLOCK + SCORE_LEAD_IN + after]

    asyncio.run(main())


def test_an_expected_error_is_logged_in_one_line_and_a_bug_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A failure of ours (a voice that cannot load: ConfigError) is logged as its one-line message, no traceback;
    an unexpected exception keeps its traceback; clients hear of both."""

    async def main() -> list[ErrorEvent]:
        async with Harness() as h:
            h.p.failed(ConfigError("voice 'x' cannot load; fix its profile"), "loading voice 'x'")
            h.p.failed(ZeroDivisionError("division by zero"), "handling microphone audio")
            return [await h.next_event(ErrorEvent), await h.next_event(ErrorEvent)]

    with caplog.at_level(logging.ERROR, logger="assistant.conversation"):
        told = asyncio.run(main())
    records = [r for r in caplog.records if r.name == "assistant.conversation"]
    assert [r.getMessage() for r in records] == [
        "error while loading voice 'x': voice 'x' cannot load; fix its profile",
        "error while handling microphone audio: division by zero",
    ]
    assert records[0].exc_info is None and records[1].exc_info is not None
    assert ["fix its profile" in told[0].message, "ZeroDivisionError" in told[1].message] == [True, True]
