"""Floors of Ballista's own stack: trio with canned bytes, with bare h11, with bare h2.

    python bench/floor.py raw URL -c 50 -d 10     # canned request, responses read, not parsed
    python bench/floor.py h11 URL -c 50 -d 10     # bare h11 state machine per connection
    python bench/floor.py h2 URL -c 10 -m 10 -d 10  # bare h2: 10 connections x 10 streams

Each runs closed-loop for the duration and prints `requests: N`; bench/run.py
measures the process's CPU and memory around it, as it does for every generator.
Loopback only: nothing here is a load generator for anyone else's server.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h11
import trio

READ = 65536


def request_bytes(host: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: floor\r\nAccept: */*\r\n\r\n".encode()
    )


async def response_length(host: str, port: int, request: bytes) -> int:
    """Bytes of one whole response (nginx's are all the same size), read once with h11."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(request)
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", host)]))
        conn.send(h11.EndOfMessage())
        total = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(READ)
                total += len(chunk)
                conn.receive_data(chunk)
            elif isinstance(event, h11.EndOfMessage):
                return total


async def raw(host: str, port: int, path: str, conns: int, duration: float) -> int:
    request = request_bytes(host, path)
    size = await response_length(host, port, request)
    done = 0

    async def one() -> None:
        nonlocal done
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            while True:
                await stream.send_all(request)
                got = 0
                while got < size:
                    got += len(await stream.receive_some(READ))
                done += 1

    with trio.move_on_after(duration):
        async with trio.open_nursery() as nursery:
            for _ in range(conns):
                nursery.start_soon(one)
    return done


async def bare_h11(host: str, port: int, path: str, conns: int, duration: float) -> int:
    done = 0

    async def one() -> None:
        nonlocal done
        stream = await trio.open_tcp_stream(host, port)
        conn = h11.Connection(h11.CLIENT)
        headers = [("Host", host), ("User-Agent", "floor"), ("Accept", "*/*")]
        async with stream:
            while True:
                data = conn.send(h11.Request(method="GET", target=path, headers=headers))
                data += conn.send(h11.EndOfMessage())
                await stream.send_all(data)
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(READ))
                    elif isinstance(event, h11.EndOfMessage):
                        break
                conn.start_next_cycle()
                done += 1

    with trio.move_on_after(duration):
        async with trio.open_nursery() as nursery:
            for _ in range(conns):
                nursery.start_soon(one)
    return done


async def bare_h2(
    host: str, port: int, path: str, conns: int, streams: int, duration: float
) -> int:
    done = 0
    headers = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", f"{host}:{port}"),
        (":path", path),
        ("user-agent", "floor"),
    ]

    async def connection() -> None:
        nonlocal done
        stream = await trio.open_tcp_stream(host, port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        ended: dict[int, trio.Event] = {}
        send_lock = trio.Lock()

        async def reader() -> None:
            while True:
                data = await stream.receive_some(READ)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        waiter = ended.pop(event.stream_id, None)
                        if waiter is not None:
                            waiter.set()
                # Taken under the lock: frames must leave in the order h2 queued them.
                async with send_lock:
                    out = conn.data_to_send()
                    if out:
                        await stream.send_all(out)

        async def worker() -> None:
            nonlocal done
            while True:
                stream_id = conn.get_next_available_stream_id()
                event = ended[stream_id] = trio.Event()
                conn.send_headers(stream_id, headers, end_stream=True)
                async with send_lock:
                    await stream.send_all(conn.data_to_send())
                await event.wait()
                done += 1

        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for _ in range(streams):
                nursery.start_soon(worker)

    with trio.move_on_after(duration):
        async with trio.open_nursery() as nursery:
            for _ in range(conns):
                nursery.start_soon(connection)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("raw", "h11", "h2"))
    ap.add_argument("url")
    ap.add_argument("-c", type=int, default=50, help="connections")
    ap.add_argument("-m", type=int, default=10, help="h2: streams per connection")
    ap.add_argument("-d", type=float, default=10.0, help="seconds")
    args = ap.parse_args()
    url = urlsplit(args.url)
    host, port, path = url.hostname, url.port, url.path or "/"
    if host not in ("127.0.0.1", "localhost", "::1") or port is None:
        raise SystemExit("floor: a loopback URL with a port, please")
    if args.mode == "raw":
        done = trio.run(raw, host, port, path, args.c, args.d)
    elif args.mode == "h11":
        done = trio.run(bare_h11, host, port, path, args.c, args.d)
    else:
        done = trio.run(bare_h2, host, port, path, args.c, args.m, args.d)
    print(f"requests: {done}")


if __name__ == "__main__":
    main()
