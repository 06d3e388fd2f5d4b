"""Differential tests: the llhttp response reader against h11 (the reader it replaced) on one corpus."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ballista.transport.connect import PeerClosed, ProtocolViolation
from ballista.transport.h1response import MAX_HEAD, FastReader, H11Reader, ResponseReader

Outcome = tuple[object, ...]

CORPUS: dict[str, bytes] = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
    "empty body": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "no reason": b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n",
    "no reason, no space": b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "chunked, extension and trailer": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"
    ),
    "chunked, Content-Length beside": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    ),
    "close-delimited": b"HTTP/1.1 200 OK\r\n\r\nthe body ends with the connection",
    "close-delimited, empty": b"HTTP/1.1 200 OK\r\n\r\n",
    "Connection: close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    "Connection: keep-alive, close": (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: Close\r\n"
        b"Content-Length: 0\r\n\r\n"
    ),
    "HTTP/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.0 keep-alive": b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.0 close-delimited": b"HTTP/1.0 200 OK\r\n\r\nbody",
    "100 then 201": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    "100, 103 then 200": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    ),
    "204": b"HTTP/1.1 204 No Content\r\n\r\n",
    "304 with a length": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "503 Retry-After": b"HTTP/1.1 503 Busy\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n",
    "429 two Retry-After": (
        b"HTTP/1.1 429 Slow\r\nretry-after: 1\r\nRETRY-AFTER: 7\r\nContent-Length: 0\r\n\r\n"
    ),
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "large body": b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300_000,
    "large chunked body": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (n, b"y" * n) for n in (1, 4096, 70000, 3))
        + b"0\r\n\r\n"
    ),
    "head below the limit": (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD - 1000) + b"\r\nContent-Length: 0\r\n\r\n"
    ),
    # Malformed: both readers must call these protocol errors (or a close, at the end).
    "head above the limit": (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD + 4000) + b"\r\nContent-Length: 0\r\n\r\n"
    ),
    "not HTTP": b"garbage\r\n\r\n",
    "four-digit status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "bad Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    "two different Content-Lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"
    ),
    "Transfer-Encoding gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
    "space in a header name": b"HTTP/1.1 200 OK\r\nX Y: a\r\nContent-Length: 0\r\n\r\n",
    "space before the colon": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    "NUL in a header value": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "101 nobody asked for": b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    # Cut short: the connection closed before the response ended.
    "nothing": b"",
    "half a status line": b"HTTP/1.1 20",
    "head without its end": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
    "body cut short": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",
    "chunk cut short": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
    "last chunk missing": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
}

# Where llhttp is stricter than h11, on purpose (each is a protocol error for Ballista now).
KNOWN_DIFFERENCES: dict[str, bytes] = {
    # RFC 9110 allows a recipient to accept identical duplicates; llhttp refuses them.
    "two equal Content-Lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
    ),
    # Obsolete line folding (RFC 9112 5.2): h11 unfolds it, llhttp refuses it.
    "obs-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n  b\r\nContent-Length: 0\r\n\r\n",
}


def outcome(reader: ResponseReader, data: bytes, chunks: list[int], *, head: bool) -> Outcome:
    """Feed `data` cut at `chunks` sizes (the rest in one piece), then EOF if still unfinished."""
    reader.start(head)
    pieces: list[bytes] = []
    rest = data
    for size in chunks:
        if not rest:
            break
        pieces.append(rest[:size])
        rest = rest[size:]
    if rest:
        pieces.append(rest)
    try:
        ended_early = False
        for piece in pieces:
            if reader.feed(piece):
                ended_early = True
                break
        if not ended_early:
            reader.feed_eof()
    except ProtocolViolation:
        return ("protocol",)
    except PeerClosed:
        return ("closed",)
    return ("response", reader.status, reader.retry_after, reader.reusable, ended_early)


def both(data: bytes, chunks: list[int], *, head: bool = False) -> tuple[Outcome, Outcome]:
    return (
        outcome(H11Reader(), data, chunks, head=head),
        outcome(FastReader(), data, chunks, head=head),
    )


@pytest.mark.parametrize("head", [False, True], ids=["GET", "HEAD"])
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_same_outcome_whole_and_byte_by_byte(name: str, head: bool) -> None:
    data = CORPUS[name]
    whole_h11, whole_fast = both(data, [], head=head)
    assert whole_fast == whole_h11
    if len(data) < 20_000:
        assert both(data, [1] * len(data), head=head) == (whole_h11, whole_h11)


@given(
    name=st.sampled_from(sorted(CORPUS)),
    chunks=st.lists(st.integers(min_value=1, max_value=4096), max_size=12),
    head=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_same_outcome_however_the_bytes_arrive(name: str, chunks: list[int], head: bool) -> None:
    h11_outcome, fast_outcome = both(CORPUS[name], chunks, head=head)
    assert fast_outcome == h11_outcome


def test_the_corpus_covers_every_outcome() -> None:
    kinds = {both(data, [])[0][0] for data in CORPUS.values()}
    assert kinds == {"response", "protocol", "closed"}


@pytest.mark.parametrize("name", sorted(KNOWN_DIFFERENCES))
def test_known_differences_are_protocol_errors(name: str) -> None:
    h11_outcome, fast_outcome = both(KNOWN_DIFFERENCES[name], [])
    assert h11_outcome[0] == "response"
    assert fast_outcome == ("protocol",)


def explained(data: bytes, h11_outcome: Outcome, fast_outcome: Outcome) -> bool:
    """Whether a disagreement is one of the documented kinds (see the comments)."""
    if h11_outcome[0] != "response" and fast_outcome == ("protocol",):
        # Both refuse; h11 waited for a whole line and met EOF, llhttp saw the bad byte.
        return True
    if fast_outcome[0] == "response" and fast_outcome[:3] == h11_outcome[:3]:
        # Same response; only whether the connection is reused differs: llhttp does not
        # keep one with bytes after the response (h11 charged them to the next request).
        return fast_outcome[3] is False
    if re.search(rb"(?<!\r)\n", data):
        # A bare LF (RFC 9112 2.2 lets a recipient accept it): h11 takes it in the head
        # only, llhttp everywhere.
        return True
    # llhttp refuses DEL in header values and HTTP/0.x heads; h11 reads both.
    return fast_outcome == ("protocol",) and (b"\x7f" in data or b"HTTP/0." in data)


def test_mutated_responses_agree() -> None:
    """Single-byte corruptions of well-formed responses: the readers agree, or differ
    only in the documented ways."""
    rng = random.Random(14)
    seeds = [CORPUS[n] for n in ("content-length", "chunked", "503 Retry-After", "100 then 201")]
    alphabet = b"\r\n :;,0aZ\x00\x7f\t9"
    agreed = 0
    unexplained = []
    for _ in range(1500):
        data = bytearray(rng.choice(seeds))
        data[rng.randrange(len(data))] = rng.choice(alphabet)
        h11_outcome, fast_outcome = both(bytes(data), [])
        if h11_outcome == fast_outcome:
            agreed += 1
        elif not explained(bytes(data), h11_outcome, fast_outcome):
            unexplained.append((bytes(data), h11_outcome, fast_outcome))
    assert unexplained == []
    assert agreed > 1300


def test_one_reader_serves_responses_in_turn() -> None:
    """Keep-alive: the same reader reads response after response, as a connection does."""
    sequence = [
        (CORPUS["content-length"], False),
        (CORPUS["100 then 201"], False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),
        (CORPUS["chunked, extension and trailer"], False),
        (CORPUS["503 Retry-After"], False),
        (CORPUS["204"], False),
    ]
    readers: list[ResponseReader] = [H11Reader(), FastReader()]
    for data, head in sequence:
        results = [outcome(r, data, [7, 1, 30], head=head) for r in readers]
        assert results[0] == results[1]
        assert results[0][:2] == ("response", results[0][1])
        assert results[0][3] is True  # reusable


def test_bytes_after_a_response_are_not_read_as_the_next_one() -> None:
    """Surplus after a complete response: the response counts; llhttp does not keep the
    connection (h11 kept it, and charged the junk to the next request)."""
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nxx"
    assert outcome(FastReader(), data, [], head=False) == ("response", 200, None, False, True)


def test_capturing_reader_keeps_the_final_head_and_the_body() -> None:
    from ballista.transport.connect import Captured
    from ballista.transport.h1response import CapturingReader

    reader = CapturingReader()
    capture = Captured()
    reader.start(False)
    reader.capture = capture
    wire = (
        b"HTTP/1.1 100 Continue\r\nX-Early: 1\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    # Byte by byte: callbacks split anywhere must give the same result.
    done = False
    for i in range(len(wire)):
        done = reader.feed(wire[i : i + 1])
    assert done and reader.status == 200 and reader.reusable
    assert capture.raw_headers == [
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"transfer-encoding", b"chunked"),
    ]
    assert capture.body == b"hello world"
    # The next response on the connection starts afresh; a HEAD's has no body.
    capture = Captured()
    reader.start(True)
    reader.capture = capture
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    assert capture.raw_headers == [(b"content-length", b"99")] and capture.body == b""


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nServer: x\r\nSET-COOKIE: a=1\r\nContent-Length: 5\r\n"
        b"X-Set-Cookie: no\r\nset-cookie: b=2\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nTransfer-Encoding: chunked\r\n"
        b"Set-Cookie: b=2\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
)
def test_a_capture_without_headers_keeps_set_cookie_and_frames_as_any(wire: bytes) -> None:
    """A step that reads no header keeps Set-Cookie alone (its user's jar); the
    response is framed, kept alive or closed exactly as with every header kept."""
    from ballista.transport.connect import Captured
    from ballista.transport.h1response import CapturingReader

    for closing in (False, True):
        data = wire.replace(b"200 OK\r\n", b"200 OK\r\nConnection: close\r\n") if closing else wire
        outcomes = []
        for keep in (True, False):
            reader = CapturingReader()
            capture = Captured(keep)
            reader.start(False)
            reader.capture = capture
            done = False
            for i in range(len(data)):  # callbacks split anywhere
                done = reader.feed(data[i : i + 1])
            assert done and capture.body == b"hello"
            cookies = [v for k, v in capture.raw_headers if k == b"set-cookie"]
            assert cookies == [b"a=1", b"b=2"]
            if not keep:
                assert [k for k, _ in capture.raw_headers] == [b"set-cookie"] * 2
            outcomes.append((reader.status, reader.reusable))
        assert outcomes[0] == outcomes[1] == (200, not closing)


def test_capture_keeps_at_most_its_limit() -> None:
    from ballista.transport.connect import MAX_CAPTURE, Captured

    capture = Captured()
    chunk = b"x" * (1024 * 1024)
    for _ in range(MAX_CAPTURE // len(chunk) + 3):
        capture.add_body(chunk)
    assert capture.truncated and len(capture.body) == MAX_CAPTURE
