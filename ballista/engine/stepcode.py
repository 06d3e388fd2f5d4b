"""A TOML step's HTTP/1.1 request compiled into one Python function.

A simple step (no query, no body) sends the same method, header names and
literal text every time: only its templates' places change. `request_filler`
turns such a step and its plan (transport's H1Plan) into a function of the
virtual user that answers the request's bytes: its places are read, turned to
text and encoded in a few lines of Python made for that step, then put in one
`%` format that already holds everything else. Rendering the templates and
encoding them part by part (the general way) is about three times as many
calls, and this runs for every step.

The compiled function answers exactly what the general way does: it only takes
the common cases (a value that is text, or a whole number; a path's value that
needs no percent-encoding, or the same encoding; a printable header value), and
hands anything else to the general way: a missing variable, a value that cannot
be encoded, a Cookie the plan refuses. The generated text is ours alone: the
step's names, literal text and getters are the code's constants, never its text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ballista.core.flows import Step
from ballista.core.template import quote_value, text_of
from ballista.transport.connect import H1Plan


class _Jar(Protocol):
    def header(self) -> bytes | None: ...


class User(Protocol):
    """What a step's request is made of: the user's variables, numbers and cookies."""

    vu: int
    iteration: int
    vars: dict[str, Any]

    @property
    def cookies(self) -> _Jar: ...


#: A step's request for a user: its bytes, or None where H1Plan would refuse them
#: (the step then takes the general path, which says why); raises JourneyFailure
#: as Step.render does (a variable with no value, a value that is not text).
Fill = Callable[[User], bytes | None]


def request_filler(step: Step, plan: H1Plan) -> Fill:
    """The function that makes `step`'s request with `plan` (compiled where it can be)."""
    general = _general(step, plan)
    return _compiled(step, plan, general) or general


def _general(step: Step, plan: H1Plan) -> Fill:
    """Render the step's templates, then encode them part by part."""

    def fill(user: User) -> bytes | None:
        path, values = step.render(user)
        # The path is a valid target whatever its values (tested); a printable value
        # has no NUL, CR or LF (else the plan looks).
        checked = True
        encoded: list[bytes] = []
        try:
            for value in values:
                if not value.isprintable():
                    checked = False
                encoded.append(value.encode("latin-1"))
        except UnicodeEncodeError:
            return None
        return plan.encode(path.encode("ascii"), encoded, user.cookies.header(), checked)

    return fill


def _compiled(step: Step, plan: H1Plan, general: Fill) -> Fill | None:
    """The step's request as one generated function; None where a literal part is
    one the general way must look at each time (not ASCII in a path; not printable
    Latin-1 in a header)."""
    constants: dict[str, Any] = {
        "general": general,
        "text_of": text_of,
        "quote_value": quote_value,
        "cookie_line": plan.cookie_line,
    }
    body: list[str] = []
    #: the places' encoded values, in order (v0, v1, ...)
    args: list[str] = []
    #: each template's `%` format and its number of places
    formats: list[tuple[bytes, int]] = []
    templates = [(step.path, "ascii", False), *((t, "latin-1", True) for _, t in step.headers)]
    for template, codec, header in templates:
        fmt = b""
        count = 0
        for part in template.parts:
            if isinstance(part, str):
                if header and not part.isprintable():
                    return None
                try:
                    fmt += part.encode(codec).replace(b"%", b"%%")
                except UnicodeEncodeError:
                    return None
                continue
            getter, variable = part
            n = len(args)
            if variable is not None:
                constants[f"N{n}"] = variable
                body.append(f"        v = vars[N{n}]")
            else:
                constants[f"G{n}"] = getter
                body.append(f"        v = G{n}(user)")
            body += _TO_TEXT
            if header:
                body += _PRINTABLE
            elif template.quote_values:
                body += _QUOTED
            body.append(f"        v{n} = v.encode({codec!r})")
            args.append(f"v{n}")
            fmt += b"%s"
            count += 1
        formats.append((fmt, count))
    # Literal parts the plan would refuse (a space in a path): the general way says so.
    sample = [fmt % ((b"0",) * count) for fmt, count in formats]
    if plan.encode(sample[0], sample[1:], None) is None:
        return None
    constants["FMT"] = plan.format_with(formats[0][0], [fmt for fmt, _ in formats[1:]])
    source = "\n".join(
        [
            "def fill(user):",
            "    try:",
            "        vars = user.vars",
            *body,
            "        cookie = user.cookies.header()",
            "        if cookie is None:",
            '            line = b""',
            "        else:",
            "            line = cookie_line(cookie)",
            "            if line is None:",
            "                return general(user)",
            f"        return FMT % ({''.join(a + ', ' for a in args)}line)",
            "    except (KeyError, UnicodeEncodeError, RecursionError):",
            "        return general(user)",
        ]
    )
    exec(source, constants)  # the text is ours; names and literal parts are constants
    fill: Fill = constants["fill"]
    return fill


#: A place's value as text: a template's own rule (text_of), a whole number quicker
_TO_TEXT = [
    "        c = v.__class__",
    "        if c is not str:",
    "            v = str(v) if c is int else text_of(v)",
]
#: A header's value: printable (else the general way, which looks for NUL, CR, LF)
_PRINTABLE = ["        if not v.isprintable():", "            return general(user)"]
#: A path's value: percent-encoded as the template does (letters and digits need none)
_QUOTED = ["        if not (v.isalnum() and v.isascii()):", "            v = quote_value(v)"]
