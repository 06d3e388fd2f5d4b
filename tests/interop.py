"""Real web servers (nginx, Apache with mod_http2, h2o and Caddy from Debian's packages;
Node's http and http2 modules), each started as a child process with a minimal
configuration and its default limits, logging every request to an access log that
tests count Ballista against.

The configurations only listen on 127.0.0.1:<free port>, write the log, serve a few
fixed paths and turn on h2c or TLS; keep-alive requests, concurrent streams and flow
control windows stay at each server's defaults, since that is what users meet.
Binaries come from `scripts/_setup` (BALLISTA_SYSTEM_PACKAGES).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from helpers import free_port, wait_until
from servers import HOST, TlsFiles

#: How long a server may take to listen, and to write the last lines of its log.
READY_TIMEOUT = 15.0
LOG_TIMEOUT = 5.0

#: Paths every server serves the same way.
SMALL = "/small.txt"  # a 3-byte static file
LARGE = "/large.bin"  # a static file of LARGE_SIZE bytes
ECHO = "/answer"  # answers 200 at once, whatever the request body (not read)
REDIRECT = "/old"  # 301 to SMALL
LARGE_SIZE = 1_000_000

SERVERS = ("nginx", "apache", "h2o", "caddy", "node")
#: How each server is reached: HTTP/1.1 and h2 (prior knowledge) in clear, both over TLS.
MODES = ("http1", "h2c", "http1-tls", "h2-tls")


@dataclass(frozen=True, slots=True)
class LogLine:
    """One request as the server logged it."""

    status: int
    protocol: str  # "HTTP/1.1" or "HTTP/2" (servers spell 2 differently: normalised)
    port: int  # the client's port: one per connection
    method: str
    path: str


@dataclass
class RealServer:
    """A server process serving in a test's nursery."""

    name: str
    port: int
    tls: bool
    access_log: Path
    parse: Callable[[str], LogLine]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def lines(self) -> list[LogLine]:
        if not self.access_log.exists():
            return []
        text = self.access_log.read_text()
        return [self.parse(line) for line in text.splitlines() if line.strip()]

    async def wait_for_lines(self, n: int) -> list[LogLine]:
        """The log once it holds at least `n` lines (servers log after answering)."""
        await wait_until(
            lambda: len(self.lines()) >= n, f"{n} lines in {self.name}'s log", limit=LOG_TIMEOUT
        )
        return self.lines()


def tally(lines: list[LogLine]) -> tuple[Counter[int], Counter[str], int]:
    """(statuses, protocols, distinct connections) of a log."""
    statuses = Counter(line.status for line in lines)
    protocols = Counter(line.protocol for line in lines)
    return statuses, protocols, len({line.port for line in lines})


def _protocol(text: str) -> str:
    return "HTTP/2" if text in ("HTTP/2", "HTTP/2.0") else text


def _parse_plain(line: str) -> LogLine:
    """`status protocol port method path`, the format nginx, Apache and h2o write."""
    status, protocol, port, method, path = line.split(" ", 4)
    return LogLine(int(status), _protocol(protocol), int(port), method, path)


def _parse_caddy(line: str) -> LogLine:
    entry = json.loads(line)
    request = entry["request"]
    return LogLine(
        int(entry["status"]),
        _protocol(request["proto"]),
        int(request["remote_port"]),
        request["method"],
        request["uri"],
    )


def _as_root(line: str) -> str:
    """A server started as root drops to an unprivileged user; otherwise it stays who it is."""
    return line if os.geteuid() == 0 else ""


def _docroot() -> Path:
    """Static files readable by the unprivileged user a server drops to when run as
    root: pytest's tmp_path lives under a directory only its owner may enter."""
    root = Path(tempfile.mkdtemp(prefix="ballista-docroot-"))
    root.chmod(0o755)
    (root / SMALL.lstrip("/")).write_bytes(b"ok\n")
    (root / LARGE.lstrip("/")).write_bytes(os.urandom(LARGE_SIZE))
    (root / ECHO.lstrip("/")).write_bytes(b"ok\n")
    for f in root.iterdir():
        f.chmod(0o644)
    return root


# -- configurations -------------------------------------------------------------


