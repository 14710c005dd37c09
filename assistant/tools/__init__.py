"""Tool use: the model's tool-call formats (calls.py, pure), the tools and their execution (registry.py), the
built-in tools (builtin.py), tools declared in config.toml (user.py) and the reminder scheduler (timers.py).

This package file imports nothing, so the pure `assistant.tools.calls` can be imported by the LLM layer without
pulling in the asyncio side.
"""
