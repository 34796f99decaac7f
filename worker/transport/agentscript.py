"""The agent's shell script and its protocol: a long-lived POSIX shell per SSH channel that
runs our commands without a new exec each. The worker's side is :mod:`worker.transport.agent`.

Why: sshd runs every exec through the account's login shell, which reads its start-up files
(a ``.bashrc`` running a version manager costs 150-700 ms per call). An agent pays that once:
it is started with one exec (``exec /bin/sh -c BOOT``, which hands the script to bash where
the server has it) and then reads framed requests from its stdin, so a warm change runs
``validate_command``, ``restart_command`` and the change lock with no new exec of ours.

The protocol (all text, one request at a time per agent)::

    banner    stdout: \\ndfw-agent-ready-v1\\n<mode>\\n   stderr: \\ndfw-agent-ready-v1\\n
    request   <op> <token> <arg>\\n  <body lines>\\n  <token>\\n
    reply     stdout: <output>\\n<token> <status>\\n      stderr: <output>\\n<token>\\n

``mode`` says how ``run`` keeps its time limit: ``jobs`` (the agent is bash in POSIX mode, with
job control), ``timeout`` (a POSIX ``/bin/sh`` and GNU ``timeout`` on the PATH) or empty
(neither). ``token`` is 32 random hex digits chosen per agent: it ends the body (a command or
a path; never message text, only inventory values with ``{path}`` shell-quoted by the caller)
and marks the end of each output stream, so any byte a command prints is passed through
unchanged. It stays the same for the agent's life (asyncssh then compiles its separator once,
not per request); a request that does not complete discards the agent, so no reply can ever
be mistaken for a later one's. A body cut short by a lost connection is never run: the agent
exits unless it read the closing token.

Ops: ``run`` runs the body in the background, stdin ``/dev/null``, fds 8 and 9 closed, in a
process group of its own, with TERM after ``arg`` seconds, KILL :data:`KILL_GRACE` later, and
exit 124 or 137 when the limit fired, as GNU ``timeout`` gives them:

* ``jobs``: the body is evaluated in a subshell (a fork, no exec: about 1.5 ms less per
  request than the ``timeout`` mode, bench/agent.py), which job control puts in its own
  process group; the watcher below keeps the time limit with ``read -t``;
* ``timeout``: ``timeout -k KILL_GRACE arg /bin/sh -c BODY``; ``timeout`` makes the group;
* neither: ``/bin/sh -c BODY`` plainly, with SIGINT and SIGQUIT ignored (a background job of a
  shell without job control), no group of its own and no time limit on the server.

Meanwhile a watcher subshell reads the agent's stdin (dup'd on fd 8): the worker sends nothing
until the reply, so the watcher consumes no byte of a request (``read`` takes a pipe byte by
byte), and it sees EOF only when the channel closed -- the worker died, lost its connection or
discarded the agent. Then it kills the command's whole process group with KILL at once (the
worker that would read the outcome is gone, and a TERM could be trapped and let the command
act on for a while) and waits until the group is gone (at most :data:`GONE_WAIT` seconds:
zombies count as present where nothing reaps orphans). Without a process group of its own
(neither mode) it kills the agent's group instead, which holds the command, its children and
the agent itself. The agent waits for the command, then stops and reaps the watcher, then
replies.

``lock`` opens the body's path on fd 9 and ``flock -w arg`` on it (exit 75 when busy);
``unlock`` closes fd 9. The lock belongs to the agent shell itself (and its watcher, a fork):
when the worker or its connection dies, sshd closes the agent's stdin, a running command is
killed as above, the shell exits, and only then does the kernel drop the lock -- so a dead
worker's command never outlives its lock.

Nor does a dead worker's write. Its SFTP server, a sibling of the agent under the same sshd
session process, works through the requests it had already received before it sees EOF and
ends, and nothing orders that against the agent's exit. So ``lock`` notes the session's SFTP
servers (the children of ``$PPID`` named ``sftp-server``, or ``sshd`` for ``internal-sftp``,
from Linux's ``/proc``; the worker starts its SFTP session before it asks for the lock), and
an agent exiting with the lock held first waits until they have ended (``dfw_settle``, at
most :data:`GONE_WAIT` seconds; zombies count as ended). Without ``/proc`` nothing is waited
for. A dead connection's sshd session process ends within milliseconds; while it stays
(:data:`SESSION_LIVES`), the worker dropped only the agent (a request given up on under the
lock), its SFTP server stays too, and the agent waits no longer.

``list`` prints the names in the body's directory, each followed by ``/`` (the one byte a name
cannot hold), with shell builtins in one subshell (exit 3: missing, 4: not a readable
directory).
"""

from __future__ import annotations

import re
import shlex

LOCK_BUSY_EXIT = 75
"""flock's exit status when the lock stays busy (``-E``); EX_TEMPFAIL."""

LISTED = b"\ndfw-listed "
"""``lock`` with a directory: ends the listing, before the listing's own status."""

LIST_MISSING_EXIT = 3
"""``list``: the directory does not exist."""

