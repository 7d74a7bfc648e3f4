"""The E2B-compatible front door: E2B's REST control plane and envd's services.

A client of the gateway like the dashboard: it never talks to Docker or the
database, and every call it makes carries the caller's own API key, so keys
and scopes are Longshore's. See docs/e2b.md for the mapping and the gaps.
"""
