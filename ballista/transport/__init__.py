"""Connections Ballista owns: TCP and TLS with ALPN, HTTP/1.1 (h11) and HTTP/2 (h2)."""
