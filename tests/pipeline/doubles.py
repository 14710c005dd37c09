"""Scripted engine doubles for pipeline tests (tests only): words are encoded in the audio itself.

A 20 ms block whose samples all equal `100 * k` is the k-th word of WORDS; a block of 7s is noise (voiced for the
VAD, no word for the transcriber); zeros are silence. So the transcriber double "hears" exactly what was fed to
it, and a lost or duplicated feed shows up as a wrong transcript.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from assistant.config import VadConfig
from assistant.engines import Engines, VadEvent
from assistant.events import SilenceStarted, SpeechEnded, SpeechResumed, SpeechStarted

BLOCK = 320  # 20 ms at 16 kHz
FRAME = 240  # samples per TTS double frame (10 ms at 24 kHz)
WORDS = ["", "hello", "world", "stop", "now", "what", "time", "is", "it"]
NOISE = 7


def word_block(word: str) -> np.ndarray:
    return np.full(BLOCK, 100 * WORDS.index(word), dtype=np.int16)


def noise_block() -> np.ndarray:
    return np.full(BLOCK, NOISE, dtype=np.int16)


def silence_block() -> np.ndarray:
    return np.zeros(BLOCK, dtype=np.int16)


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str


class WordTranscriber:
    """Hears one word per run of samples equal to 100*k; partial = the words so far when they changed."""

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.fed_samples = 0
        self.warmed = False
        self._words: list[str] = []
        self._last = 0

    def warmup(self) -> None:
        self.threads.add(threading.get_ident())
        self.warmed = True

    def reset(self) -> None:
        self.threads.add(threading.get_ident())
        self._words = []
        self._last = 0

    def feed(self, audio: np.ndarray) -> str | None:
        self.threads.add(threading.get_ident())
        self.fed_samples += len(audio)
        before = len(self._words)
        values = np.asarray(audio, dtype=np.int64)
        change = np.flatnonzero(np.diff(np.concatenate([[self._last], values])) != 0)
        for i in change:
            v = int(values[i])
            if v and v % 100 == 0:
                self._words.append(WORDS[v // 100])
        if len(values):
            self._last = int(values[-1])
        return " ".join(self._words) if len(self._words) != before else None

    def finalize(self) -> Transcript:
        self.threads.add(threading.get_ident())
        text = " ".join(self._words)
        self.reset()
        return Transcript(text, "en")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    interrupted: bool = False


class ScriptedChat:
    """Answers every prompt with `tokens`, one per next(); can fail at a step or wait on a gate per step.

    Mirrors the real `Chat` contract: respond() records the user message at once (and first records an answer
    still open, whole); finish_turn() records the answer, cancelling it if it still runs.
    """

    def __init__(
        self,
        tokens: list[str],
        fail_at: int | None = None,
        gate: threading.Semaphore | None = None,
        max_history: int | None = None,
        error: type[Exception] = ValueError,
    ):
        self.tokens = tokens
        self.can_call_tools = False  # no set_tools: it makes no tool calls
        self.warmed = False
        self.error = error  # what the failure at `fail_at` raises
        self.max_history = max_history  # like llm.history_tokens: the oldest turns are dropped
        self.fail_at = fail_at
        self.gate = gate
        self.history: list[Message] = []
        self.prompts: list[str] = []
        self.steps = 0
        self.closed = 0
        self.waiting = False  # blocked on the gate, inside a step
        self.threads: set[int] = set()
        self._answer: list[str] | None = None
        self._complete = False
        self._active: Iterator[str] | None = None

    def warmup(self) -> None:
        self.warmed = True

    def respond(self, user_text: str) -> Iterator[str]:
        self.threads.add(threading.get_ident())
        text = user_text.strip()
        if not text:
            raise ValueError("the user message is empty")
        if self._answer is not None:
            self.finish_turn(None)
        self.prompts.append(text)
        self.history.append(Message("user", text))
        if self.max_history is not None:
            del self.history[: -self.max_history]
            del self.prompts[: -self.max_history]
        self._answer, self._complete = [], False
        self._active = self._generate(self._answer)
        return self._active

    def _generate(self, answer: list[str]) -> Iterator[str]:
        try:
            for i, tok in enumerate(self.tokens):
                if self.gate is not None:
                    self.waiting = True
                    self.gate.acquire()
                    self.waiting = False
                self.threads.add(threading.get_ident())
                self.steps += 1
                if self.fail_at is not None and i == self.fail_at:
                    self.fail_at = None  # fail once
                    raise self.error("scripted failure")
                answer.append(tok)
                yield tok
            self._complete = True
        finally:
            self.closed += 1

    def finish_turn(self, heard_text: str | None) -> None:
        self.threads.add(threading.get_ident())
        if self._active is not None:
            self._active.close()  # type: ignore[attr-defined]
            self._active = None
        if self._answer is None:
            return
        full = "".join(self._answer).strip()
        self._answer = None
        heard = full if heard_text is None else heard_text.strip()
        self.history.append(Message("assistant", heard, interrupted=heard != full or not self._complete))

    def discard_answer(self) -> None:
        self.threads.add(threading.get_ident())
        if self._active is not None:
            self._active.close()  # type: ignore[attr-defined]
            self._active = None
        if self._answer is None:
            return
        self._answer = None
        if self.history and self.history[-1].role == "user":
            self.history.pop()

    def revise_answer(self, recorded: str, heard: str) -> bool:
        for i in range(len(self.history) - 1, -1, -1):
            if self.history[i].role == "assistant" and self.history[i].content.strip() == recorded.strip():
                self.history[i] = Message("assistant", heard.strip(), interrupted=True)
                return True
        return False

    def reset(self) -> None:
        self.history.clear()

    def set_system_prompt(self, text: str) -> None:
        self.system_prompt = text

    def set_temperature(self, value: float) -> None:
        self.temperature = value


class WordUtterance:
    """Consumes one pushed text piece per frame (FRAME samples); stalls when no text is pending.

    Like the real Utterance, `waiting_for_text` tells what the last step() found (it stays set after end_text()
    until the next step).
    """

    def __init__(self, text: str | None, gate: threading.Semaphore | None = None) -> None:
        self.pending: deque[str] = deque()
        self.ended = False
        self.done = False
        self.frames_emitted = 0
        self.waiting_for_text = False
        self.blocked = False  # inside step(), waiting on the gate
        self.consumed: list[str] = []
        self.gate = gate
        if text is not None:
            self.pending.extend(text.split(" "))
            self.ended = True

    def push_text(self, text: str) -> None:
        self.pending.append(text)

    def end_text(self) -> None:
        self.ended = True

    def step(self, decode: bool | None = None) -> np.ndarray | None:  # a chunk per frame: `decode` changes nothing
        if self.gate is not None:
            self.blocked = True
            self.gate.acquire()
            self.blocked = False
        self.waiting_for_text = False
        if self.pending:
            self.consumed.append(self.pending.popleft())
            self.frames_emitted += 1
            return np.full(FRAME, 0.1, dtype=np.float32)
        if self.ended:
            self.done = True
        else:
            self.waiting_for_text = True
        return None


@dataclass(frozen=True)
class VoiceProfileDouble:
    mode: str = "custom_voice"


class WordTts:
    sample_rate = 24000
    model_type = "custom_voice"
    speakers = languages = None  # any speaker and language
    VOICES = ("default", "alice")

    def __init__(self, gate: threading.Semaphore | None = None) -> None:
        self.warmed = False
        self.utterances: deque[WordUtterance] = deque(maxlen=16)
        self.voices_started: list[object] = []  # the voice handle of each start(), in order
        self.gate = gate

    def warmup(self) -> None:
        self.warmed = True

    def voice_names(self) -> list[str]:
        return list(self.VOICES)

    def profiles(self) -> dict[str, VoiceProfileDouble]:
        return {name: VoiceProfileDouble() for name in self.VOICES}

    def voice(self, name: str | None = None) -> str:
        return name or "default"

    def start(self, voice: object, text: str | None = None) -> WordUtterance:
        self.voices_started.append(voice)
        utt = WordUtterance(text, self.gate)
        self.utterances.append(utt)
        return utt


class FakeSink:
    """Plays instantly (`auto`) or only as far as the test says (`played`); logs writes and flushes."""

    def __init__(self, auto: bool = True) -> None:
        self.auto = auto
        self.total = 0  # samples written since the last flush
        self.played = 0
        self.written_all = 0
        self.flushes = 0
        self.log: list[tuple[str, int]] = []
        self.on_write: list[object] = []  # whatever the test wants recorded per write
        self.probe = lambda: None
        self.first_sample_dac_time: float | None = None
        self.underruns = 0
        self.last_sample_time: float | None = None

    def level_at(self, t: float) -> float:
        """Audible while written audio is still unplayed (the double has no history: now stands for `t`)."""
        return -20.0 if self.played_samples < self.total else -120.0

    def write(self, chunk: np.ndarray) -> None:
        assert chunk.dtype == np.float32
        if self.total == 0 and self.first_sample_dac_time is None:
            self.first_sample_dac_time = time.monotonic()  # "reaches the DAC" at once
        self.total += len(chunk)
        self.written_all += len(chunk)
        self.log.append(("write", len(chunk)))
        self.on_write.append(self.probe())

    def flush(self) -> None:
        self.flushes += 1
        self.log.append(("flush", self.total))
        self.first_sample_dac_time = None
        self.total = 0
        self.played = 0

    @property
    def played_samples(self) -> int:
        return self.total if self.auto else min(self.played, self.total)


class RuleVad:
    """A VAD double: voiced = any non-zero sample in a 20 ms block; hangover and stricter start in blocks."""

    def __init__(self, cfg: VadConfig, hangover_blocks: int = 5, barge_blocks: int = 3) -> None:
        self.hangover_blocks = hangover_blocks
        self.barge_blocks = barge_blocks
        self.playback = False
        self.ended = 0
        self.resets = 0
        self.preroll = 16 * cfg.preroll_ms
        self.pos = 0
        self._clear()

    def _clear(self) -> None:
        self.state = "quiet"
        self.run = 0
        self.onset = 0
        self.start = 0
        self.silence_at = 0
        self.silent = 0

    def reset(self, origin: int = 0) -> None:
        """Like the real Vad, positions restart at `origin`."""
        self.resets += 1
        self.pos = origin
        self._clear()

    def set_playback(self, active: bool, level_dbfs: float = -120.0, linear: bool = False) -> None:
        self.playback = active

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        out: list[VadEvent] = []
        for i in range(0, len(samples), BLOCK):
            frame = samples[i : i + BLOCK]
            voiced = bool(np.any(frame != 0))
            at, now = self.pos, time.monotonic()
            self.pos += len(frame)
            if self.state == "quiet":
                if not voiced:
                    self.run = 0
                    continue
                if self.run == 0:
                    self.onset = at
                self.run += 1
                if self.run >= (self.barge_blocks if self.playback else 1):
                    self.start = max(0, self.onset - self.preroll)
                    self.state = "speaking"
                    out.append(SpeechStarted(self.start, self.onset, now))
            elif self.state == "speaking":
                if not voiced:
                    self.state, self.silence_at, self.silent = "stopping", at, 1
                    out.append(SilenceStarted(at, now))
            elif voiced:
                self.state = "speaking"
                out.append(SpeechResumed(at, now))
            else:
                self.silent += 1
                if self.silent >= self.hangover_blocks:
                    out.append(SpeechEnded(self.start, self.silence_at, now))
                    self.ended += 1
                    self._clear()
        return out


def make_engines(
    chat: ScriptedChat, stt: WordTranscriber | None = None, tts: WordTts | None = None, **vad_kw: int
) -> tuple[Engines, list[RuleVad]]:
    vads: list[RuleVad] = []

    def make_vad(cfg: VadConfig) -> RuleVad:
        vads.append(RuleVad(cfg, **vad_kw))
        return vads[-1]

    return Engines(stt or WordTranscriber(), chat, tts or WordTts(), None, make_vad), vads


class ToolChat:
    """A scripted chat that makes tool calls in the Hermes JSON format: one token list per generation.

    Mirrors the real `Chat`'s tool contract: `continue_with_results` records the speech before the calls, the
    calls and their results, then generates the next script; `last_turn`/`restore` serve the memory store.
    """

    def __init__(self, scripts: list[list[str]]) -> None:
        from assistant.tools.calls import HERMES

        self.tool_format = HERMES
        self.can_call_tools = True
        self.scripts = deque(scripts)
        self.history: list[Any] = []
        self.results: list[list[tuple[Any, str]]] = []  # each tool round's results as the model got them
        self.tools: list[Any] = []
        self.choice: Any = None
        self.system_prompt = ""
        self._answer: list[str] | None = None
        self._active: Iterator[str] | None = None

    def set_tools(self, schemas: list[Any], choice: Any = None) -> bool:
        self.tools = list(schemas)
        self.choice = choice
        return True

    def set_system_prompt(self, text: str) -> None:
        self.system_prompt = text

    def set_temperature(self, value: float) -> None:
        self.temperature = value

    def _start(self) -> Iterator[str]:
        answer: list[str] = []
        self._answer = answer
        tokens = self.scripts.popleft() if self.scripts else ["Done."]

        def gen() -> Iterator[str]:
            for tok in tokens:
                answer.append(tok)
                yield tok

        self._active = gen()
        return self._active

    def warmup(self) -> None:
        self.warmed = True

    def respond(self, user_text: str) -> Iterator[str]:
        from assistant.llm import Message as LlmMessage

        self.history.append(LlmMessage("user", user_text.strip()))
        return self._start()

    def continue_with_results(self, said: str, results: list[tuple[Any, str]]) -> Iterator[str]:
        from assistant.llm import Message as LlmMessage

        self.results.append(list(results))
        self.history.append(LlmMessage("assistant", said.strip(), tool_calls=tuple(c for c, _ in results)))
        self.history += [LlmMessage("tool", text, tool_call_id=c.id, name=c.name) for c, text in results]
        return self._start()

    def finish_turn(self, heard_text: str | None) -> None:
        from assistant.llm import Message as LlmMessage

        if self._active is not None:
            self._active.close()  # type: ignore[attr-defined]
            self._active = None
        if self._answer is None:
            return
        full = "".join(self._answer).strip()
        self._answer = None
        heard = full if heard_text is None else heard_text.strip()
        self.history.append(LlmMessage("assistant", heard, interrupted=heard != full))

    def discard_answer(self) -> None:
        self._answer = None
        starts = [i for i, m in enumerate(self.history) if m.role == "user"]
        if starts:
            del self.history[starts[-1] :]

    def revise_answer(self, recorded: str, heard: str) -> bool:
        return False

    def reset(self) -> None:
        self.history.clear()

    def last_turn(self) -> list[Any]:
        starts = [i for i, m in enumerate(self.history) if m.role == "user"]
        return list(self.history[starts[-1] :]) if starts else []

    def restore(self, messages: list[Any]) -> int:
        self.history = list(messages)
        return 0
