"""The one line a spare reads before it becomes the requested program.

A spare (:mod:`.spares`) is a shell already started in the sandbox that runs
:data:`SPARE_WRAPPER`: it prints its pid, reads one line from stdin and
``eval``\\ s it. The line is built here, only from a checked
:class:`~.records.ProcessConfig`, with every word single-quoted, so nothing a
caller sends is ever parsed by the shell as code::

    unset LONGSHORE_LINE; cd -- '/w' 2>/dev/null || exit 126; export K='v'; exec 'prog' 'arg'

A newline inside a word cannot be in the line (``read`` stops at it): it is
written as ``'"$LONGSHORE_NL"'``, a variable the wrapper set to a newline
(not exported, so the program never sees it). A missing or unusable workdir
exits 126 with no output, as the engine's refusal does on the normal path; a
missing program is the shell's own ``exec`` failure (127), as there.

:func:`spare_line` answers None for a request a spare cannot serve the same
way as the normal path (a PTY, another user, a relative workdir, a line
longer than :data:`MAX_LINE_BYTES`, an env naming the wrapper's variables):
those take the normal exec.
"""

from __future__ import annotations

from services.sandbox.processes.records import ProcessConfig

#: The wrapper's variables (shell-local; a request's env must not name them).
NL_VAR = "LONGSHORE_NL"
LINE_VAR = "LONGSHORE_LINE"
#: ``:`` is a no-op that names the shell in ``ps`` (how tests and operators find spares).
SPARE_WRAPPER = (
    f': longshore-spare; echo "$$"; {NL_VAR}="\n"; IFS= read -r {LINE_VAR} && eval "${LINE_VAR}"'
)
#: Longest line sent to a spare (the shell reads it byte by byte); longer → normal path.
MAX_LINE_BYTES = 64 * 1024
#: The exit code of a workdir the engine cannot enter (as runc's refusal on the normal path).
WORKDIR_EXIT = 126


def quote(word: str) -> str:
    """``word`` as one shell word that expands to exactly ``word``."""
    pieces = ("'" + piece.replace("'", "'\\''") + "'" for piece in word.split("\n"))
    return f'"${NL_VAR}"'.join(pieces)


def spare_line(config: ProcessConfig) -> bytes | None:
    """The line that makes a spare run ``config`` (newline-terminated), or None.

    None means the request takes the normal exec path (see the module).
    """
    if config.pty is not None or config.user:
        return None
    if config.workdir and not config.workdir.startswith("/"):
        return None
    if NL_VAR in config.env or LINE_VAR in config.env:
        return None
    parts = [f"unset {LINE_VAR}"]
    if config.workdir:
        parts.append(f"cd -- {quote(config.workdir)} 2>/dev/null || exit {WORKDIR_EXIT}")
    # Names are checked identifiers (policy.check_env): safe unquoted.
    parts.extend(f"export {name}={quote(value)}" for name, value in config.env.items())
    parts.append("exec " + " ".join(quote(arg) for arg in config.argv))
    line = ("; ".join(parts) + "\n").encode("utf-8", "surrogatepass")
    return line if len(line) <= MAX_LINE_BYTES else None
