"""Shared fixtures: an isolated config environment, and the paths tests use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audio_room import Room, missing_tools, start_room

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def espeak_ng() -> None:
    """Tests that synthesise speech with espeak-ng fail with the install command when it is missing."""
    from tests.speech import require_espeak

    require_espeak()


@pytest.fixture(autouse=True)
def user_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches and state (voice prompts, chat history) go to a per-session folder, never the tester's home."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "xdg-cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(base / "xdg-state"))
    # The memory database (history, reminders) is per test: a daemon must not load another test's turns.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user config, no ASSISTANT_CONFIG, an empty offline Hugging Face cache: the packaged default applies."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ASSISTANT_CONFIG", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture(scope="session")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    """The virtual PulseAudio room of tests/audio_room.py, one per test session, torn down at its end."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"the audio room needs PulseAudio ({', '.join(missing)} not installed): apt-get install pulseaudio")
    try:
        import sounddevice  # noqa: F401
    except OSError as e:
        pytest.skip(f"PortAudio is not installed ({e}): apt-get install libportaudio2")
    the_room = start_room(tmp_path_factory.mktemp("room"))
    try:
        yield the_room
    finally:
        the_room.close()


@pytest.fixture
def room_env(room: Room, monkeypatch: pytest.MonkeyPatch) -> Room:
    """The room, with this process's environment pointing PortAudio (through PulseAudio) at it."""
    for key, value in room.env.items():
        monkeypatch.setenv(key, value)
    return room


# Modules that bound a latency, a wall time or what a signal interrupts: scripts/test runs them (like the room
# tests) one at a time after the parallel phase, so a test on the other worker cannot push them past their bound.
# A single test of that kind in another module is marked `@pytest.mark.serial` itself.
SERIAL = {"tests/pipeline/test_signals.py"}


def pytest_itemcollected(item: pytest.Item) -> None:
    """Room tests and SERIAL modules get the `serial` marker (before `-m` selects)."""
    if item.get_closest_marker("audio") is not None or item.path.relative_to(REPO).as_posix() in SERIAL:
        item.add_marker(pytest.mark.serial)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Room tests (`audio`) run in real time against PulseAudio on a shared 2-core machine: a starved scheduler
    can make one miss a deadline, so each gets one rerun; the report still lists every rerun ("R")."""
    for item in items:
        if item.get_closest_marker("audio") is not None:
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=1))
