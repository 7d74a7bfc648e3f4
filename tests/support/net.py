"""Loopback port allocation for servers started by tests and benchmarks."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    The port is found by binding to port 0 and closing the socket, so another
    process could take it before the caller binds; servers that can bind port 0
    themselves (``serve_in_process``) should prefer that.

    Args:
        host: The interface to probe, loopback by default.

    Returns:
        A port number in the ephemeral range.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
