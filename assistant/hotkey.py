"""Push-to-talk hotkey through pynput (the `hotkey` extra): hold-to-talk or toggle.

pynput calls back on its own thread; the owner passes thread-safe callbacks (the daemon wraps them in
`loop.call_soon_threadsafe`). When pynput or the OS permission is missing, `start()` returns a one-line reason
and the daemon runs on without the hotkey.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from assistant.errors import ConfigError

log = logging.getLogger("assistant.hotkey")

ENABLE_HINT = {
    "darwin": "allow your terminal (or the launchd job's program) in System Settings > Privacy & Security > "
    "Accessibility and Input Monitoring, then restart",
    "linux": "run inside an X11 session (DISPLAY set) as a user who may read the keyboard",
}


class Combo:
    """Pure tracking of a key combination: `press`/`release` return True when the combination's state flips."""

    def __init__(self, keys: Iterable[Hashable]) -> None:
        self.keys = frozenset(keys)
        self.down: set[Hashable] = set()
        self.active = False

    def press(self, forms: Iterable[Hashable]) -> bool:
        self.down |= self.keys & set(forms)
        if not self.active and self.down == self.keys:
            self.active = True
            return True
        return False

    def release(self, forms: Iterable[Hashable]) -> bool:
        self.down -= set(forms)
        if self.active and self.down != self.keys:
            self.active = False
            return True
        return False


class Hotkey:
    """Hold mode: `on_start` when the combination goes down, `on_stop` when it comes up. Toggle: alternate."""

    def __init__(self, spec: str, mode: str, on_start: Callable[[], object], on_stop: Callable[[], object]) -> None:
        self.spec = spec
        self.mode = mode
        self.on_start = on_start
        self.on_stop = on_stop
        self.talking = False
        self._listener: Any = None
        self._combo: Combo | None = None

    def start(self) -> str | None:
        """Start listening; None when running, else a one-line reason naming how to enable the hotkey."""
        if importlib.util.find_spec("pynput") is None:
            return (
                "push-to-talk hotkey is off: pynput is not installed; install it with pip install 'assistant[hotkey]'"
            )
        try:
            from pynput import keyboard
        except Exception as e:  # pynput raises ImportError when it cannot reach the keyboard (no X display, ...)
            return f"push-to-talk hotkey is off: the keyboard cannot be read ({_first_line(e)}); {_hint()}"
        try:
            keys = keyboard.HotKey.parse(self.spec)
        except ValueError as e:
            raise ConfigError(
                f"pipeline.hotkey = {self.spec!r} is not a key combination; use pynput syntax, e.g. '<alt_r>' or "
                "'<ctrl>+<alt>+h'"
            ) from e
        self._combo = Combo(keys)
        self._listener = listener = keyboard.Listener(on_press=self._pressed, on_release=self._released)
        try:
            listener.start()
            listener.wait()
        except Exception as e:
            self._listener = None
            return f"push-to-talk hotkey is off: the keyboard listener failed ({_first_line(e)}); {_hint()}"
        # pynput's macOS backend sets IS_TRUSTED from the Accessibility check; other platforms lack it.
        if not getattr(listener, "IS_TRUSTED", True):
            self.stop()
            return f"push-to-talk hotkey is off: no Accessibility permission; {_hint()}"
        log.info("push-to-talk hotkey ready", extra={"fields": {"hotkey": self.spec, "mode": self.mode}})
        return None

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()  # on X11 the thread ends at the next key event (pynput); it is a daemon thread

    def _forms(self, key: Any) -> set[Any]:
        """The ways a key event may be named in a parsed combination (left/right modifiers, virtual key)."""
        from pynput import keyboard

        forms = {key}
        if self._listener is not None:
            forms.add(self._listener.canonical(key))
        if isinstance(key, keyboard.Key) and key.value.vk is not None:
            forms.add(keyboard.KeyCode.from_vk(key.value.vk))
        if isinstance(key, keyboard.KeyCode) and key.char is not None:
            forms.add(keyboard.KeyCode.from_char(key.char.lower()))
        return forms

    def _pressed(self, key: Any) -> None:
        if self._combo is not None and key is not None and self._combo.press(self._forms(key)):
            if self.mode == "toggle":
                self._set(not self.talking)
            else:
                self._set(True)

    def _released(self, key: Any) -> None:
        if self._combo is not None and key is not None and self._combo.release(self._forms(key)):
            if self.mode == "hold":
                self._set(False)

    def _set(self, talking: bool) -> None:
        if talking != self.talking:
            self.talking = talking
            (self.on_start if talking else self.on_stop)()


def _hint() -> str:
    return ENABLE_HINT.get(sys.platform, ENABLE_HINT["linux"])


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
