"""The frame loop (spec 2.4): one talker step + 15 predictor steps per frame, with text arriving as it comes.

`FrameGenerator.step()` does at most one frame of work and returns its 16 codes, or None when it must wait
for text (`waiting_for_text`) or has finished (`done`). Incremental text consumes exactly one text vector per
frame and stalls rather than feeding tts_pad mid-sentence; tts_pad only ever follows tts_eos.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import mlx.core as mx
import numpy as np

from assistant.tts.qwen3.prompt import PromptBuilder, TextTrack, VoicePrompt
from assistant.tts.qwen3.sampling import Sampler, SamplingParams
from assistant.tts.qwen3.talker import Talker
from assistant.tts.qwen3.tokenizer import TextTokenizer

Layout = Literal["stream", "full"]


@dataclass(frozen=True, eq=False)
class PrefixState:
    """The voice part of the prefill and its KV state (per layer keys/values), computed once per voice."""

    prompt: VoicePrompt
    length: int
    kv: list[tuple[mx.array, mx.array]]

    @classmethod
    def compute(cls, talker: Talker, builder: PromptBuilder, prompt: VoicePrompt) -> PrefixState:
        x = builder.prefix(prompt)
        cache = talker.make_cache()
        talker(x[None], cache)
        kv = [(c.keys[..., : c.offset, :], c.values[..., : c.offset, :]) for c in cache]
        mx.eval(kv)
        return cls(prompt, x.shape[0], kv)

    def restore(self, talker: Talker) -> list[Any]:
        """A fresh cache holding the prefix; the snapshot itself is never written to (slices are copies)."""
        cache = talker.make_cache()
        for c, (k, v) in zip(cache, self.kv, strict=True):
            c.state = (k, v, self.length)
        return cache


class TextFeed:
    """Text pieces in, committed token ids out: only tokens that more text can no longer change (spec 2.4)."""

    def __init__(self, tokenizer: TextTokenizer, track: TextTrack):
        self.tok, self.track = tokenizer, track
        self.text = ""
        self.committed_chars = 0
        self.own: list[int] = []  # target-text ids committed so far (track.ids may also hold the ICL reference)

    def push(self, piece: str) -> None:
        if self.track.ended:
            raise ValueError("push_text after end_text")
        self.text += piece
        text = self.text.lstrip()
        stable = self.tok.stable_prefix(text)
        if stable > self.committed_chars:
            self._commit(text[:stable])

    def end(self) -> None:
        if not self.track.ended:
            self._commit(self.text.strip())
            self.track.ended = True

    def _commit(self, text: str) -> None:
        ids = self.tok.encode(text)
        if ids[: len(self.own)] != self.own:  # cannot happen for regex-stable prefixes; guard the invariant
            raise RuntimeError("incremental tokenization changed committed tokens")
        new = ids[len(self.own) :]
        self.own.extend(new)
        self.track.ids.extend(new)
        self.committed_chars = len(text)


class FrameGenerator:
    """Codes of one utterance, frame by frame. Whole text (layout 'full' or 'stream') or incremental text."""

    def __init__(
        self,
        talker: Talker,
        builder: PromptBuilder,
        prefix: PrefixState,
        sampling: SamplingParams,
        max_new_tokens: int,
        text: str | None = None,
        layout: Layout = "stream",
    ):
        self.talker, self.builder, self.prefix = talker, builder, prefix
        tc = talker.cfg
        self.sampler = Sampler(sampling, tc.vocab_size, tc.codec_eos_token_id)
        self.max_new_tokens = max_new_tokens
        self.track = TextTrack()
        self.feed = TextFeed(builder.tok, self.track)
        self.layout: Layout = layout if text is not None else "stream"
        self.cache: list[Any] | None = None
        self.history: list[int] = []  # sampled first-codebook tokens (the repetition-penalty window: all)
        self.h_last: mx.array | None = None
        self.logits: np.ndarray | None = None
        self.pending: np.ndarray | None = None  # last frame, still to be fed to the talker
        self.frames_emitted = 0
        self.done = False
        self.waiting_for_text = False
        if text is not None:
            if self.layout == "full":
                self.full_ids = builder.tok.encode(text.strip())
            else:
                self.feed.push(text)
                self.feed.end()

    def push_text(self, piece: str) -> None:
        self.feed.push(piece)
        self.waiting_for_text = False  # re-evaluated by the next step()

    def end_text(self) -> None:
        self.feed.end()
        self.waiting_for_text = False

    def _forward(self, x: mx.array) -> None:
        assert self.cache is not None
        h = self.talker(x[None], self.cache)[:, -1, :]
        logits = self.talker.codec_head(h).astype(mx.float32)
        mx.eval(h, logits)
        self.h_last, self.logits = h[0], np.array(logits[0])

    def _prefill(self) -> bool:
        vp = self.prefix.prompt
        if self.layout == "full":
            tail = self.builder.full_tail(vp, self.full_ids, self.track)
        else:
            maybe = self.builder.stream_tail(vp, self.track)
            if maybe is None:
                if self.track.ended:  # no text at all
                    self.done = True
                return False
            tail = maybe
        self.cache = self.prefix.restore(self.talker)
        self._forward(tail)
        return True

    def step(self) -> np.ndarray | None:
        """At most one frame of work: returns codes [16] int32, or None (waiting for text, or done)."""
        if self.done:
            return None
        if self.cache is None:
            if not self._prefill():
                self.waiting_for_text = not self.done
                return None
        elif self.pending is not None:
            text_vec = self.builder.trailing(self.track, self.frames_emitted - 1)
            if text_vec is None:
                self.waiting_for_text = True
                return None
            frame_e = self.talker.frame_embedding(mx.array(self.pending[None], dtype=mx.int32))
            self._forward(frame_e + text_vec)
            self.pending = None
        self.waiting_for_text = False
        assert self.logits is not None and self.h_last is not None
        c0 = self.sampler.first_code(self.logits, self.history)
        self.history.append(c0)
        if c0 == self.talker.cfg.codec_eos_token_id or len(self.history) >= self.max_new_tokens:
            self.done = True  # the EOS frame, and the last token at max_new_tokens, are never decoded
            return None
        rest = self.talker.code_predictor.predict(self.h_last, self.talker.codec([c0])[0], self.sampler.sub_code)
        frame = np.array([c0, *rest], dtype=np.int32)
        self.pending = frame
        self.frames_emitted += 1
        return frame


def generate_codes(gen: FrameGenerator) -> Iterator[np.ndarray]:
    """All frames of a generator whose text is complete."""
    while not gen.done:
        frame = gen.step()
        if frame is not None:
            yield frame
        elif gen.waiting_for_text:
            raise ValueError("generate_codes needs the whole text; call end_text() first")
