"""Ballista: an HTTP load-testing engine and daemon."""

from __future__ import annotations

from ballista.core.journey import journey, setup

__version__ = "0.1.0"

__all__ = ["__version__", "journey", "setup"]
