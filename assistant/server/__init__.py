"""The WebSocket control channel: the native protocol and an OpenAI Realtime-compatible endpoint.

Modules: protocol (native wire format, pure), realtime_protocol (Realtime wire format, pure), controller (the
Protocols the pipeline implements), realtime (per-session state machine), auth, ws (the server), ctl (client).
"""
