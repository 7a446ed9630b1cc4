"""Errors the user can fix; the CLI turns them into a message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (config, data location, device): reported without a traceback, exit code 2.

    ``key`` names the config key at fault when the error is raised after validation (device,
    data); the caller that knows which file set that key prefixes it (see experiment.prepare).
    """

    exit_code = 2

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ConfigError(UserError):
    """A config file or override is missing, malformed or invalid."""


class DataError(UserError):
    """A dataset cannot be found or loaded."""


class DeviceError(UserError):
    """The requested device does not exist on this machine."""
