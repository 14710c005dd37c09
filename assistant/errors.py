"""One small hierarchy of expected failures.

Every `AssistantError` carries a one-line message that names the problem and the fix. The CLI prints it
without a traceback (unless `--debug`); the daemon logs it and keeps running.
"""


class AssistantError(Exception):
    """An expected failure whose message tells the user what to do."""

    exit_code = 2


class ConfigError(AssistantError):
    """config.toml, an override or a runtime setting is wrong."""

    # sysexits.h EX_CONFIG: a service manager must not restart a daemon that will fail the same way
    # (service/assistant.service: RestartPreventExitStatus=78)
    exit_code = 78


class ModelError(AssistantError):
    """A model is missing, malformed or failed to load."""


class AudioDeviceError(AssistantError):
    """No usable microphone or speaker, or the device failed mid-run."""


class ProtocolError(AssistantError):
    """A control-channel message is malformed or not allowed."""


class InputError(AssistantError):
    """Bad user input: text, audio or a file given on the command line."""
