"""What people and tools read: the text and JSON summary, Prometheus, the live stream and page."""
