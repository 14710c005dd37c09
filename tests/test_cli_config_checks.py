"""Start-up honesty on the CLI side: push-to-talk without a usable hotkey is an error with the fix, and audio
devices may be given as integer indexes, as config.toml documents."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from assistant import cli, config


def test_push_to_talk_without_a_hotkey_fails_at_start(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` with pipeline.mode = "push_to_talk" and no pynput exits 2 in one line naming both fixes, before
    any model or device is opened."""
    models = isolated_env / "m"
    models.mkdir()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pynput" else real(name, *a))
    argv = ["run", "--set", "pipeline.mode=push_to_talk"]
    argv += [
        arg
        for key in ("stt.model", "llm.model", "tts.model", "endofturn.model")
        for arg in ("--set", f"{key}={models}")
    ]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        'assistant: error: pipeline.mode = "push_to_talk" needs the hotkey, but push-to-talk hotkey is off: pynput '
        "is not installed; install it with pip install 'assistant[hotkey]'; or set pipeline.mode = \"both\"\n"
    )


def test_both_mode_without_a_hotkey_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """In "both" mode a missing hotkey is not fatal: the daemon warns and listens hands-free."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    cli.check_push_to_talk(config.Config().replace({"pipeline.mode": "both"}))


def test_device_index_as_an_integer(isolated_env: Path) -> None:
    """`input_device = 3` in config.toml (and --set) is accepted as the index "3"; a negative one is refused."""
    path = isolated_env / "c.toml"
    path.write_text('[audio]\ninput_device = 3\noutput_device = "USB"\n')
    cfg = config.load(str(path), ["audio.output_device=0"])
    assert (cfg.audio.input_device, cfg.audio.output_device) == ("3", "0")
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path), ["audio.input_device=-1"])
    assert str(e.value) == (
        "--set audio.input_device=-1: `audio.input_device` must be a device name (or part of it) or an index >= 0 "
        "from `assistant devices`, got -1 (an integer)"
    )
