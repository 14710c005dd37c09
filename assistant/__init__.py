"""assistant: a local real-time voice assistant daemon on MLX."""

__version__ = "0.1.0"