def _nginx_head(work: Path) -> str:
    """The start of an nginx.conf that runs in the foreground with every file under `work`,
    up to the opening of its `http` block."""
    temp = "\n    ".join(
        f"{kind}_temp_path {work / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {work / "nginx.pid"};
error_log {work / "error.log"};
events {{}}
http {{
    {temp}
"""


def _nginx_argv(work: Path) -> list[str]:
    return ["nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "error.log")]


def _nginx(work: Path, port: int, mode: str, tls: TlsFiles | None, root: Path) -> list[str]:
    listen = f"{HOST}:{port}"
    if tls is not None:
        listen += " ssl"
    if mode.startswith("h2"):
        listen += " http2"
    certs = (
        f"ssl_certificate {tls.certfile};\n        ssl_certificate_key {tls.keyfile};"
        if tls is not None
        else ""
    )
    (work / "nginx.conf").write_text(
        _nginx_head(work)
        + f"""
    log_format interop '$status $server_protocol $remote_port $request_method $uri';
    access_log {work / "access.log"} interop;
    server {{
        listen {listen};
        {certs}
        root {root};
        location = {ECHO} {{ return 200 "ok\\n"; }}
        location = {REDIRECT} {{ return 301 {SMALL}; }}
    }}
}}
"""
    )
    return _nginx_argv(work)


def _apache(work: Path, port: int, mode: str, tls: TlsFiles | None, root: Path) -> list[str]:
    modules = Path("/usr/lib/apache2/modules")
    load = ["mpm_event", "authz_core", "mime", "alias", "http2"]
    if tls is not None:
        load.append("ssl")
    protocols = "h2 http/1.1" if tls is not None else "h2c http/1.1"
    if mode in ("http1", "http1-tls"):
        # What a server without HTTP/2 looks like: ALPN offers only http/1.1.
        protocols = "http/1.1"
    ssl_lines = (
        f"SSLEngine on\nSSLCertificateFile {tls.certfile}\nSSLCertificateKeyFile {tls.keyfile}"
        if tls is not None
        else ""
    )
    loads = "\n".join(f"LoadModule {m}_module {modules / f'mod_{m}.so'}" for m in load)
    (work / "apache2.conf").write_text(
        f"""
ServerRoot {work}
ServerName 127.0.0.1
{loads}
{_as_root("User www-data")}
{_as_root("Group www-data")}
Listen {HOST}:{port}
PidFile {work / "apache2.pid"}
DefaultRuntimeDir {work}
Mutex file:{work} default
ErrorLog {work / "error.log"}
LogFormat "%>s %H %{{remote}}p %m %U" interop
CustomLog {work / "access.log"} interop
TypesConfig /etc/mime.types
DocumentRoot {root}
<Directory {root}>
    Require all granted
</Directory>
Protocols {protocols}
Redirect 301 {REDIRECT} {SMALL}
{ssl_lines}
"""
    )
    return ["apache2", "-f", str(work / "apache2.conf"), "-DFOREGROUND"]


def _h2o(work: Path, port: int, mode: str, tls: TlsFiles | None, root: Path) -> list[str]:
    ssl_block = (
        f"""
  ssl:
    certificate-file: {tls.certfile}
    key-file: {tls.keyfile}"""
        if tls is not None
        else ""
    )
    (work / "h2o.conf").write_text(
        f"""
{_as_root("user: www-data")}
error-log: {work / "error.log"}
access-log:
  path: {work / "access.log"}
  format: "%s %H %{{remote}}p %m %U"
listen:
  host: {HOST}
  port: {port}{ssl_block}
hosts:
  default:
    paths:
      {REDIRECT}:
        redirect:
          status: 301
          url: {SMALL}
      /:
        file.dir: {root}
"""
    )
    return ["h2o", "-c", str(work / "h2o.conf")]


def _caddy(work: Path, port: int, mode: str, tls: TlsFiles | None, root: Path) -> list[str]:
    protocols = "h1 h2" if tls is not None else "h1 h2c"
    tls_line = f"tls {tls.certfile} {tls.keyfile}" if tls is not None else ""
    scheme = "https" if tls is not None else "http"
    (work / "Caddyfile").write_text(
        f"""
{{
    admin off
    auto_https off
    storage file_system {work / "storage"}
    servers {{
        protocols {protocols}
    }}
}}
{scheme}://{HOST}:{port} {{
    bind {HOST}
    {tls_line}
    log {{
        output file {work / "access.log"}
        format json
    }}
    root * {root}
    redir {REDIRECT} {SMALL} 301
    respond {ECHO} "ok" 200
    file_server
}}
"""
    )
    return ["caddy", "run", "--adapter", "caddyfile", "--config", str(work / "Caddyfile")]


def _node(work: Path, port: int, mode: str, tls: TlsFiles | None, root: Path) -> list[str]:
    script = Path(__file__).with_name("node_server.js")
    kind = "tls" if tls is not None else mode
    argv = ["node", str(script), kind, str(port), str(root), str(work / "access.log")]
    if tls is not None:
        argv += [tls.certfile, tls.keyfile]
    return argv


_CONFIGS = {"nginx": _nginx, "apache": _apache, "h2o": _h2o, "caddy": _caddy, "node": _node}
_PARSERS: dict[str, Callable[[str], LogLine]] = {"caddy": _parse_caddy}


async def start_server(
    nursery: trio.Nursery, name: str, mode: str, work: Path, tls: TlsFiles | None
) -> RealServer:
    """Start server `name` for `mode` (see MODES) and wait until it accepts connections."""
    server, argv, root = _configure(name, mode, work, tls)
    env = {
        **os.environ,
        "HOME": str(work),
        "XDG_DATA_HOME": str(work),
        "XDG_CONFIG_HOME": str(work),
    }
    with (work / "stderr.log").open("wb") as log:
        process = await trio.lowlevel.open_process(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(work)
        )
    nursery.start_soon(_reap, process, root)
    await _wait_listening(server.port, process, work / "stderr.log", work / "error.log")
    return server


def _configure(
    name: str, mode: str, work: Path, tls: TlsFiles | None
) -> tuple[RealServer, list[str], Path]:
    """Write the configuration and the static files; return the server, its argv and docroot."""
    binary = {"apache": "apache2"}.get(name, name)
    if shutil.which(binary) is None:
        raise RuntimeError(f"{binary} is not installed: scripts/_setup installs it")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    use_tls = tls if mode.endswith("-tls") else None
    root = _docroot()
    argv = _CONFIGS[name](work, port, mode, use_tls, root)
    parse = _PARSERS.get(name, _parse_plain)
    return RealServer(name, port, use_tls is not None, work / "access.log", parse), argv, root


async def start_nginx_proxy(nursery: trio.Nursery, work: Path, locations: str) -> tuple[int, Path]:
    """nginx as a reverse proxy: `locations` (nginx `location` blocks) in one server
    on 127.0.0.1:<free port>, each request logged with its full URI when it ends.
    Returns the port and the access log."""
    port, argv = _nginx_proxy(work, locations)
    with (work / "stderr.log").open("wb") as log:
        process = await trio.lowlevel.open_process(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(work)
        )
    nursery.start_soon(_reap, process, work / "no-docroot")
    await _wait_listening(port, process, work / "stderr.log", work / "error.log")
    return port, work / "access.log"


def _nginx_proxy(work: Path, locations: str) -> tuple[int, list[str]]:
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed: scripts/_setup installs it")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (work / "nginx.conf").write_text(
        _nginx_head(work)
        + f"""
    log_format full '$status $request_method $request_uri';
    access_log {work / "access.log"} full;
    server {{
        listen {HOST}:{port};
        {locations}
    }}
}}
"""
    )
    return port, _nginx_argv(work)


async def _reap(process: trio.Process, root: Path) -> None:
    try:
        await process.wait()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with trio.move_on_after(5):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            shutil.rmtree(root, ignore_errors=True)


async def _wait_listening(port: int, process: trio.Process, *logs: Path) -> None:
    with trio.move_on_after(READY_TIMEOUT):
        while process.returncode is None:
            try:
                stream = await trio.open_tcp_stream(HOST, port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return
    said = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs if p.exists())
    raise RuntimeError(
        f"{process.args!r} did not listen on {HOST}:{port} (exit {process.returncode}):\n{said}"
    )
