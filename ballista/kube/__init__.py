"""Kubernetes: manifests that run a test's segments as an Indexed Job, and the collection of their summaries."""
