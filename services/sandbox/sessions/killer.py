"""Stopping a session's command, not its shell; and ending the shell.

What belongs to the running command (see :mod:`.framing`):

* every process with the command's own exec marker: each program the
  command executes inherits it (a child of a child and a double fork too);
* every process with the *shell's* marker other than the shell, started
  since the command began: what the shell forks without executing anything
  (a subshell, or a busybox applet that ash runs in a fork, such as ``yes``
  or ``cat``) shows the environment the shell started with, the shell's
  marker, in ``/proc/<pid>/environ``. Its start time (``/proc/<pid>/stat``,
  in clock ticks since boot) tells it from a background job of an earlier
  command: the manager passes how long ago it sent the command, and the
  killer counts back from its own start time, less a margin for the time
  the engine took to start the killer (so a fork of an earlier background
  job made within that margin before the command is stopped too).

The killer freezes every such process, repeats the sweep until none is
new, then kills them all, like the Exec killer
(:func:`services.sandbox.execution.run_killer`, whose sentinel it shares).
First it sends the shell ``SIGUSR1``, whose trap returns from the running
command once the shell gets control back, so the rest of the command (the
next item of a list, a loop of builtins) does not run either.

A command can still resist one round: a nested function returns one level
per signal. Rounds repeat, each after a short wait for the end marker; when
they are used up the shell itself is killed and the session is DEAD.
"""

from __future__ import annotations

import docker

from services.sandbox.execution import run_killer

#: Rounds of signal-and-kill before the shell is given up.
STOP_ROUNDS = 8
#: Seconds to wait for the command's end after one round.
ROUND_WAIT_SECONDS = 0.5
#: Clock ticks (1/100 s) subtracted for the time the engine takes to start the
#: killer (create + start of an exec: tens of ms, past a second at the p99 of
#: a loaded 2-core machine); a margin too short misses the command's forks.
START_MARGIN_TICKS = 300

# Runs inside the sandbox: $1 the shell's pid, $2 the command's marker, $3
# the shell's, $4 centiseconds since the command was sent (plus the margin).
SESSION_KILL_SCRIPT = r"""
shell=$1; m="LONGSHORE_EXEC_ID=$2"; s="LONGSHORE_EXEC_ID=$3"; ago=$4; broke=
kill -USR1 "$shell" 2>/dev/null
read -r me < /proc/$$/stat; me=${me##*) }; set -- $me; ref=$(( ${20} - ago ))
nul=; read -r -d '' _ < /proc/$$/environ 2>/dev/null && nul=1
mine() {
  hit=
  if [ -n "$nul" ]; then
    while IFS= read -r -d '' v; do
      [ "$v" = "$m" ] && return 0
      [ "$v" = "$s" ] && hit=1
    done < "$1/environ"
  else
    env=$(tr '\000' '\n' < "$1/environ") || { broke=1; return 1; }
    case "
$env
" in *"
$m
"*) return 0;; *"
$s
"*) hit=1;; esac
  fi
  [ -n "$hit" ] || return 1
  read -r st < "$1/stat" || return 1
  st=${st##*) }; set -- $st
  [ "${20}" -ge "$ref" ]
} 2>/dev/null
frozen=" "; n=0; round=0
while [ $round -lt 200 ]; do
  new=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    [ "$p" = "$shell" ] && continue
    case "$frozen" in *" $p "*) continue;; esac
    if mine "$d"; then kill -STOP "$p" 2>/dev/null; frozen="$frozen$p "; n=$((n+1)); new=1; fi
  done
  [ -z "$new" ] && break
  round=$((round+1))
done
for p in $frozen; do kill -KILL "$p" 2>/dev/null; done
[ -z "$broke" ] && echo "longshore-kill-done $n"
"""


def stop_command(
    api: docker.APIClient,
    cid: str,
    *,
    shell_pid: int,
    marker: str,
    shell_marker: str,
    running_seconds: float,
) -> bool:
    """One round: signals the shell to return, freezes and kills the command's processes.

    Returns:
        Whether the killer ran to its end.
    """
    ago = int(running_seconds * 100) + START_MARGIN_TICKS
    args = [str(int(shell_pid)), marker, shell_marker, str(ago)]
    return run_killer(api, cid, args, "", script=SESSION_KILL_SCRIPT) is not None


def end_shell(api: docker.APIClient, cid: str, *, shell_marker: str) -> bool:
    """Kills the shell (and the subshells it forked, which share its marker)."""
    return run_killer(api, cid, ["kill", shell_marker], "") is not None
