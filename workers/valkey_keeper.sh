# The process that stays beside the embedded Valkey under `make run`: restarts it, and stops it last.
#
#     /bin/sh workers/valkey_keeper.sh BINARY CONFIG PORT PYTHON     (exec'd by `workers.redis_server serve`)
#
# A shell, not Python, on purpose: it lives as long as the stack, and an idle Python interpreter is
# ~10.5 MB of RSS against ~1.8 for this (issue 22: the stack's idle RSS). What the shell cannot do
# is done by short-lived Pythons (workers/valkey_keeper.py): `start`, in the child, puts Valkey in a
# session of its own and execs it; `stop` waits until nobody else uses it.
#
# honcho stops the stack by sending SIGTERM to every process group at once; had Valkey gone first,
# the worker and poller would have lost Redis while finishing (a warm shutdown's last writes, error
# lines, tracebacks). So Valkey runs in a session of its own, out of reach of that signal, and the
# keeper stops it once the other processes have let go of it (at most 3.5 s, workers/valkey_keeper.py),
# after which Valkey flushes its AOF and exits; the keeper exits with Valkey's code. Should the keeper
# be killed outright (honcho's SIGKILL), Linux sends Valkey SIGTERM (PR_SET_PDEATHSIG, set by `start`).
#
# The stop is the trap's own work, and the trap ends the keeper: a signal that comes while the keeper
# waits interrupts the wait, one that comes between two commands is handled before the next, so no
# stop signal is missed.

binary=$1
config=$2
port=$3
python=$4
valkey=   # Valkey's pid while it runs (not yet reaped)
pause=    # the restart delay's `sleep`, while it runs

stop() {
    trap '' TERM INT  # Ctrl+C, then honcho's SIGTERM: the first one stops it
    code=0
    if [ -n "$valkey" ]; then
        "$python" -S -m workers.valkey_keeper stop "$port"  # returns once no one else is connected (or 3.5 s)
        kill -TERM "$valkey" 2>/dev/null  # Valkey's own SIGTERM: flush the AOF, then exit
        wait "$valkey"
        code=$?
    fi
    [ -n "$pause" ] && kill "$pause" 2>/dev/null
    exit "$code"
}
trap stop TERM INT

while :; do
    "$python" -S -m workers.valkey_keeper start "$binary" "$config" &
    valkey=$!
    wait "$valkey"
    code=$?
    valkey=
    [ "$code" -gt 128 ] && code=-$((code - 128))  # a signal, as Python's exit codes say it
    echo "redis: Valkey stopped (exit $code); starting it again in 1s"
    sleep 1 &
    pause=$!
    wait "$pause"
    pause=
done
