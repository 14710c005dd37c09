"""The frame loop (spec 2.4): one talker step + 15 predictor steps per frame, with text arriving as it comes.

`FrameGenerator.step()` does at most one frame of work and returns its 16 codes, or None when it must wait
for text (`waiting_for_text`) or has finished (`done`). Incremental text consumes exactly one text vector per
frame and stalls rather than feeding tts_pad mid-sentence; tts_pad only ever follows tts_eos.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import mlx.core as mx
import numpy as np

from assistant.tts.qwen3.prompt import PromptBuilder, TextTrack, VoicePrompt
from assistant.tts.qwen3.sampling import NOISE_FRAMES, SamplingParams, first_code, new_key, noise_block, suppress_mask
from assistant.tts.qwen3.talker import Talker
from assistant.tts.qwen3.tokenizer import TextTokenizer

Layout = Literal["stream", "full"]


@dataclass(frozen=True, eq=False)
class PrefixState:
    """The voice part of the prefill and its KV state (per layer the whole static-cache buffers, positions past
    `length` zero), computed once per voice."""

    prompt: VoicePrompt
    length: int
    kv: list[mx.array]

    @classmethod
    def compute(cls, talker: Talker, builder: PromptBuilder, prompt: VoicePrompt) -> PrefixState:
        x = builder.prefix(prompt)
        cache = talker.make_cache()
        talker(x[None], cache)
        kv = [c.kv for c in cache if c.kv is not None]
        mx.eval(kv)
        return cls(prompt, x.shape[0], kv)

    def restore(self, talker: Talker) -> list[Any]:
        """A fresh cache holding the prefix, sharing the snapshot's buffers (no operation per layer at an
        utterance's start); every cache write makes new arrays, so the snapshot is never written to."""
        cache = talker.make_cache()
        for c, kv in zip(cache, self.kv, strict=True):
            c.share(kv, self.length)
        return cache


class TextFeed:
    """Text pieces in, committed token ids out: only tokens that more text can no longer change (spec 2.4)."""

    def __init__(self, tokenizer: TextTokenizer, track: TextTrack):
        self.tok, self.track = tokenizer, track
        self.text = ""
        self.committed_chars = 0
        self.own: list[int] = []  # target-text ids committed so far (track.ids may also hold the ICL reference)
        self.ends: list[int] = []  # per own token: where it ends in the pushed text (characters)

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

    def chars_of(self, tokens: int) -> int:
        """Characters of the pushed text (leading whitespace included) covered by the first `tokens` tokens."""
        if tokens <= 0:
            return 0
        lead = len(self.text) - len(self.text.lstrip())
        return lead + self.ends[min(tokens, len(self.ends)) - 1]

    def _commit(self, text: str) -> None:
        ids, ends = self.tok.encode_with_ends(text)
        if ids[: len(self.own)] != self.own:  # cannot happen for regex-stable prefixes; guard the invariant
            raise RuntimeError("incremental tokenization changed committed tokens")
        new = ids[len(self.own) :]
        self.ends.extend(ends[len(self.own) :])
        self.own.extend(new)
        self.track.ids.extend(new)
        self.committed_chars = len(text)


