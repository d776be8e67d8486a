# Shared helpers for deploy/*.sh (sourced, not run).
#
# The process bookkeeping lives here so up.sh and down.sh agree on what "ours" means: a
# PID from $CORRAL_DIR/run/<name>.pid counts only while /proc/<pid>/cmdline names the
# expected program AND its environment carries this CORRAL_DIR. A recycled PID or another
# checkout's process is therefore never mistaken for ours, and never signalled.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-$REPO/.venv}"

# Absolute, without creating it: `down` on a fresh checkout must leave no trace.
CORRAL_DIR="$(realpath -m -- "${CORRAL_DIR:-$PWD/var}")"
export CORRAL_DIR
RUN_DIR="$CORRAL_DIR/run"
LOG_DIR="$CORRAL_DIR/logs"

# Services in start order; the gateway comes last, nats first (see up.sh).
SERVICES=(image storage network instance migration hooks)

say() { printf 'corral: %s\n' "$*"; }
die() { printf 'corral: error: %s\n' "$*" >&2; exit 1; }

# Prints each parent directory of $1 that others cannot traverse (no o+x bit). The bit is
# read from the octal mode: `ls`-style strings end in `t` for a sticky o+x directory such
# as /tmp or /var/tmp, and in `T` when the sticky bit stands without o+x.
untraversable_parents() {
    local d mode
    d="$(dirname -- "$1")"
    while [[ "$d" != / ]]; do
        mode="$(stat -c %a -- "$d")"
        (( 8#$mode & 1 )) || printf '%s\n' "$d"
        d="$(dirname -- "$d")"
    done
}

# The executable a component's process runs: its cmdline must mention this. A service the
# fork server started names its own program too (shared/forkserver.py rewrites cmdline).
program_of() {
    case "$1" in
        nats) echo "nats-server" ;;
        forkserver) echo "shared.forkserver" ;;
        *) echo "corral-$1" ;;
    esac
}

pid_file() { echo "$RUN_DIR/$1.pid"; }

# The fork server's socket (separate mode, see deploy/up.sh and shared/forkserver.py).
FORKSERVER_SOCKET="$RUN_DIR/forkserver.sock"

# True when <pid> is alive, runs <program> and belongs to this CORRAL_DIR.
pid_matches() {
    local pid="$1" program="$2" arg
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    local found=1
    while IFS= read -r -d '' arg; do
        if [[ "$(basename -- "$arg")" == "$program" ]]; then found=0; break; fi
    done 2>/dev/null < "/proc/$pid/cmdline" || return 1
    [[ $found -eq 0 ]] || return 1
    # The process may exit between the checks: bash's own redirection error is hushed too.
    { tr '\0' '\n' < "/proc/$pid/environ"; } 2>/dev/null | grep -qxF "CORRAL_DIR=$CORRAL_DIR"
}

# Prints the PID of a running component, or nothing (removing a stale pid file).
running_pid() {
    local name="$1" file pid
    file="$(pid_file "$name")"
    [[ -f "$file" ]] || return 0
    pid="$(tr -d '[:space:]' < "$file")"
    if pid_matches "$pid" "$(program_of "$name")"; then
        echo "$pid"
    else
        rm -f "$file"
    fi
}

# Value of variable <var> in the environment <pid> started with (empty when unset).
proc_env() {
    tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | sed -n "s/^$2=//p" | head -n1
}

# Stop the named components together: SIGTERM, up to 10 s of grace, then SIGKILL.
# Only PIDs that pass pid_matches are signalled; stale pid files are just removed.
stop_components() {
    local name pid names=() pids=() i
    for name in "$@"; do
        pid="$(running_pid "$name")"
        [[ -n "$pid" ]] || continue
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        names+=("$name"); pids+=("$pid")
    done
    local deadline=$((SECONDS + 10)) alive
    while :; do
        alive=0
        for i in "${!pids[@]}"; do
            pid_matches "${pids[$i]}" "$(program_of "${names[$i]}")" && alive=1
        done
        [[ $alive -eq 1 && $SECONDS -lt $deadline ]] || break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if pid_matches "${pids[$i]}" "$(program_of "${names[$i]}")"; then
            say "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM for 10 s; sending SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
        rm -f "$(pid_file "${names[$i]}")"
    done
}
