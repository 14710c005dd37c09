"""Prefill layouts of the talker (spec 2.3): the voice prefix, the text tail, and the trailing text track.

Notation: P(ids) = text_projection(text_embedding(ids)), C(ids) = talker codec embedding, E(frame) = the summed
frame embedding. The voice prefix ([instruct] + role + the codec block aligned with tts_pad/tts_bos) does not
depend on the text, so its KV state is computed once per voice and reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from assistant.errors import InputError, ModelError
from assistant.tts.qwen3.config import ModelConfig
from assistant.tts.qwen3.talker import Talker
from assistant.tts.qwen3.tokenizer import TextTokenizer

ROLE = "<|im_start|>assistant\n"


@dataclass(frozen=True, eq=False)
class VoicePrompt:
    """What the prefill needs from a voice; xvector/ref_codes come from the clone front ends (or fixtures)."""

    language: str = "auto"
    speaker: str | None = None  # CustomVoice preset
    instruct: str = ""  # VoiceDesign description, or CustomVoice style (1.7B only)
    xvector: np.ndarray | None = None  # Base clone: [hidden] speaker-encoder output
    ref_codes: np.ndarray | None = None  # ICL clone: [T, 16] reference codes
    ref_text: str = ""  # ICL clone: transcript of the reference clip

    @property
    def icl(self) -> bool:
        return self.ref_codes is not None


@dataclass
class TextTrack:
    """Text ids of the streaming layout; vector k of the trailing track is ids[consumed + k], then tts_eos, then
    tts_pad. None = not known yet (stall). Whole-text layouts use an empty, ended track past its eos."""

    ids: list[int] = field(default_factory=list)
    consumed: int = 0
    ended: bool = False
    rows: list[mx.array] = field(default_factory=list, repr=False, compare=False)  # P(ids[i]), views, in batches
    rows_of: list[int] | None = field(default=None, repr=False, compare=False)  # the ids list `rows` belongs to

    def kind(self, k: int) -> int | str | None:
        i = self.consumed + k
        if i < len(self.ids):
            return self.ids[i]
        if not self.ended:
            return None
        return "eos" if i == len(self.ids) else "pad"


class PromptBuilder:
    def __init__(self, talker: Talker, cfg: ModelConfig, tokenizer: TextTokenizer):
        self.talker, self.cfg, self.tok = talker, cfg, tokenizer
        tc = cfg.talker_config
        specials = talker.text([cfg.tts_bos_token_id, cfg.tts_eos_token_id, cfg.tts_pad_token_id])
        self.bos_e, self.eos_e, self.pad_e = specials[0], specials[1], specials[2]
        self.tc = tc

    def check(self, vp: VoicePrompt) -> None:
        """Unknown speakers or languages fail listing the valid ones."""
        lang = vp.language.lower()
        if lang not in self.cfg.languages:
            raise InputError(f"unknown language {vp.language!r}; use one of: {', '.join(self.cfg.languages)}")
        if vp.speaker and vp.speaker.lower() not in self.tc.spk_id:
            valid = ", ".join(self.cfg.speakers) or "none (this model has no preset speakers)"
            raise InputError(f"unknown speaker {vp.speaker!r}; this model's speakers: {valid}")
        if vp.xvector is not None and self.cfg.tts_model_type != "base":
            raise InputError(f"voice cloning needs a Base model, this one is {self.cfg.tts_model_type}; set tts.model")
        if vp.speaker and self.cfg.tts_model_type != "custom_voice":
            raise InputError(f"preset speakers need a CustomVoice model, this one is {self.cfg.tts_model_type}")

    def prefix(self, vp: VoicePrompt) -> mx.array:
        """[instruct] + role + codec prefix aligned with tts_pad.../tts_bos (codec_bos held back): [L, hidden]."""
        self.check(vp)
        tc = self.tc
        lang = vp.language.lower()
        lang_id = None if lang == "auto" else tc.codec_language_id[lang]
        speaker = vp.speaker.lower() if vp.speaker else None
        dialect = tc.spk_is_dialect.get(speaker, False) if speaker else False
        if lang in ("chinese", "auto") and dialect:
            lang_id = tc.codec_language_id[str(dialect)]
        if lang_id is None:
            prefix_ids = [tc.codec_nothink_id, tc.codec_think_bos_id, tc.codec_think_eos_id]
        else:
            prefix_ids = [tc.codec_think_id, tc.codec_think_bos_id, lang_id, tc.codec_think_eos_id]
        parts = [self.talker.codec(prefix_ids)]
        if speaker:
            parts.append(self.talker.codec([tc.spk_id[speaker]]))
        elif vp.xvector is not None:
            parts.append(mx.array(vp.xvector).astype(parts[0].dtype)[None])
        parts.append(self.talker.codec([tc.codec_pad_id]))  # codec_bos is held back for the tail
        codec = mx.concatenate(parts)
        text = mx.concatenate(
            [mx.broadcast_to(self.pad_e, (codec.shape[0] - 1, self.pad_e.shape[-1])), self.bos_e[None]]
        )
        out = [self.talker.text(self.tok.encode(ROLE)), text + codec]
        instruct = vp.instruct.strip()
        if instruct and not (self.cfg.tts_model_type == "custom_voice" and self.cfg.tts_model_size == "0b6"):
            out.insert(0, self.talker.text(self.tok.encode(f"<|im_start|>user\n{instruct}<|im_end|>\n")))
        return mx.concatenate(out)

    def ref_ids(self, vp: VoicePrompt) -> list[int]:
        if not vp.ref_text.strip():
            raise InputError("in-context cloning needs the reference clip's transcript; set `ref_text` in the voice")
        return self.tok.encode(vp.ref_text.strip())

    def codec_bos(self) -> mx.array:
        return self.talker.codec([self.tc.codec_bos_id])

    def stream_tail(self, vp: VoicePrompt, track: TextTrack) -> mx.array | None:
        """The streaming-layout tail once enough text is known (None: wait); sets track.consumed."""
        if not vp.icl:
            if not track.ids:
                return None
            track.consumed = 1
            return self.talker.text(track.ids[:1]) + self.codec_bos()
        assert vp.ref_codes is not None
        ref = self.ref_ids(vp)
        t2 = vp.ref_codes.shape[0] + 1
        codec = mx.concatenate([self.codec_bos(), self.talker.frame_embedding(mx.array(vp.ref_codes, dtype=mx.int32))])
        known = ref + track.ids
        if len(known) >= t2:  # then T1 = len(known)+1 (eos) > T2: text[:T2] rides on the codec part
            track.ids, track.consumed = known, t2
            return self.talker.text(known[:t2]) + codec
        if not track.ended:
            return None
        text = mx.concatenate([self.talker.text(known), self.eos_e[None]]) if known else self.eos_e[None]
        pad = mx.broadcast_to(self.pad_e, (t2 - text.shape[0], self.pad_e.shape[-1]))
        track.ids, track.consumed = [], 1  # trailing is all tts_pad
        return mx.concatenate([text, pad]) + codec

    def full_tail(self, vp: VoicePrompt, ids: list[int], track: TextTrack) -> mx.array:
        """The non-streaming (whole-text) tail; the trailing track is all tts_pad."""
        track.ids, track.consumed, track.ended = [], 1, True
        pad_c = self.talker.codec([self.tc.codec_pad_id])
        if vp.icl:
            assert vp.ref_codes is not None
            text = mx.concatenate([self.talker.text(self.ref_ids(vp) + ids), self.eos_e[None]])
            codec = mx.concatenate(
                [self.codec_bos(), self.talker.frame_embedding(mx.array(vp.ref_codes, dtype=mx.int32))]
            )
            return mx.concatenate([text + pad_c, codec + self.pad_e])
        text = mx.concatenate([self.talker.text(ids), self.eos_e[None]]) if ids else self.eos_e[None]
        return mx.concatenate([text + pad_c, (self.pad_e + self.codec_bos())])

    def trailing(self, track: TextTrack, k: int) -> mx.array | None:
        kind = track.kind(k)
        if kind is None:
            return None
        if kind == "eos":
            return self.eos_e
        if kind == "pad":
            return self.pad_e
        assert isinstance(kind, int)
        i = track.consumed + k
        if track.rows_of is not track.ids:  # a new ids list (the ICL tail replaces it): start over
            track.rows, track.rows_of = [], track.ids
        if i >= len(track.rows):  # every id known so far in one projection, not one small graph per frame
            new = self.talker.text(track.ids[len(track.rows) :])
            track.rows.extend(new[j, :] for j in range(new.shape[0]))  # views ([j] would be a gather kernel)
        return track.rows[i]


def check_ref_codes(codes: np.ndarray, groups: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != groups or codes.shape[0] < 1:
        raise ModelError(f"reference codes must be [frames, {groups}], got {codes.shape}; recompute the voice cache")
    return codes.astype(np.int32)
