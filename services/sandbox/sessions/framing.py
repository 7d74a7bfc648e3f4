"""What a session writes to its shell's stdin, and how the end of a command is found.

The shell is a plain ``sh`` reading commands from a pipe. Each command is one
line: it sets the command's exec marker (``LONGSHORE_EXEC_ID``, see
:mod:`services.sandbox.execution`) for the processes the command starts,
runs the caller's source through ``command eval`` inside a function (so a
syntax error does not end a non-interactive shell, and a ``return`` unwinds
it), restores the shell's marker, then prints an end line on stdout
(``<nonce> <status>``) and one on stderr (``<nonce>``). The nonce is random
per command and never part of the caller's source, so output cannot forge
an end. The engine carries stdout and stderr on separate pipes whose order
is not kept, hence a marker on each: the command is over when both arrived.

The shell's environment (``/proc/<pid>/environ``) keeps the marker it was
started with, since ``export`` changes only what children inherit: the
killer, matching the command's marker, stops the command's processes and
never the shell. The prelude traps ``SIGUSR1`` to ``return`` from the
running command, which is how a timeout or cancel also stops what the shell
runs itself (a loop of builtins, the rest of a list).
"""

from __future__ import annotations

import re
import secrets

#: The variable that carries exec markers (as in :mod:`services.sandbox.execution`).
MARKER_VAR = "LONGSHORE_EXEC_ID"
#: The function that runs a command (in the shell's own state) and the flag it sets.
RUN_FUNCTION = "__longshore_run"
_IN_FLAG = "__longshore_in"
_STATUS_VAR = "__longshore_rc"
_NONCE_RE = re.compile(rb"\Als-[0-9a-f]{32}\Z")


def new_nonce() -> str:
    """A fresh, unguessable end-of-command marker."""
    return f"ls-{secrets.token_hex(16)}"


def quote(text: str) -> str:
    """``text`` as one single-quoted shell word (``'`` becomes ``'\\''``)."""
    return "'" + text.replace("'", "'\\''") + "'"


def prelude(nonce: str) -> bytes:
    """The first line a shell gets: defines the runner and the trap, prints ``<nonce> $$``.

    The ready line proves the program is a working POSIX shell and tells its
    pid (which the killer signals).
    """
    return (
        f'{RUN_FUNCTION}() {{ {_IN_FLAG}=1; command eval "$1" </dev/null; }}; '
        f"trap '[ -n \"${_IN_FLAG}\" ] && return 130' USR1; "
        f"printf '%s %s\\n' {quote(nonce)} \"$$\"\n"
    ).encode()


def wrap(source: str, *, marker: str, shell_marker: str, nonce: str) -> bytes:
    """The line that runs ``source`` as one command and prints its two end markers.

    The command's stdin is ``/dev/null``: the shell's stdin is the channel
    commands arrive on, which a command must never read.
    """
    return (
        f"export {MARKER_VAR}={quote(marker)}; {RUN_FUNCTION} {quote(source)}; "
        f"{_STATUS_VAR}=$?; {_IN_FLAG}=; export {MARKER_VAR}={quote(shell_marker)}; "
        f"printf '%s %d\\n' {quote(nonce)} \"${_STATUS_VAR}\"; "
        f"printf '%s\\n' {quote(nonce)} >&2\n"
    ).encode()


class EndScanner:
    """Splits one stream's bytes into the command's output and its end line.

    Feed it what the stream delivers; it returns the output that is surely
    the command's (holding back a tail that might be the start of the end
    marker) and, once the end line arrived complete, what followed the nonce
    on it (the status for stdout, empty for stderr). Memory is bounded: at
    most the marker's length is held back, plus one end line.

    Args:
        nonce: The command's end marker.
    """

    def __init__(self, nonce: str) -> None:
        self._nonce = nonce.encode()
        self._held = b""
        self.ended = False
        self.trailer = b""

    def feed(self, data: bytes) -> bytes:
        """Output of the command in ``data`` (with what was held back before)."""
        if self.ended:
            return b""  # after the end: a late background write, not this command's
        buf = self._held + data
        at = buf.find(self._nonce)
        if at >= 0:
            newline = buf.find(b"\n", at)
            if newline < 0:
                # The end line is not complete yet; it is short, hold it all.
                self._held = buf[at:]
                return buf[:at]
            self.ended = True
            self.trailer = buf[at + len(self._nonce) : newline].strip()
            self._held = b""
            return buf[:at]
        keep = _partial_suffix(buf, self._nonce)
        self._held = buf[len(buf) - keep :] if keep else b""
        return buf[: len(buf) - keep]

    def flush(self) -> bytes:
        """What was held back, as output (the stream ended without the marker)."""
        held, self._held = self._held, b""
        return held


def _partial_suffix(buf: bytes, marker: bytes) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``marker``."""
    for size in range(min(len(buf), len(marker) - 1), 0, -1):
        if buf.endswith(marker[:size]):
            return size
    return 0


def parse_status(trailer: bytes) -> int:
    """The status an end line carried; -1 when it is not a number."""
    try:
        return int(trailer)
    except ValueError:
        return -1


def parse_ready(line: bytes, nonce: str) -> int | None:
    """The shell's pid from its ready line ``<nonce> <pid>``, else None."""
    parts = line.strip().split()
    if len(parts) != 2 or parts[0] != nonce.encode() or not _NONCE_RE.match(parts[0]):
        return None
    return int(parts[1]) if parts[1].isdigit() else None
