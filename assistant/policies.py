"""config.toml -> what one conversation runs with: the turn core's `Policy` (the daemon's, or a Realtime
session's), its end-of-turn strategy and ring size, and the daemon's echo canceller.

The conversation builds these at start and again when `config.set` or a Realtime `session.update` changes them.
"""

from __future__ import annotations

from assistant.audio.echo import EchoCanceller, PlayedClock
from assistant.audio.format import CAPTURE_RATE, frame_samples
from assistant.audio.sinks import AudioSink
from assistant.config import Config
from assistant.endofturn import BargeInRule, EndOfTurnPolicy, FixedSilence, bare_word, policy_from_config
from assistant.errors import ConfigError
from assistant.turns import Policy


def daemon_policy(cfg: Config) -> Policy:
    """The daemon's: hands-free and/or push-to-talk (pipeline.mode), speculation, barge-in, wake phrase, reopen."""
    mode = cfg.pipeline.mode
    return Policy(
        vad_turns=mode != "push_to_talk",  # push_to_talk: the VAD runs, but only the hotkey makes turns
        ptt=True,
        speculative=cfg.pipeline.speculative,
        barge_in=BargeInRule(
            cfg.pipeline.barge_in,
            cfg.pipeline.barge_in_min_words,
            frozenset(bare_word(w) for w in cfg.pipeline.backchannels),
        ),
        preroll_samples=frame_samples(CAPTURE_RATE, cfg.vad.preroll_ms),
        echo_tail_ms=cfg.vad.echo_tail_ms,
        wake_phrase=cfg.pipeline.wake_phrase,
        follow_up_s=cfg.pipeline.follow_up_s,
        resume_ms=cfg.endofturn.resume_ms,
    )


def realtime_policy(cfg: Config, server_vad: bool, create_response: bool, interrupt_response: bool) -> Policy:
    """No speculation: a client may commit and ask at any moment, so every reply starts confirmed."""
    return Policy(
        vad_turns=server_vad,
        ptt=False,
        speculative=False,
        answer_turns=False,
        auto_respond=create_response,
        barge_in=BargeInRule(interrupt_response),
        preroll_samples=frame_samples(CAPTURE_RATE, cfg.vad.preroll_ms),
        echo_tail_ms=cfg.vad.echo_tail_ms,
    )


def realtime_turns(
    cfg: Config,
    hangover_ms: int | None,
    create_response: bool,
    interrupt_response: bool,
    semantic: EndOfTurnPolicy | None,
    scorer: object | None,
    vad_level: int | None = None,
) -> tuple[Config, Policy, EndOfTurnPolicy]:
    """A Realtime session's turn_detection -> its config, policy and end-of-turn strategy. `hangover_ms` None =
    manual turns (commit); else server VAD: the turn ends after `hangover_ms` of silence (vad.hangover_ms), or
    where given, when the `semantic` policy (Smart Turn's, semantic_vad) decides it. ConfigError when that
    silence is out of range, or the semantic policy needs the end-of-turn model (`scorer`) and it is not loaded.
    `vad_level` (server_vad's threshold) sets webrtcvad's aggressiveness; None keeps the configured one."""
    if semantic is not None and semantic.score_after_ms is not None and scorer is None:
        raise ConfigError(
            'turn_detection.type "semantic_vad" needs the Smart Turn end-of-turn model, which is not loaded; '
            'run `assistant pull` with endofturn.detector = "smart_turn" and restart, or use "server_vad"'
        )
    try:
        cfg = cfg if hangover_ms is None else cfg.replace({"vad.hangover_ms": hangover_ms})
    except ConfigError as e:
        raise ConfigError(f"turn_detection.silence_duration_ms {hangover_ms} cannot be used ({e})") from e
    if vad_level is not None:
        cfg = cfg.replace({"vad.aggressiveness": vad_level})
    policy = realtime_policy(cfg, hangover_ms is not None, create_response, interrupt_response)
    # server_vad is OpenAI's silence rule: its silence_duration_ms, whatever detector the daemon uses
    return cfg, policy, semantic or FixedSilence(cfg.vad.hangover_ms)


def end_of_turn(cfg: Config, scorer: object | None = None) -> EndOfTurnPolicy:
    """The configured end-of-turn policy; a fixed silence where no end-of-turn model was loaded to score."""
    if scorer is None:
        return FixedSilence(cfg.vad.hangover_ms)
    return policy_from_config(cfg.endofturn, cfg.vad.hangover_ms)


def ring_samples(cfg: Config) -> int:
    """The turn core's audio ring: the longest utterance the VAD or the STT takes, and the pre-roll before it."""
    longest = max(cfg.vad.max_utterance_s, cfg.stt.max_utterance_s)
    return frame_samples(CAPTURE_RATE, cfg.vad.preroll_ms) + int(longest * CAPTURE_RATE)


def make_canceller(cfg: Config, sink: AudioSink, tts_rate: int) -> EchoCanceller | None:
    """The daemon's echo canceller over a speaker that tells what it played when (None: `echo.enabled` is off, or
    the sink cannot say, e.g. no sound card)."""
    if not cfg.echo.enabled or not isinstance(sink, PlayedClock):
        return None
    return EchoCanceller(sink, tts_rate)
