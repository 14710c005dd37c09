"""The import direction of ../shared/STYLE.md, checked by parsing every module with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "assistant"

# Layers, left to right: a module may import its own layer and those to its left, never to its right.
LAYERS: list[tuple[str, ...]] = [
    (
        "assistant",
        "assistant.config",
        "assistant.errors",
        "assistant.events",
        "assistant.audio.format",
        "assistant.audio.files",
        "assistant.audio.ring",
        "assistant.audio.tempo",
        "assistant.logs",
        "assistant.hub",
        "assistant.paths",
    ),
    ("assistant.endofturn", "assistant.wake"),
    ("assistant.turns",),
    (
        "assistant.vad",
        "assistant.text",
        "assistant.stt",
        "assistant.tts",
        "assistant.llm",
        "assistant.llm_remote",
        "assistant.memory",
        "assistant.tools.calls",
        "assistant.server.protocol",
        "assistant.server.realtime_protocol",
        "assistant.server.g711",
        "assistant.server.controller",
        "assistant.settings",
    ),
    ("assistant.engines",),
    (
        "assistant.compute",
        "assistant.bus",
        "assistant.audio",
        "assistant.hotkey",
        "assistant.tools",
        "assistant.policies",
        "assistant.context",
    ),
    ("assistant.reply",),
    ("assistant.conversation",),
    ("assistant.console",),
    ("assistant.sessions", "assistant.daemon", "assistant.oneshot"),
    ("assistant.server", "assistant.wyoming"),
    ("assistant.cli", "assistant.__main__"),
]
MODEL_PACKAGES = ("assistant.stt", "assistant.tts", "assistant.llm", "assistant.vad", "assistant.text")
# Pure decision modules: the turn core, its capture timeline and tool bookkeeping, end-of-turn policies, and the
# sans-I/O halves of the server (frames in, frames out; server/ws.py alone touches sockets and the loop).
PURE_MODULES = (
    "assistant.turns",
    "assistant.audio.ring",
    "assistant.tools.session",
    "assistant.endofturn",
    "assistant.wake",
    "assistant.settings",
    "assistant.server.protocol",
    "assistant.server.realtime_protocol",
    "assistant.server.g711",
    "assistant.server.native",
    "assistant.server.realtime",
)
FORBIDDEN_IN_MODELS = ("asyncio", "sounddevice", "websockets")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int:
    """The layer of a module: the one holding its longest matching prefix."""
    best, best_len = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best >= 0, f"{name} has no layer in tests/test_imports.py"
    return best


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append(mod)
            out += [f"{mod}.{a.name}" for a in node.names]  # `from assistant import config`
    return out


def modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_imports_flow_left_to_right() -> None:
    """No module imports a module of a later layer (so nothing imports cli, the pipeline never the server)."""
    bad = []
    for path in modules():
        here = module_name(path)
        for imp in imports_of(path):
            if not imp.startswith("assistant"):
                continue
            try:
                target = layer_of(imp)
            except AssertionError:
                continue  # `from assistant.x import name` also yields `assistant.x.name`
            if target > layer_of(here):
                bad.append(f"{here} imports {imp}")
    assert not bad, bad


def test_model_code_has_no_io_imports() -> None:
    """Model code, the turn core and both protocol modules never import asyncio, sounddevice or websockets."""
    bad = []
    for path in modules():
        here = module_name(path)
        if here.startswith(MODEL_PACKAGES) or here in PURE_MODULES:
            bad += [f"{here} imports {i}" for i in imports_of(path) if i.split(".")[0] in FORBIDDEN_IN_MODELS]
    assert not bad, bad


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in a layer here, on purpose."""
    for path in modules():
        layer_of(module_name(path))
