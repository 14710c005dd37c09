"""Audio formats, devices, capture and playback."""
