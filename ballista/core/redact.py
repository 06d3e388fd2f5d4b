"""What secrets look like, and how they are hidden wherever a run is shown to others."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

from ballista.core.config import RunConfig

#: Header and query-parameter names whose values are never shown.
SECRET_NAME = re.compile(r"auth|cookie|token|secret|key|pass|pwd|credential|session|sig", re.I)
REDACTED = "[redacted]"


def redact_header(name: str, value: str) -> str:
    """The value a viewer may see: secrets (Authorization, Cookie, *token*, ...) hidden."""
    return REDACTED if SECRET_NAME.search(name) else value


def redact_target(target: str) -> str:
    """A request target with the values of secret-looking query parameters hidden."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    pairs = parse_qsl(query, keep_blank_values=True)
    return (
        path
        + "?"
        + urlencode([(k, REDACTED if SECRET_NAME.search(k) else v) for k, v in pairs], safe="[]")
    )


def redact_url(config: RunConfig) -> str:
    """The run's URL as others may see it (the first request's target, secrets hidden)."""
    return config.origin.url(redact_target(config.requests[0].target))
