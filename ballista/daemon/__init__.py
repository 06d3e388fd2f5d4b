"""`ballista serve`: runs and their lifecycle, the HTTP API, and the SQLite store."""
