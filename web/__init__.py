"""The HTTP API and status page."""
