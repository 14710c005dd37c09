"""config.toml loading and validation: the exact messages a user sees."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import tomllib
from pathlib import Path

import pytest

from assistant import config
from assistant.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_packaged_default_equals_dataclass_defaults(isolated_env: Path) -> None:
    """The shipped config.toml states exactly the defaults the code uses."""
    cfg = config.load()
    assert cfg == config.Config()
    assert cfg.source == str(config.PACKAGED_CONFIG)


def test_every_key_is_documented_in_config_toml() -> None:
    """Each key of each section appears in config.toml, preceded by a comment line."""
    text = config.PACKAGED_CONFIG.read_text()
    table = tomllib.loads(text)
    for name, cls in config.SECTIONS.items():
        keys = {f.name for f in dataclasses.fields(cls)}
        assert set(table[name]) == keys, name
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            j = i - 1
            while not lines[j].startswith("#"):  # a comment may cover a group of related keys
                assert re.match(r"^[a-z_]+ = ", lines[j]), line
                j -= 1


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    """An unknown key fails with its full path and the closest valid key."""
    path = write(tmp_path, "[vad]\nhang_ms = 500\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert str(e.value) == f"{path}: unknown key `vad.hang_ms`; did you mean `vad.hangover_ms`?"


def test_unknown_section_suggests_closest(tmp_path: Path) -> None:
    """A misspelt section is named with the closest section."""
    path = write(tmp_path, "[vda]\naggressiveness = 1\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert str(e.value) == f"{path}: unknown section `[vda]`; did you mean `vad`?"


def test_wrong_type_names_key_value_and_range(tmp_path: Path) -> None:
    """A wrong type names the key, the expected type with its range, and the value given."""
    path = write(tmp_path, '[vad]\nhangover_ms = "long"\n')
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert str(e.value) == f"{path}: `vad.hangover_ms` must be an integer (100..5000 ms), got 'long' (a string)"


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    """`true` is refused where an integer is expected (TOML booleans are not numbers)."""
    path = write(tmp_path, "[vad]\naggressiveness = true\n")
    with pytest.raises(ConfigError, match=r"`vad.aggressiveness` must be an integer \(0..3\), got True"):
        config.load(str(path))


def test_out_of_range_names_key_value_and_range(tmp_path: Path) -> None:
    """An out-of-range value names the key, the value and the allowed range."""
    path = write(tmp_path, "[vad]\naggressiveness = 7\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert str(e.value) == f"{path}: `vad.aggressiveness` = 7 is out of range; allowed 0..3"


def test_choice_not_allowed(tmp_path: Path) -> None:
    """A value outside a fixed set lists the allowed values."""
    path = write(tmp_path, '[stt]\nengine = "whisper"\n')
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert str(e.value) == f"{path}: `stt.engine` = 'whisper' is not allowed; use one of 'parakeet', 'nemotron'"


def test_missing_config_file(isolated_env: Path) -> None:
    """A --config path that does not exist fails naming the path and how to fall back."""
    missing = isolated_env / "nope.toml"
    with pytest.raises(ConfigError) as e:
        config.load(str(missing))
    user = isolated_env / "xdg" / "assistant" / "config.toml"
    assert str(e.value) == (
        f"config file not found: {missing} (from --config); check the path, or leave --config unset to use "
        f"{user} or the packaged default"
    )


def test_search_order(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config beats ASSISTANT_CONFIG, which beats the user file, which beats the packaged default."""
    user = isolated_env / "xdg" / "assistant" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("[vad]\naggressiveness = 1\n")
    assert config.load().vad.aggressiveness == 1
    env_file = write(isolated_env, "[vad]\naggressiveness = 2\n")
    monkeypatch.setenv("ASSISTANT_CONFIG", str(env_file))
    assert config.load().vad.aggressiveness == 2
    cli_file = isolated_env / "cli.toml"
    cli_file.write_text("[vad]\naggressiveness = 3\n")
    assert config.load(str(cli_file)).vad.aggressiveness == 3


def test_set_override(isolated_env: Path) -> None:
    """--set section.key=value overrides one key, parsed as a TOML value or a bare string."""
    cfg = config.load(None, ["vad.hangover_ms=600", "llm.model=some/model", "server.allowed_origins=['http://a']"])
    assert cfg.vad.hangover_ms == 600
    assert cfg.llm.model == "some/model"
    assert cfg.server.allowed_origins == ["http://a"]
    assert cfg.vad.aggressiveness == config.VadConfig().aggressiveness


