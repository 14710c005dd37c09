"""The reply pump feeds the TTS just in time: the first word as soon as it is complete, then a token per frame."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.pipeline.doubles import ScriptedChat, WordTts, WordUtterance
from tests.pipeline.harness import Harness

TOKENS = ["It", " will", " be", " sunny", " and", " mild", " tomorrow", " morning", "."]


class StepLog(WordUtterance):
    """A WordUtterance that notes, for every frame it makes, how many LLM steps had run by then."""

    def __init__(self, text: str | None, chat: ScriptedChat) -> None:
        super().__init__(text)
        self.chat = chat
        self.steps_at_frame: list[int] = []

    def step(self, decode: bool | None = None) -> np.ndarray | None:
        out = super().step(decode)
        if out is not None:
            self.steps_at_frame.append(self.chat.steps)
        return out


class StepLogTts(WordTts):
    def __init__(self, chat: ScriptedChat) -> None:
        super().__init__()
        self.chat = chat

    def start(self, voice: object, text: str | None = None) -> WordUtterance:
        self.voices_started.append(voice)
        utt = StepLog(text, self.chat)
        self.utterances.append(utt)
        return utt


def test_first_word_reaches_the_tts_at_the_next_token_not_at_a_clause_end() -> None:
    """In the incremental text mode the TTS gets its first text when the first word is complete (the LLM's second
    token), not at a punctuation mark or after a number of words, and then speaks a frame after each token: the
    text it speaks is the whole answer, each word once."""

    async def main() -> None:
        chat = ScriptedChat(list(TOKENS))
        tts = StepLogTts(chat)
        async with Harness(chat=chat, tts=tts) as h:
            assert await h.p.ask("weather") == "".join(TOKENS)
            utt = tts.utterances[-1]
            assert isinstance(utt, StepLog)
            assert utt.consumed[0] == "It " and utt.steps_at_frame[0] == 2
            # just in time: one token, then the frame it completed (the last word waits for the end of the answer)
            assert utt.steps_at_frame[: len(TOKENS) - 2] == list(range(2, len(TOKENS)))
            assert "".join(utt.consumed) == "".join(TOKENS)

    asyncio.run(main())
