"""The exporter over real runs against 127.0.0.1, and the HTTP server that serves /metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
import trio.lowlevel
from helpers import run_config
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample
from servers import FaultServer, RunningTarget

from ballista import __version__
from ballista.core.config import LoadSpec, RequestSpec, RunConfig, parse_url
from ballista.core.outcome import ERROR_LABELS
from ballista.core.snapshot import Snapshot
from ballista.engine.engine import Engine
from ballista.observe import httpserver
from ballista.observe.httpserver import MAX_BODY, Request, Response, Slot, Slots, serve_http
from ballista.observe.metrics import LATENCY_BUCKETS, MetricsExporter, serve_metrics

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


async def run_exported(config: RunConfig) -> tuple[MetricsExporter, Snapshot]:
    """Run `config` to the end with an exporter wired as the CLI wires it."""
    exporter = MetricsExporter(config, run_id="test-run", registry=CollectorRegistry())
    engine = Engine(config, sinks=[exporter.update], grace=2.0)
    engine.on_start.append(exporter.on_start)
    with trio.fail_after(60):
        final = await engine.run()
    return exporter, final


def samples(exporter: MetricsExporter) -> list[Sample]:
    _, body = exporter.render("")
    return [s for fam in text_string_to_metric_families(body.decode()) for s in fam.samples]


def select(found: list[Sample], name: str, **labels: str) -> Iterator[Sample]:
    for s in found:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            yield s


def total(found: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in select(found, name, **labels))


def one(found: list[Sample], name: str, **labels: str) -> float:
    matched = list(select(found, name, **labels))
    assert len(matched) == 1, (name, labels, matched)
    return matched[0].value


# -- the exporter --------------------------------------------------------------------


def test_buckets_span_half_a_millisecond_to_a_minute() -> None:
    assert LATENCY_BUCKETS[0] == 0.0005
    assert LATENCY_BUCKETS[-1] == 60.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))


def test_series_exist_with_zeros_before_the_first_snapshot() -> None:
    config = run_config("http://127.0.0.1:9/", "-n", "10", "--http2")
    exporter = MetricsExporter(config, run_id="r1", registry=CollectorRegistry())
    found = samples(exporter)
    base = {"scenario": "default", "request": "default"}
    assert one(found, "ballista_requests_total", **base, method="GET", status="error") == 0
    for kind in ERROR_LABELS:
        assert one(found, "ballista_request_errors_total", **base, kind=kind) == 0
    assert one(found, "ballista_request_duration_seconds_count", **base) == 0
    assert one(found, "ballista_request_duration_seconds_bucket", **base, le="+Inf") == 0
    assert one(found, "ballista_in_flight_requests", scenario="default") == 0
    # the limit is the engine's to decide: unknown before it starts
    assert not list(select(found, "ballista_concurrency_limit"))
    assert one(found, "ballista_build_info", version=__version__) == 1
    info = next(select(found, "ballista_run_info"))
    assert info.labels == {
        "scenario": "default",
        "run_id": "r1",
        "target": "http://127.0.0.1:9/",
        "model": "closed",
        "protocol": "HTTP/2",
    }
    # nothing of the open model in a closed run
    assert not list(select(found, "ballista_target_rate_requests_per_second"))


async def test_counts_agree_with_the_final_snapshot(target: RunningTarget) -> None:
    exporter, final = await run_exported(run_config(target.url, "-n", "400", "-c", "8"))
    found = samples(exporter)
    base = {"scenario": "default", "request": "default"}
    assert final.requests == 400
    assert total(found, "ballista_requests_total") == 400
    assert one(found, "ballista_requests_total", **base, method="GET", status="200") == 400
    assert one(found, "ballista_requests_total", **base, method="GET", status="error") == 0
    assert one(found, "ballista_request_duration_seconds_count", **base) == 400
    assert one(found, "ballista_request_duration_seconds_sum", **base) == pytest.approx(
        final.histogram.total
    )
    buckets = [
        (float(s.labels["le"]), s.value)
        for s in select(found, "ballista_request_duration_seconds_bucket", **base)
    ]
    assert [le for le, _ in buckets] == [*LATENCY_BUCKETS, float("inf")]
    counts = [n for _, n in buckets]
    assert counts == sorted(counts)
    assert counts[-1] == 400
    assert counts == final.histogram.cumulative_counts([*LATENCY_BUCKETS, float("inf")])
    assert one(found, "ballista_response_bytes_total", **base) == final.bytes_received > 0
    assert one(found, "ballista_request_bytes_total", **base) == final.bytes_sent
    assert one(found, "ballista_connections_opened_total", scenario="default") == 8
    assert one(found, "ballista_concurrency_limit", scenario="default") == 8
    assert one(found, "ballista_in_flight_requests", scenario="default") == 0
    assert one(found, "ballista_dropped_requests_total", scenario="default") == 0
    info = next(select(found, "ballista_run_info"))
    assert info.labels["protocol"] == "HTTP/1.1"
    assert info.labels["model"] == "closed"


async def test_named_requests_get_their_own_series(target: RunningTarget) -> None:
    origin, _ = parse_url(target.url)
    config = RunConfig(
        origin=origin,
        requests=(
            RequestSpec(name="home", method="GET", target="/"),
            RequestSpec(name="submit", method="POST", target="/form", body=b"x" * 100),
        ),
        load=LoadSpec(concurrency=4, requests=300),
        scenario="shop",
    )
    exporter, final = await run_exported(config)
    found = samples(exporter)
    by_name = {r.name: r for r in final.by_request}
    assert sum(r.requests for r in by_name.values()) == 300
    for name, method in (("home", "GET"), ("submit", "POST")):
        stats = by_name[name]
        labels = {"scenario": "shop", "request": name}
        assert total(found, "ballista_requests_total", **labels, method=method) == stats.requests
        assert one(found, "ballista_request_duration_seconds_count", **labels) == stats.requests
        assert one(found, "ballista_request_bytes_total", **labels) == stats.bytes_sent
    per_request = {
        name: one(found, "ballista_request_bytes_total", scenario="shop", request=name)
        / by_name[name].requests
        for name in by_name
    }
    assert per_request["submit"] >= per_request["home"] + 100  # the body is counted
    # label values come from configuration only: never the URL path
    assert all("/form" not in v for s in found for k, v in s.labels.items() if k != "target")


async def test_errors_by_kind(closed_port: int) -> None:
    exporter, final = await run_exported(
        run_config(f"http://127.0.0.1:{closed_port}/", "-n", "20", "-c", "2")
    )
    found = samples(exporter)
    base = {"scenario": "default", "request": "default"}
    assert final.errors == 20
    assert one(found, "ballista_requests_total", **base, method="GET", status="error") == 20
    assert one(found, "ballista_request_errors_total", **base, kind="connect_refused") == 20
    assert total(found, "ballista_request_errors_total") == 20


async def test_open_model_gauges(target: RunningTarget) -> None:
    exporter, final = await run_exported(
        run_config(target.url, "-r", "200", "-d", "500ms", "--max-in-flight", "7")
    )
    found = samples(exporter)
    assert one(found, "ballista_target_rate_requests_per_second", scenario="default") == 200
    assert one(found, "ballista_concurrency_limit", scenario="default") == 7
    assert total(found, "ballista_requests_total") == final.requests >= 90
    assert next(select(found, "ballista_run_info")).labels["model"] == "open"


async def test_faulty_server_reset(reset_server: FaultServer) -> None:
    exporter, final = await run_exported(run_config(reset_server.url, "-n", "5", "-c", "1"))
    found = samples(exporter)
    assert total(found, "ballista_requests_total", status="error") == final.errors == 5
    assert total(found, "ballista_request_errors_total", kind=reset_server.kind.label) == 5


def test_process_and_gc_collectors_in_the_explicit_registry() -> None:
    registry = CollectorRegistry()
    exporter = MetricsExporter(run_config("http://127.0.0.1:9/"), run_id="r", registry=registry)
    assert exporter.registry is registry
    names = {s.name for s in samples(exporter)}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"} <= (
        names
    )
    assert "python_gc_collections_total" in names
    # a second exporter in its own registry does not collide
    MetricsExporter(run_config("http://127.0.0.1:9/"), run_id="r2", registry=CollectorRegistry())


def test_content_negotiation() -> None:
    exporter = MetricsExporter(run_config("http://127.0.0.1:9/"), run_id="r")
    content_type, body = exporter.render("")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"ballista_requests_total{" in body
    content_type, body = exporter.render(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b"# TYPE ballista_requests counter" in body


def test_update_keeps_only_a_reference() -> None:
    exporter = MetricsExporter(run_config("http://127.0.0.1:9/"), run_id="r")
    assert exporter.latest is None
    sentinel = object()
    exporter.update(sentinel)  # type: ignore[arg-type]
    assert exporter.latest is sentinel


# -- the HTTP server -----------------------------------------------------------------


async def http(port: int, raw: bytes) -> bytes:
    """Send raw bytes, read until the server closes."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), headers, body