def test_set_override_errors(isolated_env: Path) -> None:
    """A malformed or invalid --set names the override and the fix."""
    with pytest.raises(ConfigError) as e:
        config.load(None, ["hangover_ms=600"])
    assert str(e.value) == "--set expects section.key=value, got 'hangover_ms=600'; e.g. --set vad.hangover_ms=600"
    with pytest.raises(ConfigError) as e:
        config.load(None, ["vad.hangover_ms=50"])
    assert str(e.value) == "--set vad.hangover_ms=50: `vad.hangover_ms` = 50 is out of range; allowed 100..5000 ms"
    with pytest.raises(ConfigError) as e:
        config.load(None, ["vad.hangover=600"])
    assert str(e.value) == "--set vad.hangover=600: unknown key `vad.hangover`; did you mean `vad.hangover_ms`?"


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the line."""
    path = write(tmp_path, "[vad\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not valid TOML")):
        config.load(str(path))


def test_float_accepts_integer_and_replace_validates() -> None:
    """An integer is a valid float; runtime changes go through the same validation."""
    cfg = config.Config().replace({"vad.max_utterance_s": 20})
    assert cfg.vad.max_utterance_s == 20.0 and isinstance(cfg.vad.max_utterance_s, float)
    with pytest.raises(ConfigError, match="out of range"):
        cfg.replace({"tts.temperature": 5.0})


def test_config_file_not_utf8_is_one_line(tmp_path: Path) -> None:
    """A config file that is not UTF-8 (binary, Latin-1) fails with one line naming the byte, not a traceback."""
    path = tmp_path / "c.toml"
    path.write_bytes(b"[vad]\n# caf\xe9\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert str(e.value) == f"{path}: not UTF-8 text (byte 0xe9 at offset 11); save it as UTF-8 TOML"


def test_config_path_that_is_a_folder(tmp_path: Path) -> None:
    """--config naming a folder says it is a folder (not that it is missing)."""
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path))
    assert str(e.value) == f"{tmp_path} (from --config) is a folder; give the path of a config.toml file"


def test_config_file_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """A config.toml saved with a UTF-8 byte order mark (Windows editors) loads (it was `Invalid statement` at
    line 1, column 1)."""
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xef\xbb\xbf[vad]\nhangover_ms = 600\n")
    assert config.load(str(path)).vad.hangover_ms == 600


@pytest.mark.parametrize(
    ("given", "example"),
    [
        ("time,reminders", '["time", "reminders"]'),
        ("[time, reminders]", '["time", "reminders"]'),
        ("[1, 2]", '["1", "2"]'),
    ],
)
def test_a_list_key_given_a_bare_string_shows_the_toml_list(isolated_env: Path, given: str, example: str) -> None:
    """`--set tools.enabled=time,reminders` (no TOML quotes) says how to write the list it meant (it named only
    the type)."""
    with pytest.raises(ConfigError) as e:
        config.load(None, [f"tools.enabled={given}"])
    assert str(e.value).endswith(f"; write a TOML list of quoted strings, e.g. {example}")
    assert config.load(None, [f"tools.enabled={example}"]).tools.enabled == json.loads(example)


def test_a_wake_phrase_without_words_is_refused() -> None:
    """`pipeline.wake_phrase` of punctuation only ("!!!", "...") is a ConfigError naming the key and the fix (it
    matched nothing, so it turned the wake phrase off and every turn was answered); words, or "", are fine."""
    for bad in ("!!!", " ... ", "--"):
        with pytest.raises(ConfigError) as e:
            config.Config().replace({"pipeline.wake_phrase": bad})
        assert str(e.value) == (
            f"config.set: `pipeline.wake_phrase` = {bad!r} has no words to listen for; write the name, e.g. "
            '"hey nova", or "" to answer every turn'
        )
    for good in ("", "hey nova", "Computer!", "Jarvis 2"):
        assert config.Config().replace({"pipeline.wake_phrase": good}).pipeline.wake_phrase == good


def test_a_server_token_a_client_cannot_send_is_refused() -> None:
    """A `server.token` with a space at either end, a newline or a non-ASCII letter is a ConfigError that does not
    echo the secret (with a trailing space no client was ever let in, told only "wrong token"; a non-ASCII one
    worked for `assistant ctl` but not for curl); a plain token, or "", is fine."""
    for bad in ("abc ", " abc", "line\n", "pässwort"):
        with pytest.raises(ConfigError) as e:
            config.Config().replace({"server.token": bad})
        assert str(e.value).startswith("config.set: `server.token` must be printable ASCII with no space at either end")
        assert bad not in str(e.value)
    for good in ("", "s3cr3t-T0ken_~!", "two words", "A" * 64):
        assert config.Config().replace({"server.token": good}).server.token == good


def test_an_unusable_user_config_is_an_error_not_the_default(isolated_env: Path) -> None:
    """~/.config/assistant/config.toml as a link to a file that is gone, or as a folder, fails naming it (the
    packaged default was used without a word, so none of the user's settings applied)."""
    user = isolated_env / "xdg" / "assistant" / "config.toml"
    user.parent.mkdir(parents=True)
    user.symlink_to(isolated_env / "dotfiles" / "assistant.toml")
    with pytest.raises(ConfigError) as e:
        config.load()
    assert str(e.value) == (
        f"the user config {user} is a link to {isolated_env / 'dotfiles' / 'assistant.toml'}, which is missing; "
        "make it a config.toml file, or remove it to use the packaged default"
    )
    user.unlink()
    user.mkdir()
    with pytest.raises(ConfigError, match=r"is not a file; make it a config\.toml file"):
        config.load()
    user.rmdir()
    assert config.load().source == str(config.PACKAGED_CONFIG)


def test_set_of_a_text_key_to_a_number_or_boolean_takes_the_text(isolated_env: Path) -> None:
    """`--set server.token=12345678` or `--set llm.model=2024` sets that text (it failed: "must be a string, got
    12345678 (an integer)", with no fix); a device key keeps its index rule and a list key its type check."""
    cfg = config.load(None, ["server.token=12345678", "llm.model=2024", "tts.voice=true", "llm.system_prompt=1.5"])
    assert (cfg.server.token, cfg.llm.model, cfg.tts.voice, cfg.llm.system_prompt) == (
        "12345678",
        "2024",
        "true",
        "1.5",
    )
    assert config.load(None, ["audio.input_device=3"]).audio.input_device == "3"
    with pytest.raises(ConfigError, match=r"index >= 0 from `assistant devices`, got -1"):
        config.load(None, ["audio.input_device=-1"])
    with pytest.raises(ConfigError, match="must be a list of strings"):
        config.load(None, ["tools.enabled=3"])


def test_a_text_key_given_a_number_in_the_file_says_to_quote_it(tmp_path: Path) -> None:
    """`token = 12345678` in config.toml fails naming the fix, the quoted form (it said only "must be a string")."""
    with pytest.raises(ConfigError) as e:
        config.load(str(write(tmp_path, "[server]\ntoken = 12345678\n")))
    assert str(e.value).endswith(
        '`server.token` must be a string, got 12345678 (an integer); write it in quotes: token = "12345678"'
    )
    with pytest.raises(ConfigError, match='write it in quotes: voice = "true"'):
        config.load(str(write(tmp_path, "[tts]\nvoice = true\n")))


def test_a_config_from_a_pipe_loads_and_an_endless_one_is_refused(isolated_env: Path) -> None:
    """`--config <(cat a.toml b.toml)` (a pipe, /dev/fd/N) loads (it was "config file not found"), and a path that
    never ends (/dev/zero) fails in one line instead of being read forever."""
    fifo = isolated_env / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with fifo.open("w") as f:
            f.write("[vad]\naggressiveness = 1\n")

    writer = threading.Thread(target=feed)
    writer.start()
    assert config.load(str(fifo)).vad.aggressiveness == 1
    writer.join(10)
    with pytest.raises(ConfigError) as e:
        config.load("/dev/zero")
    assert str(e.value) == "/dev/zero: over 1024 KiB, too long for a config; check the path"


def test_voice_aliases_differing_only_in_case_are_refused_naming_both(tmp_path: Path) -> None:
    """Two server.voice_aliases names that differ only in case (clients' names match whatever their case) fail the
    load with one line naming both entries and the fix, instead of one silently replacing the other."""
    path = tmp_path / "c.toml"
    path.write_text('[server]\nvoice_aliases = ["Alloy=vivian", "alloy=ryan"]\n')
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    msg = str(e.value)
    assert "`server.voice_aliases`" in msg and "'Alloy=vivian'" in msg and "'alloy=ryan'" in msg
    assert "keep one" in msg
    assert config.parse_voice_aliases(["Alloy=vivian", "echo=ryan"]) == {"alloy": "vivian", "echo": "ryan"}


def test_an_empty_config_path_is_refused(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config ""` (a script's `--config "$CFG"` with CFG unset) is refused; it silently read ASSISTANT_CONFIG,
    the user's file or the packaged default instead. An empty ASSISTANT_CONFIG still counts as unset."""
    monkeypatch.setenv("ASSISTANT_CONFIG", "")
    assert config.load(None).source == str(config.PACKAGED_CONFIG)  # an empty ASSISTANT_CONFIG: the default
    with pytest.raises(ConfigError, match=r"^--config is empty \(an unset shell variable\?\); give the path"):
        config.load("")
