"""HPACK encoder and decoder that reuse earlier results while the dynamic table stands still.

A load test sends the same request headers and reads the same response headers
thousands of times on one connection. Once a header list's entries are in the
dynamic table, encoding it again yields only indexed references and leaves the
table as it was; decoding a block that adds nothing to the table yields the same
headers every time. Both results depend on nothing but their input and the
table's state (and, when decoding, the limits that may reject a block), so each
is reused for as long as that state is unchanged, and forgotten as soon as any
encode, decode or SETTINGS change alters it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder, HeaderTuple

#: Distinct blocks remembered per table state. When full it starts afresh: a
#: server's Date header makes a new block every second (nginx sends it as a
#: literal the table never holds), and the newest blocks are the ones that repeat.
MAX_ENTRIES = 16
#: Larger response header blocks are not kept: a connection's cache stays small
#: next to its buffers even with thousands of connections open.
MAX_BLOCK = 1024

#: What a coder's output depends on besides its input: the table's size limit,
#: how many entries it holds and which entry came last. Every addition puts a new
#: tuple at the front, even one equal to an older entry, so the front entry's
#: identity tells an addition apart; the state holds that entry as well as its id,
#: so the id cannot be reused by another tuple while the state is kept.
_State = tuple[int, int, int, object]


def _table_state(coder: Encoder | Decoder) -> _State:
    table = coder.header_table
    entries = table.dynamic_entries
    first = entries[0] if entries else None
    return (table.maxsize, len(entries), id(first), first)


class CachingEncoder(Encoder):
    """hpack's Encoder, returning the block it produced before for the same plain
    (name, value) tuples while the table is unchanged.

    Lists holding HeaderTuple (e.g. NeverIndexedHeaderTuple) are never cached:
    they compare equal to plain tuples, but are encoded differently.
    """

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[tuple[Any, ...], bytes] = {}
        self._state: _State = _table_state(self)

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if isinstance(headers, dict) or not huffman:
            self._blocks.clear()
            block = super().encode(headers, huffman)
            self._state = _table_state(self)
            return block
        key = tuple(headers)
        table = self.header_table
        if not table.resized:
            cached = self._blocks.get(key)
            if cached is not None and self._state == _table_state(self):
                return cached
        block = super().encode(key, huffman)
        state = _table_state(self)
        if state != self._state:
            self._blocks.clear()
            self._state = state
        elif not any(isinstance(h, HeaderTuple) for h in key):
            # The table did not move while this list was encoded: the same
            # list gives the same block until it does.
            if len(self._blocks) >= MAX_ENTRIES:
                self._blocks.clear()
            self._blocks[key] = block
        return block


class CachingDecoder(Decoder):
    """hpack's Decoder, returning the headers it decoded before from the same block
    while the table (and the limits a block is checked against) are unchanged.

    The list returned for a repeated block is the same object each time: callers
    must not modify it.
    """

    def __init__(self, max_header_list_size: int | None = None) -> None:
        if max_header_list_size is None:
            super().__init__()
        else:
            super().__init__(max_header_list_size)
        self._headers: dict[bytes, Iterable[HeaderTuple]] = {}
        self._state = self._full_state()

    def _full_state(self) -> tuple[int, int, _State]:
        return (self.max_header_list_size, self.max_allowed_table_size, _table_state(self))

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        if not raw or type(data) is not bytes:
            self._headers.clear()
            headers = super().decode(data, raw)
            self._state = self._full_state()
            return headers
        state = self._full_state()
        if state != self._state:
            # A SETTINGS change (or a decode elsewhere) moved the table or the limits.
            self._headers.clear()
            self._state = state
        else:
            cached = self._headers.get(data)
            if cached is not None:
                return cached
        headers = super().decode(data, raw)
        after = self._full_state()
        if after != state:
            self._headers.clear()
            self._state = after
        elif len(data) <= MAX_BLOCK:
            if len(self._headers) >= MAX_ENTRIES:
                self._headers.clear()
            self._headers[data] = headers
        return headers
