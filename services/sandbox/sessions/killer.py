"""Stopping a session's command, not its shell; and ending the shell.

A command's processes carry the command's own exec marker, the shell keeps
its own (see :mod:`.framing`), so the manager's killer (freeze, then kill,
by marker: :func:`services.sandbox.execution.run_killer`) stops the
command's whole tree and leaves the shell. The same exec first sends the
shell ``SIGUSR1``, whose trap returns from the running command once the
shell gets control back, so the rest of the command (the next item of a
list, a loop of builtins) does not run either.

A command can still resist one round: a nested function returns one level
per signal, a subshell keeps running the rest of its list. Rounds repeat,
each after a short wait for the end marker; when they are used up the shell
itself is killed and the session is DEAD.
"""

from __future__ import annotations

import docker

from services.sandbox.execution import run_killer

#: Rounds of signal-and-kill before the shell is given up.
STOP_ROUNDS = 8
#: Seconds to wait for the command's end after one round.
ROUND_WAIT_SECONDS = 0.5


def stop_command(api: docker.APIClient, cid: str, *, shell_pid: int, marker: str) -> bool:
    """One round: signals the shell to return, kills the command's processes.

    Returns:
        Whether the killer ran to its end.
    """
    prelude = f"kill -USR1 {int(shell_pid)} 2>/dev/null\n"
    return run_killer(api, cid, ["kill", marker], "", prelude=prelude) is not None


def end_shell(api: docker.APIClient, cid: str, *, shell_marker: str) -> bool:
    """Kills the shell (and the subshells it forked, which share its marker)."""
    return run_killer(api, cid, ["kill", shell_marker], "") is not None
