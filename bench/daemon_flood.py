"""Hostile clients against a real `ballista serve`: 500 slowloris clients dribbling
request heads at 1 byte/s on the API and 2,000 idle TCP connections on the live
port, while /api/health is polled. Prints health's worst latency, the daemon's
peak file descriptors and when the last hostile connection was closed.

    ulimit -n 20000; .venv/bin/python bench/daemon_flood.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

import trio

DRIBBLERS = 500
IDLE = 2000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def flood(proc: subprocess.Popen[bytes], api: int, live: int) -> None:
    def fds() -> int:
        return len(os.listdir(f"/proc/{proc.pid}/fd"))

    try:
        with trio.fail_after(10):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", api)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.1)
        base = fds()
        dropped: dict[str, list[float]] = {"api": [], "live": []}
        t0 = trio.current_time()

        async def dribble() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", api)
            try:
                await stream.send_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX: ")
                with trio.move_on_after(20):
                    while True:
                        await stream.send_all(b"a")
                        with trio.move_on_after(1.0):
                            if await stream.receive_some(100) == b"":
                                break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            dropped["api"].append(trio.current_time() - t0)
            await trio.aclose_forcefully(stream)

        async def idle() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", live)
            try:
                with trio.move_on_after(20):
                    while await stream.receive_some(100):
                        pass
            except trio.BrokenResourceError:
                pass
            dropped["live"].append(trio.current_time() - t0)
            await trio.aclose_forcefully(stream)

        async def health() -> None:
            worst, answers, tries, peak = 0.0, 0, 0, 0
            end = trio.current_time() + 8
            while trio.current_time() < end:
                start = trio.current_time()
                tries += 1
                answer = b""
                with trio.move_on_after(5):
                    stream = await trio.open_tcp_stream("127.0.0.1", api)
                    async with stream:
                        await stream.send_all(
                            b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                        )
                        try:
                            while chunk := await stream.receive_some(4096):
                                answer += chunk
                        except trio.BrokenResourceError:
                            pass
                if answer.startswith(b"HTTP/1.1 200"):
                    worst = max(worst, trio.current_time() - start)
                    answers += 1
                peak = max(peak, fds())
                await trio.sleep(0.2)
            print(f"health: {answers}/{tries} answered, worst {worst * 1000:.0f} ms")
            print(f"daemon fds: {base} before, peak {peak}")

        async with trio.open_nursery() as nursery:
            for _ in range(DRIBBLERS):
                nursery.start_soon(dribble)
            for _ in range(IDLE):
                nursery.start_soon(idle)
            nursery.start_soon(health)
        print(
            f"dribblers closed: {len(dropped['api'])}/{DRIBBLERS}, last at "
            f"{max(dropped['api']):.1f}s; idle on live: {len(dropped['live'])}/{IDLE}, "
            f"last at {max(dropped['live']):.1f}s; fds after: {fds()}"
        )
    finally:
        proc.terminate()


def main() -> None:
    api, live = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="ballista-flood-")
    argv = [sys.executable, "-m", "ballista", "serve", "--port", str(api)]
    argv += ["--live-port", str(live), "--data-dir", data, "--log-level", "warning"]
    proc = subprocess.Popen(argv)
    try:
        trio.run(flood, proc, api, live)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
