"""The `ballista` command line: one module per command, flags turned into configuration."""
