"""Ballista's own exception family: failures of Ballista or of its user's setup, never of the target.

Every BallistaError is a situation the user can fix (a flag, a file, a port in
use): the CLI prints its one-line message and exits with `exit_code`. Any other
exception that reaches the CLI is a bug in Ballista and is reported as one.
"""

from __future__ import annotations

#: Exit codes of every `ballista` command.
EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_USAGE = 2
#: A bug in Ballista ended the command (the traceback follows the one-line report).
EXIT_INTERNAL = 3


class BallistaError(Exception):
    """Base of every error Ballista raises on purpose: one line for the user."""

    exit_code = EXIT_USAGE


class ConfigError(BallistaError):
    """Bad input from a user: a flag, URL, duration, header or scenario file.

    The message is one line that names the problem; the CLI prints it and exits 2.
    `key` is the scenario key at fault (`requests[0].weight`) when there is one:
    the daemon's API returns it as the field.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ListenError(BallistaError):
    """A listener (metrics, live stream, daemon API, demo target) could not bind."""

    def __init__(self, what: str, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port} ({what}): {reason}")
        self.host = host
        self.port = port
        self.reason = reason


def reason_of(exc: BaseException) -> str:
    """The human part of an OS error ("Address already in use"), else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text or type(exc).__name__
