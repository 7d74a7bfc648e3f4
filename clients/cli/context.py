"""What a command runs with: its output and, on demand, a gateway connection."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

from clients.cli.config import CliConfig
from clients.cli.connection import Connection
from clients.cli.output import Output


@dataclass
class Context:
    """Per-invocation state shared by every command."""

    out: Output
    config: CliConfig
    _connection: Connection | None = field(default=None, repr=False)

    @property
    def conn(self) -> Connection:
        """The gateway connection (opened on first use)."""
        if self._connection is None:
            self._connection = Connection(self.config)
        return self._connection

    def close(self) -> None:
        """Close the connection if one was opened."""
        if self._connection is not None:
            self._connection.close()


Runner = Callable[[argparse.Namespace, Context], int]
