// Node's own HTTP servers with their default settings, for the interop tests
// (tests/interop.py starts it): http.createServer, http2.createServer (h2c) or
// http2.createSecureServer (TLS, ALPN h2 and http/1.1). One access-log line per
// request: "status protocol client-port method path".
//
// usage: node node_server.js MODE PORT ROOT LOG [CERT KEY]
"use strict";

const fs = require("fs");
const http = require("http");
const http2 = require("http2");
const path = require("path");

const [mode, port, root, logPath, cert, key] = process.argv.slice(2);
const log = fs.openSync(logPath, "a");

function handle(req, res) {
  const url = new URL(req.url, "http://localhost");
  const clientPort = req.socket.remotePort;
  res.on("finish", () => {
    const protocol = req.httpVersion === "2.0" ? "HTTP/2" : `HTTP/${req.httpVersion}`;
    fs.writeSync(log, `${res.statusCode} ${protocol} ${clientPort} ${req.method} ${url.pathname}\n`);
  });
  if (url.pathname === "/answer") {
    // Answers at once and never reads the request body.
    res.writeHead(200, { "content-type": "text/plain", "content-length": "3" });
    res.end("ok\n");
  } else if (url.pathname === "/old") {
    res.writeHead(301, { location: "/small.txt", "content-length": "0" });
    res.end();
  } else {
    const file = path.join(root, path.basename(url.pathname));
    fs.readFile(file, (err, data) => {
      if (err) {
        res.writeHead(404, { "content-length": "0" });
        res.end();
        return;
      }
      res.writeHead(200, { "content-length": String(data.length) });
      res.end(data);
    });
  }
}

let server;
if (mode === "http1") {
  server = http.createServer(handle);
} else if (mode === "h2c") {
  server = http2.createServer(handle);
} else {
  server = http2.createSecureServer(
    { cert: fs.readFileSync(cert), key: fs.readFileSync(key), allowHTTP1: true },
    handle,
  );
}
server.listen(Number(port), "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
