"""Where the program keeps what it writes: per-user folders, never the (possibly read-only) install folder.

Linux follows XDG (`$XDG_CACHE_HOME`, default ~/.cache), macOS ~/Library/Caches (through platformdirs).
The config file and the server token stay in ~/.config/assistant (`$XDG_CONFIG_HOME`), as config.toml documents.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP = "assistant"


def cache_dir() -> Path:
    """The user's cache folder for derived data (voice prompts); safe to delete, recomputed when missing."""
    return Path(platformdirs.user_cache_dir(APP, appauthor=False))


def voice_cache_dir() -> Path:
    """Clone profiles' x-vectors and reference codes, keyed by the reference audio and model."""
    return cache_dir() / "voices"


def state_dir() -> Path:
    """The user's folder for state worth keeping between runs (chat input history)."""
    return Path(platformdirs.user_state_dir(APP, appauthor=False))


def data_dir() -> Path:
    """The user's folder for data that must outlive the program (the memory database of memory.py)."""
    return Path(platformdirs.user_data_dir(APP, appauthor=False))
