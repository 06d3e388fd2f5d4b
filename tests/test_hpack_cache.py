"""The HPACK caches give what hpack gives, block for block, and leave the tables as hpack would."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple, OversizedHeaderListError

from ballista.transport.hpack_cache import MAX_ENTRIES, CachingDecoder, CachingEncoder
from ballista.transport.http2 import _CONFIG, _ClientH2

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x-run", b"ab" * 20)]
OTHER = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"), (b"x-other", b"c" * 50)]


def table(coder: Encoder | Decoder) -> tuple[int, list[tuple[bytes, bytes]]]:
    return coder.header_table.maxsize, list(coder.header_table.dynamic_entries)


def test_encoder_reuses_a_block_only_while_the_table_stands_still() -> None:
    plain, caching = Encoder(), CachingEncoder()
    r, o = REQUEST, OTHER
    steps: list[object] = [r, r, r, o, r, r, r, 100, r, r, r, 0, r, r, r, 4096, r, r, r, o, o, o, r]
    reused = 0
    previous: bytes | None = None
    for step in steps:
        if isinstance(step, int):
            # what h2 does when the peer's SETTINGS_HEADER_TABLE_SIZE changes
            plain.header_table_size = caching.header_table_size = step
            previous = None
            continue
        assert isinstance(step, list)
        expected = plain.encode(list(step))
        got = caching.encode(list(step))
        assert got == expected
        assert table(caching) == table(plain)
        reused += got is previous
        previous = got
    # Per table state: the encode that changed it, the one that found it unchanged
    # (and stored its block), then each later repeat is served from the cache.
    assert reused == 7


def test_encoder_never_caches_never_indexed_headers() -> None:
    """A NeverIndexedHeaderTuple equals the plain tuple, but must never get its indexed block."""
    secret = [(b":method", b"GET"), NeverIndexedHeaderTuple(b"authorization", b"token")]
    open_ = [(b":method", b"GET"), (b"authorization", b"token")]
    plain, caching = Encoder(), CachingEncoder()
    for headers in (open_, open_, secret, secret, open_, secret):
        assert caching.encode(list(headers)) == plain.encode(list(headers))
        assert table(caching) == table(plain)


def literal_indexed(name: bytes, value: bytes) -> bytes:
    """A literal with incremental indexing and a new name: it adds to the table every time."""
    return b"\x40" + bytes([len(name)]) + name + bytes([len(value)]) + value


def test_decoder_matches_hpack_when_blocks_add_entries_again_and_again() -> None:
    server = Encoder()
    server.header_table_size = 200  # small: every add evicts
    response = server.encode([(b":status", b"200"), (b"server", b"t"), (b"x-a", b"1" * 30)])
    again = server.encode([(b":status", b"200"), (b"server", b"t"), (b"x-a", b"1" * 30)])
    adds = literal_indexed(b"x-id", b"7" * 40)  # equal entries, new tuples each time
    newest = b"\xbe\xbf"  # indexed 62 and 63: the two newest dynamic entries
    blocks = [response, again, again, adds, newest, adds, newest, again, adds, adds, newest]
    grow = b"\x3f\xe1\x1f"  # a table size update to 4096
    blocks += [again, grow, again, again, again]
    plain, caching = Decoder(), CachingDecoder()
    served = 0
    previous: object = None
    for block in blocks:
        try:
            expected: object = plain.decode(block, raw=True)
        except Exception as exc:
            expected = type(exc)
        try:
            got: object = caching.decode(block, raw=True)
        except Exception as exc:
            got = type(exc)
        assert got == expected, block
        assert table(caching) == table(plain)
        served += got is previous
        previous = got
    assert served == 3


def test_a_cached_block_is_checked_against_a_lowered_header_list_limit() -> None:
    server = Encoder()
    headers = [(b":status", b"200"), (b"x-big", b"v" * 300)]
    first, block = server.encode(headers), server.encode(headers)
    decoder = CachingDecoder()
    decoder.decode(first, raw=True)
    assert decoder.decode(block, raw=True) is decoder.decode(block, raw=True)
    decoder.max_header_list_size = 100
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(block, raw=True)


def test_h2_peers_agree_across_header_table_size_changes() -> None:
    """Ballista's connection against a plain h2 server that shrinks, empties and
    grows the table it lets Ballista use, and answers with the same headers."""
    client = _ClientH2(config=_CONFIG)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
    headers.append((b"user-agent", b"ballista-test"))
    answer = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-served-by", b"s")]
    sizes = {3: 0, 6: 64, 9: 4096}
    for i in range(12):
        if i in sizes:
            server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: sizes[i]})
            client.receive_data(server.data_to_send())
            server.receive_data(client.data_to_send())
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, headers, end_stream=True)
        received = [e for e in server.receive_data(client.data_to_send())]
        requests = [e for e in received if isinstance(e, h2.events.RequestReceived)]
        assert [list(r.headers) for r in requests] == [headers], i
        server.send_headers(sid, answer, end_stream=True)
        events = client.receive_data(server.data_to_send())
        responses = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert [list(r.headers) for r in responses] == [answer], i
    assert table(client.encoder) == table(server.decoder)
    assert table(client.decoder) == table(server.encoder)


def test_new_blocks_are_still_cached_once_the_cache_has_been_full() -> None:
    """A Date header sent as a literal changes the block every second: the cache
    must keep taking the newest blocks, however many came before."""
    server = Encoder()
    decoder = CachingDecoder()
    for second in range(MAX_ENTRIES * 3):
        date = f"Mon, 30 Nov 2026 22:{second // 60:02}:{second % 60:02} GMT".encode()
        headers = [(b":status", b"200"), NeverIndexedHeaderTuple(b"date", date)]
        block = server.encode(headers)
        assert decoder.decode(block, raw=True) == headers
        again = decoder.decode(block, raw=True)
        assert decoder.decode(block, raw=True) is again
    assert len(decoder._headers) <= MAX_ENTRIES