class FrameKernel:
    """Code 0 sampled from the talker's last hidden state, the 15 predictor steps and the frame's embedding for
    the next talker step: one compiled graph per sampling setup, nothing read back to the host inside it."""

    def __init__(self, talker: Talker, p: SamplingParams):
        self.talker, self.p = talker, p
        tc = talker.cfg
        self.suppress = suppress_mask(tc.vocab_size, tc.codec_eos_token_id)
        self.groups, self.sub_vocab = tc.num_code_groups, tc.code_predictor_config.vocab_size
        self.samples = p.temperature > 0 or p.subtalker_temperature > 0  # else greedy: no noise
        self.noise_width = max(tc.vocab_size, self.sub_vocab)
        self.no_text = mx.zeros((tc.hidden_size,), talker.model.codec_embedding.weight.dtype)
        self.no_codes = mx.full((self.groups,), -1, dtype=mx.int32)  # before the first frame: no code 0 yet
        # constants of the compiled graph (evaluated once, not an arange kernel per frame)
        self.ids = mx.arange(tc.vocab_size)
        # code g's slot as a constant mask: a compare per code in the graph put one chain past MLX's fusion depth
        self.slots = [mx.arange(self.groups) == g for g in range(self.groups)]
        mx.eval(self.ids, self.slots, self.no_text, self.no_codes)
        self.fn = mx.compile(self._frame)
        # compiled: the Gumbel transform's elementwise ops fuse into one kernel
        self.noise_fn = mx.compile(lambda key: noise_block(key, NOISE_FRAMES, self.groups, self.noise_width))

    @classmethod
    def of(cls, talker: Talker, p: SamplingParams) -> FrameKernel:
        """The talker's kernel for these sampling values (seed and min_new_tokens are inputs, not part of it)."""
        shape = replace(p, seed=None, min_new_tokens=0)
        return cast(FrameKernel, talker.compiled.get(("frame", shape), lambda: cls(talker, shape)))

    def noise(self, key: mx.array) -> tuple[mx.array, mx.array]:
        """A block of NOISE_FRAMES frames' noise for `__call__` (lazy) and the next key."""
        noise, key = self.noise_fn(key)
        return noise, key

    def _frame(
        self, h: mx.array, seen: mx.array, last: mx.array, eos_blocked: mx.array, noise: mx.array | None, text: mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        if self.p.repetition_penalty != 1.0:  # the last frame's code 0 joins the window: it fuses with the penalty
            seen = seen | (self.ids == last[:1])
        # 2-D: MLX CUDA's qmm rejects 1-D x; [0, :] is a view where [0] would be a gather kernel
        logits = self.talker.codec_head(h[None])[0, :].astype(mx.float32)
        vocab = logits.shape[-1]
        c0_noise = rest_noise = None
        if noise is not None:  # [1, groups, width] rows: code 0, then codes 1..15
            c0_noise, rest_noise = noise[0, 0, :vocab], noise[0, 1:, : self.sub_vocab]
        c0 = first_code(logits, seen, eos_blocked, c0_noise, self.p, self.suppress)
        rest, frame_e = self.talker.code_predictor.predict(h, self.talker.codec(c0)[0, :], rest_noise, self.p)
        # the codes gathered by a chain of selects, which compile fuses (a concatenation copies every input)
        codes = mx.broadcast_to(c0, (self.groups,))
        for g, code in enumerate(rest, start=1):
            codes = mx.where(self.slots[g], code, codes)
        # the talker's next input summed here, in the talker's order, where its step spent a kernel on it
        return codes.astype(mx.int32), (frame_e + text[None])[0, :], seen  # added before the view: it fuses

    def __call__(
        self,
        h: mx.array,
        seen: mx.array,
        last: mx.array | None,
        eos_blocked: bool,
        noise: mx.array | None,
        text: mx.array | None = None,
    ) -> tuple[mx.array, mx.array, mx.array]:
        """(codes int32 [16], E(codes) + text [hidden] (the talker's next input; E(codes) where `text` is None),
        the penalty window), all lazy. `seen` (bool [vocab]) holds the code-0 tokens of the frames before `last`
        (the previous frame's codes; None for the first frame), and the window returned those up to this frame's
        own (the next call's `seen`, with these codes as its `last`). `noise`: one frame of a `noise` block,
        [1, groups, width] (None when greedy); `text`: the frame's text-track vector where it is known at launch."""
        last = self.no_codes if last is None else last
        text = self.no_text if text is None else text
        return self.fn(h, seen, last, mx.array(eos_blocked), noise if self.samples else None, text)


class FrameGenerator:
    """Codes of one utterance, frame by frame. Whole text (layout 'full' or 'stream') or incremental text.

    Per frame: one talker step, then the compiled FrameKernel, then a single evaluation whose only transfer to
    the host is the 16 codes (the EOS test and the decoder need them).
    """

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
        self.kernel = FrameKernel.of(talker, sampling)
        self.min_new_tokens = sampling.min_new_tokens
        self.key = new_key(sampling.seed)
        self.noise: mx.array | None = None  # the current block of NOISE_FRAMES frames' noise
        self.seen = mx.zeros((tc.vocab_size,), dtype=mx.bool_)  # earlier code-0 tokens: the penalty window (all)
        self.last: mx.array | None = None  # the last launched frame's codes (its code 0 is not in `seen` yet)
        self.sampled = 0  # first-codebook tokens sampled and read so far
        self.launched = 0  # ... and queued (one more while a frame is queued ahead)
        # the next frame, queued before this one was read: codes, the talker's next input, whether it holds the text
        self.ahead: tuple[mx.array, mx.array, bool] | None = None
        self.max_new_tokens = max_new_tokens
        self.track = TextTrack()
        self.feed = TextFeed(builder.tok, self.track)
        self.layout: Layout = layout if text is not None else "stream"
        self.cache: list[Any] | None = None
        self.h_last: mx.array | None = None
        self.pending: tuple[mx.array, bool] | None = None  # the last frame's talker input, still to be fed
        self.first_consumed = 0  # target-text tokens the prefill consumed (all of them in whole-text layouts)
        self.frames_emitted = 0
        self.done = False
        self.waiting_for_text = False
        if text is not None:
            if self.layout == "full":
                self.full_ids = builder.tok.encode(text.strip())
                self.feed.push(text)
            else:
                self.feed.push(text)
            self.feed.end()

    def push_text(self, piece: str) -> None:
        self.feed.push(piece)
        self.waiting_for_text = False  # re-evaluated by the next step()

    def end_text(self) -> None:
        self.feed.end()
        self.waiting_for_text = False

    def chars_at_frame(self, frame: int) -> int:
        """Characters of the text pushed so far that the talker had consumed when it produced codec frame
        `frame` (0-based): the prefill's text tokens, then one text token per frame (spec 2.4)."""
        if self.cache is None or frame < 0:
            return 0
        n = min(len(self.feed.own), self.first_consumed + frame)
        return self.feed.chars_of(n)

    def _forward(self, x: mx.array, plus: mx.array | None = None) -> None:
        """One talker pass over x (+ plus) [n, hidden]; h_last = the post-norm hidden state of its last position
        (lazy). A single position (every frame after the prefill) runs the compiled static-cache step; the frame
        kernel has summed E(frame) and the text vector already where the text was known at its launch."""
        assert self.cache is not None
        x = x if plus is None else x + plus
        if x.shape[0] == 1:
            self.h_last = self.talker.step(x[0, :], self.cache)
        else:
            self.h_last = self.talker(x[None], self.cache)[0, -1, :]

    def _prefill(self) -> bool:
        vp = self.prefix.prompt
        if self.layout == "full":
            tail = self.builder.full_tail(vp, self.full_ids, self.track)
            self.first_consumed = len(self.feed.own)
        else:
            maybe = self.builder.stream_tail(vp, self.track)
            if maybe is None:
                if self.track.ended:  # no text at all
                    self.done = True
                return False
            tail = maybe
            ref = len(self.track.ids) - len(self.feed.own)  # ICL: the reference transcript leads the track
            self.first_consumed = len(self.feed.own) if not self.track.ids else max(0, self.track.consumed - ref)
        self.cache = self.prefix.restore(self.talker)
        self._forward(tail)
        return True

    def _launch(self) -> tuple[mx.array, mx.array, bool]:
        """Queue the frame kernel on the talker pass that set h_last: (codes, the talker's next input, whether
        that holds the text vector), evaluating async."""
        assert self.h_last is not None
        eos_blocked = self.launched < self.min_new_tokens
        noise, at = None, self.launched % NOISE_FRAMES
        if self.kernel.samples:
            if at == 0:
                self.noise, self.key = self.kernel.noise(self.key)
            assert self.noise is not None
            noise = self.noise[at : at + 1]  # a view: a[i] would be a gather kernel
        text = self.builder.trailing(self.track, self.launched)  # frame k's text is row k (or not known yet)
        frame, nxt, self.seen = self.kernel(self.h_last, self.seen, self.last, eos_blocked, noise, text)
        self.last = frame
        self.launched += 1
        mx.async_eval(frame, nxt, self.seen)
        return frame, nxt, text is not None

    def step(self) -> np.ndarray | None:
        """At most one frame of work: returns codes [16] int32, or None (waiting for text, or done).

        After the first frame, the next frame's talker pass and kernel are queued before this frame's codes are
        read (when its text vector is known), so building one frame's graph overlaps the device computing the
        previous one; a frame queued past EOS is dropped.
        """
        if self.done:
            return None
        if self.ahead is None:
            if self.cache is None:
                if not self._prefill():
                    self.waiting_for_text = not self.done
                    return None
            elif self.pending is not None:
                text_vec = self.builder.trailing(self.track, self.frames_emitted - 1)
                if text_vec is None:
                    self.waiting_for_text = True
                    return None
                nxt, has_text = self.pending
                self._forward(nxt, None if has_text else text_vec)
                self.pending = None
            self.ahead = self._launch()
        self.waiting_for_text = False
        frame, nxt, has_text = self.ahead
        self.ahead = None
        self.sampled += 1
        text_vec = self.builder.trailing(self.track, self.frames_emitted)
        if self.frames_emitted > 0 and self.sampled < self.max_new_tokens and text_vec is not None:
            # frame 0 is read at once: first audio waits for nothing else
            self._forward(nxt[None], None if has_text else text_vec)
            self.ahead = self._launch()
        else:
            self.pending = nxt[None], has_text
        codes = np.array(frame)
        if codes[0] == self.talker.cfg.codec_eos_token_id or self.sampled >= self.max_new_tokens:
            self.done = True  # the EOS frame, and the last token at max_new_tokens, are never decoded
            self.ahead = self.pending = None
            return None
        self.frames_emitted += 1
        return codes


def generate_codes(gen: FrameGenerator) -> Iterator[np.ndarray]:
    """All frames of a generator whose text is complete."""
    while not gen.done:
        frame = gen.step()
        if frame is not None:
            yield frame
        elif gen.waiting_for_text:
            raise ValueError("generate_codes needs the whole text; call end_text() first")
