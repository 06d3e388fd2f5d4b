"""Ballista's own exception family: failures of Ballista, never of the target."""

from __future__ import annotations


class BallistaError(Exception):
    """Base of every error Ballista raises on purpose."""


class ConfigError(BallistaError):
    """Bad input from a user: a flag, URL, duration, header or scenario file.

    The message is one line that names the problem; the CLI prints it and exits 2.
    `key` is the scenario key at fault (`requests[0].weight`) when there is one:
    the daemon's API returns it as the field.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
