"""Ballista's own exception family: failures of Ballista, never of the target."""

from __future__ import annotations


class BallistaError(Exception):
    """Base of every error Ballista raises on purpose."""


class ConfigError(BallistaError):
    """Bad input from a user: a flag, URL, duration, header or scenario file.

    The message is one line that names the problem; the CLI prints it and exits 2.
    """