async def test_serve_metrics_text_and_openmetrics(nursery: trio.Nursery) -> None:
    exporter = MetricsExporter(run_config("http://127.0.0.1:9/"), run_id="r")
    port = await nursery.start(serve_metrics, exporter, "127.0.0.1", 0)
    status, headers, body = split(await http(port, get("/metrics")))
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    assert b"ballista_build_info" in body
    status, headers, body = split(await http(port, get("/metrics", f"Accept: {OPENMETRICS}")))
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = split(await http(port, get("/metrics", method="HEAD")))
    assert status == 200 and body == b"" and int(headers["content-length"]) > 100
    status, _, _ = split(await http(port, get("/metrics", method="DELETE")))
    assert status == 405
    status, _, _ = split(await http(port, get("/nothing")))
    assert status == 404


async def test_extra_routes_share_the_listener(nursery: trio.Nursery) -> None:
    seen: list[Request] = []

    def index(request: Request) -> Response:
        seen.append(request)
        return Response(200, [("content-type", "text/html")], b"<h1>live</h1>")

    async def static(request: Request) -> Response:
        await trio.lowlevel.checkpoint()
        return Response(200, [("content-type", "text/javascript")], request.path.encode())

    exporter = MetricsExporter(run_config("http://127.0.0.1:9/"), run_id="r")
    port = await nursery.start(
        lambda task_status: serve_metrics(
            exporter,
            "127.0.0.1",
            0,
            routes={"/": index, "/static/": static},
            task_status=task_status,
        )
    )
    assert split(await http(port, get("/?run=1", "X-Test: yes")))[2] == b"<h1>live</h1>"
    assert seen[0].query == "run=1" and seen[0].header("x-test") == "yes"
    assert split(await http(port, get("/static/app.js")))[2] == b"/static/app.js"
    assert split(await http(port, get("/metrics")))[0] == 200


