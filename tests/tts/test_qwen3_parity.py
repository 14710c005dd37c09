"""Parity with the official qwen-tts 0.1.1 on tiny seeded weights (fixtures from tools/qwen3_tts_ref)."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from assistant.tts.qwen3.generate import FrameGenerator, PrefixState, generate_codes
from assistant.tts.qwen3.load import LoadedModel, load_model
from assistant.tts.qwen3.prompt import PromptBuilder, TextTrack, VoicePrompt
from assistant.tts.qwen3.sampling import SamplingParams
from assistant.tts.qwen3.talker import FuseOptions, LinearAddT, LinearBiasT, Qwen3TTSModel

TOL = 1e-4


def prompt_of(case: dict[str, Any]) -> VoicePrompt:
    return VoicePrompt(
        language=case["language"],
        speaker=case["speaker"],
        instruct=case["instruct"],
        xvector=np.array(case["xvector"], dtype=np.float32) if case.get("xvector") else None,
        ref_codes=np.array(case["ref_codes"], dtype=np.int32) if case.get("ref_codes") else None,
        ref_text=case.get("ref_text", ""),
    )


_LOADED: dict[str, LoadedModel] = {}


def loaded(checkpoints: Any, kind: str) -> LoadedModel:
    if kind not in _LOADED:
        _LOADED[kind] = load_model(checkpoints(kind))
    return _LOADED[kind]


def generator(lm: LoadedModel, case: dict[str, Any], text: str | None) -> FrameGenerator:
    talker = lm.model.talker
    builder = PromptBuilder(talker, lm.config, lm.tokenizer)
    prefix = PrefixState.compute(talker, builder, prompt_of(case))
    layout = "full" if case["non_streaming"] else "stream"
    return FrameGenerator(talker, builder, prefix, SamplingParams.greedy(), case["max_new_tokens"], text, layout)


def cases(reference: Any) -> list[dict[str, Any]]:
    return list(reference[0]["cases"])


CASE_NAMES = [
    "cv_english_full",
    "cv_auto_stream",
    "cv_instruct_stream",
    "vd_full",
    "vd_stream",
    "xvec_stream",
    "xvec_full",
    "icl_stream",
    "icl_stream_short",
    "icl_full",
]


def case_named(reference: Any, name: str) -> dict[str, Any]:
    return next(c for c in reference[0]["cases"] if c["name"] == name)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_prefill_matches_official(checkpoints: Any, reference: Any, name: str) -> None:
    """Our prefill vectors (voice prefix + text tail) equal the official talker input embeddings (<= 1e-4)."""
    case = case_named(reference, name)
    lm = loaded(checkpoints, case["kind"])
    talker = lm.model.talker
    builder = PromptBuilder(talker, lm.config, lm.tokenizer)
    vp = prompt_of(case)
    track = TextTrack()
    ids = lm.tokenizer.encode(case["text"].strip())
    assert ids == case["input_ids"][3:-5]
    if case["non_streaming"]:
        tail = builder.full_tail(vp, ids, track)
    else:
        track.ids, track.ended = list(ids), True
        maybe = builder.stream_tail(vp, track)
        assert maybe is not None
        tail = maybe
    ours = np.array(mx.concatenate([builder.prefix(vp), tail]))
    ref = reference[1][f"{name}.prefill"]
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL
    # the trailing text track, vector by vector
    trailing = reference[1][f"{name}.trailing"]
    for k in range(trailing.shape[0]):
        vec = builder.trailing(track, k)
        assert vec is not None
        assert np.abs(np.array(vec) - trailing[k]).max() <= TOL


@pytest.mark.parametrize("name", CASE_NAMES)
def test_greedy_codes_match_official(checkpoints: Any, reference: Any, name: str) -> None:
    """Greedy code sequences (all 16 groups, every frame, EOS/length included) equal the official ones."""
    case = case_named(reference, name)
    gen = generator(loaded(checkpoints, case["kind"]), case, case["text"])
    codes = [f.tolist() for f in generate_codes(gen)]
    assert codes == case["codes"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_teacher_forced_logits(checkpoints: Any, reference: Any, name: str) -> None:
    """Talker logits per step (and predictor logits per group where kept) match the official, fp32 <= 1e-4."""
    case = case_named(reference, name)
    lm = loaded(checkpoints, case["kind"])
    talker = lm.model.talker
    gen = generator(lm, case, case["text"])
    want = reference[1][f"{name}.talker_logits"]
    got = []
    pred_want = reference[1].get(f"{name}.predictor_logits")
    codes = np.array(case["codes"], dtype=np.int32)
    for k in range(want.shape[0]):
        if k == 0:
            assert gen._prefill()
        else:
            frame_e = talker.frame_embedding(mx.array(codes[k - 1][None]))
            text_vec = gen.builder.trailing(gen.track, k - 1)
            assert text_vec is not None
            h_prev = gen.h_last
            gen._forward(frame_e + text_vec)
            if pred_want is not None and k - 1 < pred_want.shape[0]:
                check_predictor(talker, h_prev, codes[k - 1], pred_want[k - 1])
        assert gen.h_last is not None
        got.append(np.array(talker.codec_head(gen.h_last).astype(mx.float32)))
    assert np.abs(np.stack(got) - want).max() <= TOL


def check_predictor(talker: Any, h_last: Any, frame: np.ndarray, want: np.ndarray) -> None:
    cp = talker.code_predictor
    cache = cp.make_cache()
    x = mx.stack([h_last, talker.codec([int(frame[0])])[0]])[None]
    for g in range(1, 16):
        logits = np.array(cp.logits(x, g, cache)[0])
        assert np.abs(logits - want[g - 1]).max() <= TOL, g
        x = cp.model.codec_embedding[g - 1](mx.array([int(frame[g])]))[None]


def test_tokenizer_matches_official_incl_mistral_regex(reference: Any, tmp_path: Any) -> None:
    """Our BPE gives the official ids, including 'iPhone HelloWorld' where fix_mistral_regex changes them."""
    from assistant.tts.qwen3.tokenizer import TextTokenizer
    from tools.qwen3_tts_ref import tiny

    from .conftest import needs_bpe

    needs_bpe()
    tiny.tokenizer_files(tmp_path)
    fixed, plain = TextTokenizer(tmp_path, None), TextTokenizer(tmp_path, "4.57.1")
    checks = reference[0]["tokenize"]
    assert checks[0]["fixed"] != checks[0]["plain"]
    for c in checks:
        assert fixed.encode(c["text"]) == c["fixed"]
        assert plain.encode(c["text"]) == c["plain"]


@pytest.mark.parametrize(
    "options",
    [FuseOptions(attention="addmm"), FuseOptions(attention="gemv", residual="add", rotation="rope")],
    ids=repr,
)
def test_every_fuse_option_gives_the_official_greedy_codes(
    checkpoints: Any, reference: Any, options: FuseOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each FuseOptions choice (the variants a GPU A/B times) generates the official greedy codes, every case."""
    fuse = Qwen3TTSModel.fuse
    monkeypatch.setattr(Qwen3TTSModel, "fuse", lambda self, _=None: fuse(self, options))
    models: dict[str, LoadedModel] = {}
    for name in CASE_NAMES:
        case = case_named(reference, name)
        if case["kind"] not in models:
            models[case["kind"]] = load_model(checkpoints(case["kind"]))
        lm = models[case["kind"]]
        attn = lm.model.talker.model.layers[0].self_attn
        assert (attn.attention, attn.rotation) == (options.attention, options.rotation)
        assert (type(attn.o_proj) is LinearAddT) == (options.residual == "add")
        cp = lm.model.talker.code_predictor
        if cp.has_projection:  # the custom-voice and voice-design fixtures: talker 64 wide, predictor 48
            assert (type(cp.small_to_mtp_projection) is LinearBiasT) == (options.residual == "add")
        assert [f.tolist() for f in generate_codes(generator(lm, case, case["text"]))] == case["codes"], name