KILL_GRACE = 2.0
"""Seconds the server-side ``timeout`` waits after its TERM before it sends KILL."""

REPLY_MARGIN = 5.0
"""Seconds the worker waits for a reply beyond the server-side kill (``timeout`` +
:data:`KILL_GRACE`): only a reply that never comes means a dead or wedged connection."""

TIMEOUT_EXITS = frozenset({124, 137})
"""GNU ``timeout``'s exit status when it stopped the command: TERM (124), KILL (128 + 9)."""

GONE_WAIT = 2.0
"""Seconds at most the watcher waits for a killed command's process group to be gone."""

SESSION_LIVES = 0.25
"""Seconds an agent exiting with the lock held sees its sshd session process still there
before it takes the connection for alive (the worker dropped the agent, not the connection)
and stops waiting for the session's SFTP servers, which then stay."""

READY = b"\ndfw-agent-ready-v1\n"

BASH_WHERE = re.compile(rb"^dfw-agent: (?:eval: )?line [0-9]+: ", re.MULTILINE)
"""What bash puts before its own errors about a body it evaluates in the ``jobs`` mode (a
command not found, a syntax error): the agent's name and a line of the agent's script, which
mean nothing to the operator who wrote the command. Removed from the body's stderr."""

# Runs under /bin/sh (dash, bash --posix, busybox ash...): POSIX only, every expansion quoted,
# but for the `jobs` mode, which only bash reaches (job control and `read -t`).
# dfw_end ends one `run` whose channel closed: it kills the pid first (GNU timeout may not have
# made its group yet, and then never will), then the group; no such group means the command
# shares the agent's (no GNU timeout), so the agent's own group goes, the agent with it. It
# ignores TERM: the agent's "stop watching" after the command ended must not cut short the
# wait for the rest of its group.
# dfw_watch is the watcher of one `run` (its stdin is the channel, via fd 8) under GNU timeout
# or none; dfw_watch_t, in the jobs mode, is that watcher and the time limit at once: at the
# limit it sends TERM to the command's group and, KILL_GRACE s later, KILL, and exits 124 or 137
# as GNU timeout would (124 also when the agent stops it after the TERM).
# dfw_siblings (at `lock`) notes the session's SFTP servers; dfw_settle waits for them to end
# before the lock can go: at the agent's exit, and in dfw_end (the watcher holds fd 9 too).
# Their pids are split on purpose (unquoted); the comm in /proc/PID/stat guards against reuse.
_SCRIPT = r"""
if [ "${1-}" = jobs ] && set -m 2>/dev/null; then dfw_t=jobs
elif command -v timeout >/dev/null 2>&1; then dfw_t=timeout; else dfw_t=; fi
exec 8<&0
dfw_end() {
  trap '' TERM
  kill -KILL "$1" 2>/dev/null
  if kill -KILL -"$1" 2>/dev/null; then
    dfw_n=0
    while [ "$dfw_n" -lt @POLLS@ ] && kill -0 -"$1" 2>/dev/null; do
      sleep 0.05 2>/dev/null || { sleep 1; dfw_n=$((dfw_n + 19)); }
      kill -KILL -"$1" 2>/dev/null
      dfw_n=$((dfw_n + 1))
    done
    dfw_settle
  else
    dfw_settle
    kill -KILL 0
  fi
}
dfw_siblings() {
  dfw_sib=
  dfw_kids=
  IFS= read -r dfw_kids 2>/dev/null <"/proc/$PPID/task/$PPID/children" || :
  for dfw_k in $dfw_kids; do
    IFS= read -r dfw_c 2>/dev/null <"/proc/$dfw_k/comm" || continue
    case $dfw_c in sftp-server|sshd) dfw_sib="$dfw_sib $dfw_k" ;; esac
  done
}
dfw_settle() {
  dfw_m=0
  dfw_up=0
  while [ -n "$dfw_sib" ] && [ "$dfw_m" -lt @POLLS@ ]; do
    dfw_busy=
    for dfw_k in $dfw_sib; do
      IFS= read -r dfw_s 2>/dev/null <"/proc/$dfw_k/stat" || continue
      case $dfw_s in *"(sftp-server) "[!ZX]*|*"(sshd) "[!ZX]*) dfw_busy=1 ;; esac
    done
    [ -n "$dfw_busy" ] || return 0
    if IFS= read -r dfw_s 2>/dev/null <"/proc/$PPID/stat"; then
      case $dfw_s in *") "[!ZX]*) dfw_up=$((dfw_up + 1)) ;; esac
    fi
    [ "$dfw_up" -lt @UP_POLLS@ ] || return 0
    sleep 0.05 2>/dev/null || { sleep 1; dfw_m=$((dfw_m + 19)); }
    dfw_m=$((dfw_m + 1))
  done
}
dfw_watch() {
  while IFS= read -r dfw_x; do :; done
  dfw_end "$1"
}
dfw_watch_t() {
  dfw_limit=$2
  dfw_fired=
  while :; do
    IFS= read -r -t "$dfw_limit" dfw_x && continue
    [ "$?" -gt 128 ] || break
    if [ -n "$dfw_fired" ]; then
      trap '' TERM
      kill -KILL -"$1" 2>/dev/null
      exit 137
    fi
    dfw_fired=1
    trap 'exit 124' TERM
    kill -TERM -"$1" 2>/dev/null
    dfw_limit=@GRACE@
  done
  dfw_end "$1"
}
dfw_list() {
  if [ ! -e "$1" ]; then
    echo "No such file or directory" >&2
    return 3
  elif [ ! -d "$1" ] || [ ! -r "$1" ] || [ ! -x "$1" ]; then
    echo "not a directory this account can read" >&2
    return 4
  fi
  (
    CDPATH= cd -- "$1" || exit 4
    for dfw_p in '*' '.[!.]*' '..?*'; do
      set -- $dfw_p
      if [ "$#" -eq 1 ] && [ "$1" = "$dfw_p" ] && [ ! -e "$1" ] && [ ! -h "$1" ]; then
        continue
      fi
      printf '%s/' "$@"
    done
  )
}
printf '\ndfw-agent-ready-v1\n%s\n' "$dfw_t"
printf '\ndfw-agent-ready-v1\n' >&2
while IFS=' ' read -r dfw_op dfw_tok dfw_arg; do
  dfw_body=
  dfw_whole=
  while IFS= read -r dfw_line; do
    if [ "$dfw_line" = "$dfw_tok" ]; then dfw_whole=1; break; fi
    dfw_body="$dfw_body$dfw_line
"
  done
  [ -n "$dfw_whole" ] || { dfw_settle; exit 0; }
  case $dfw_op in
    run)
      if [ "$dfw_t" = jobs ]; then
        ( set +m; set --; eval "$dfw_body" ) </dev/null 8<&- 9>&- &
        dfw_pid=$!
        dfw_watch_t "$dfw_pid" "$dfw_arg" <&8 8<&- &
      else
        if [ -n "$dfw_t" ]; then
          timeout -k @GRACE@ "$dfw_arg" /bin/sh -c "$dfw_body" </dev/null 8<&- 9>&- &
        else
          /bin/sh -c "$dfw_body" </dev/null 8<&- 9>&- &
        fi
        dfw_pid=$!
        dfw_watch "$dfw_pid" <&8 8<&- &
      fi
      dfw_w=$!
      wait "$dfw_pid"
      dfw_st=$?
      kill "$dfw_w" 2>/dev/null
      wait "$dfw_w" 2>/dev/null
      dfw_ws=$?
      if [ "$dfw_t" = jobs ] && { [ "$dfw_ws" -eq 124 ] || [ "$dfw_ws" -eq 137 ]; }; then
        dfw_st=$dfw_ws
      fi ;;
    lock)
      dfw_body=${dfw_body%?}
      dfw_dir=
      case $dfw_body in
        *"
"*) dfw_dir=${dfw_body#*"
"}; dfw_body=${dfw_body%%"
"*} ;;
      esac
      if command exec 9>>"$dfw_body"; then
        flock -E 75 -w "$dfw_arg" 9
        dfw_st=$?
        if [ "$dfw_st" -eq 0 ]; then dfw_siblings; else exec 9>&-; fi
      else
        dfw_st=1
      fi
      if [ "$dfw_st" -eq 0 ] && [ -n "$dfw_dir" ]; then
        dfw_list "$dfw_dir" 2>/dev/null
        printf '\ndfw-listed %s' "$?"
      fi ;;
    unlock)
      exec 9>&-
      dfw_sib=
      dfw_st=0 ;;
    list)
      dfw_list "${dfw_body%?}"
      dfw_st=$? ;;
    *)
      echo "dfw-agent: unknown request $dfw_op" >&2
      dfw_st=2 ;;
  esac
  printf '\n%s %s\n' "$dfw_tok" "$dfw_st"
  printf '\n%s\n' "$dfw_tok" >&2
done
dfw_settle
"""

AGENT_SCRIPT = (
    _SCRIPT.replace("@GRACE@", f"{KILL_GRACE:g}")
    .replace("@POLLS@", str(int(GONE_WAIT / 0.05)))
    .replace("@UP_POLLS@", str(int(SESSION_LIVES / 0.05)))
)
"""The agent (see the module docstring); the watcher is ``dfw_watch`` (``dfw_watch_t`` in the
``jobs`` mode), started per ``run``."""

_BOOT = (
    "if command -v bash >/dev/null 2>&1; then"
    ' BASH_ENV= exec bash --posix --noprofile --norc -c "$1" dfw-agent jobs; fi; eval "$1"'
)

AGENT_COMMAND = f"exec /bin/sh -c {shlex.quote(_BOOT)} dfw-agent {shlex.quote(AGENT_SCRIPT)}"
"""What the login shell is asked to run: its start-up files are read this once per agent.
``/bin/sh`` hands the script to bash in POSIX mode where the server has bash (the ``jobs``
mode), and runs it itself otherwise."""