async def test_keep_alive_serves_several_requests(nursery: trio.Nursery) -> None:
    port = await nursery.start(
        serve_http, {"/a": lambda r: Response(200, [], b"A")}, "127.0.0.1", 0
    )
    raw = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + get("/a")
    assert (await http(port, raw)).count(b"HTTP/1.1 200") == 3


async def test_bounded_body_and_bad_requests(nursery: trio.Nursery) -> None:
    port = await nursery.start(
        serve_http, {"/": lambda r: Response(200, [], b"ok")}, "127.0.0.1", 0
    )
    big = MAX_BODY + 1
    raw = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {big}\r\n\r\n".encode() + b"x" * big
    assert split(await http(port, raw))[0] == 413
    assert split(await http(port, b"NOT HTTP AT ALL\r\n\r\n"))[0] == 400
    huge_head = b"GET / HTTP/1.1\r\nX: " + b"y" * 40000 + b"\r\n\r\n"
    assert split(await http(port, huge_head))[0] in (400, 431)


async def test_failing_handler_is_a_500(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    port = await nursery.start(serve_http, {"/": broken}, "127.0.0.1", 0)
    assert split(await http(port, get("/")))[0] == 500
    assert "boom" in caplog.text


async def test_a_stalled_client_does_not_block_others(nursery: trio.Nursery) -> None:
    exporter = MetricsExporter(run_config("http://127.0.0.1:9/"), run_id="r")
    port = await nursery.start(serve_metrics, exporter, "127.0.0.1", 0)
    stalled = await trio.open_tcp_stream("127.0.0.1", port)
    async with stalled:
        await stalled.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes
        with trio.fail_after(2):
            assert split(await http(port, get("/metrics")))[0] == 200


def test_run_info_target_never_shows_a_secret() -> None:
    config = run_config("http://127.0.0.1:9/api?token=abc123&page=2", "-n", "1")
    exporter = MetricsExporter(config, run_id="r1", registry=CollectorRegistry())
    _, body = exporter.render("")
    text = body.decode()
    assert "abc123" not in text
    (info,) = [line for line in text.splitlines() if line.startswith("ballista_run_info{")]
    assert 'target="http://127.0.0.1:9/api?token=[redacted]&page=2"' in info


async def test_a_client_that_does_not_read_its_response_loses_the_connection(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hypercorn shields its writes from cancellation; the server closes the socket.
    monkeypatch.setattr(httpserver, "SEND_TIMEOUT", 0.5)
    big = b"x" * (32 * 1024 * 1024)  # far more than the socket buffers take
    port = await nursery.start(
        serve_http, {"/big": lambda r: Response(200, [], big)}, "127.0.0.1", 0
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(get("/big"))
        await trio.sleep(1.5)  # the subject: a client that does not read for a while
        received = 0
        with trio.fail_after(5):
            try:
                while chunk := await stream.receive_some(1024 * 1024):
                    received += len(chunk)
            except trio.BrokenResourceError:
                pass  # reset: closed with unsent bytes
    assert received < len(big)
    # and the listener still serves everyone else
    assert split(await http(port, get("/big", method="HEAD")))[0] == 200


def test_slots_push_out_the_longest_idle_and_never_a_busy_connection() -> None:
    closed: list[str] = []
    slots = Slots(3)
    a, b, c, d, e = (Slot(lambda n=n: closed.append(n)) for n in "abcde")  # type: ignore[misc]
    for slot in (a, b, c):
        assert slots.admit(slot) == (True, None)
    a.busy = 1  # answering a request: never pushed out
    slots.touch(b)  # b just finished a request: now the most recent
    assert slots.admit(d) == (True, c)
    assert slots.admit(e) == (True, b)
    assert len(slots) == 3 and slots.evicted == 2
    d.busy = e.busy = 1
    assert slots.admit(Slot(lambda: None)) == (False, None)
    assert slots.refused == 1
    slots.release(d)
    assert slots.admit(Slot(lambda: None)) == (True, None)
