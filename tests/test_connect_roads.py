"""Both roads to a TCP connection (an IP address: one socket connect; a name: httpcore's
resolution and happy eyeballs) serve requests alike, and plain-TCP socket I/O fails as
trio's SocketStream would."""

from __future__ import annotations

import functools
import struct

import pytest
import trio
from servers import RunningTarget
from test_engine import run

from ballista.core.config import Origin
from ballista.transport.connect import Connected, close_quietly, connect


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_ip_and_name_both_serve_exact_counts(target: RunningTarget, host: str) -> None:
    _, final = await run(f"http://{host}:{target.port}/", "-n", "40", "-c", "4")
    assert final.status_codes == {200: 40}
    assert final.connections_opened == 4
    assert target.stats.requests == 40


async def test_socket_io_errors_are_trio_stream_errors(nursery: trio.Nursery) -> None:
    accepted: list[trio.SocketStream] = []
    arrived = trio.Event()

    async def keep(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        arrived.set()
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, keep, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    connected = await connect(Origin("http", "127.0.0.1", port), None)
    try:
        await _break_and_close(connected, accepted, arrived)
    finally:
        await close_quietly(connected.stream)


async def _break_and_close(
    connected: Connected, accepted: list[trio.SocketStream], arrived: trio.Event
) -> None:
    io = connected.io
    await io.send_all(b"")  # nothing to send: returns
    with trio.fail_after(5):
        await arrived.wait()
    # The peer aborts (RST): the next read is a broken stream, from the OS's error.
    sock = accepted[0].socket
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    with pytest.raises(trio.BrokenResourceError) as info:
        with trio.fail_after(5):
            while await io.receive_some(1024):
                pass
    assert isinstance(info.value.__cause__, ConnectionResetError)
    # Once closed here, the stream says so.
    await close_quietly(connected.stream)
    with pytest.raises(trio.ClosedResourceError):
        await io.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await io.receive_some(1024)
