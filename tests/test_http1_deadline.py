"""A closed-model worker on its own HTTP/1.1 connection bounds request after request with
one cancel scope: a timed-out request must not leak its cancellation into the next."""

from __future__ import annotations

import trio
from test_engine import kinds, run

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def start_every_other_silent(nursery: trio.Nursery) -> tuple[str, list[int]]:
    """Answers requests 2, 4, 6... at once; requests 1, 3, 5... are never answered."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    seen = [0]

    async def handle(stream: trio.SocketStream) -> None:
        buffer = b""
        with trio.move_on_after(20):
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    buffer += chunk
                _, _, buffer = buffer.partition(b"\r\n\r\n")
                seen[0] += 1
                if seen[0] % 2:
                    # Hold the connection until the client gives up on it.
                    while await stream.receive_some(4096):
                        pass
                    return
                await stream.send_all(ANSWER)

    await nursery.start(trio.serve_listeners, handle, listeners)
    return f"http://127.0.0.1:{port}/", seen


async def test_timeouts_and_answers_alternate_on_one_worker(nursery: trio.Nursery) -> None:
    url, seen = await start_every_other_silent(nursery)
    _, final = await run(url, "-n", "5", "-c", "1", "--timeout", "300ms")
    assert seen[0] == 5
    assert kinds(final) == {"read_timeout": 3}
    assert final.status_codes == {200: 2}
    # Each timeout drops its connection; answered ones keep theirs for the next request.
    assert final.connections_opened == 3
    assert 0.25 < final.latency.max < 0.45
    assert final.latency.min < 0.1
