#!/usr/bin/env bash
# Bring the Corral stack up for CORRAL_DIR (default $PWD/var): install what is missing,
# start NATS (JetStream) and the services, wait for the API, run deploy/bootstrap.sh.
#
# Idempotent: a component whose pid file names a live process of ours (see lib.sh) is
# left alone, so a second run starts nothing. A failure stops what this run started.
# Environment:
#   CORRAL_MODE=separate|single  one process per service + gateway, or one `corral-all`
#   CORRAL_NATS_PORT             NATS client port on 127.0.0.1 (default 4222)
#   CORRAL_UP_TIMEOUT            seconds to wait for GET /1.0 (default 60)
#   CORRAL_SKIP_INSTALL=1        skip deploy/install.sh (the venv is known to be current)
#   CORRAL_VMS=0                 do not start libvirtd/virtlogd (containers only)
#   CORRAL_NATS_GOMEMLIMIT       nats-server's soft heap limit (Go GOMEMLIMIT, default 128MiB)
#   CORRAL_NATS_GOGC             nats-server's GC target (Go GOGC, default 50)
#   CORRAL_FORKSERVER=0          separate mode: start each service as its own program instead
#                                of forking it from the fork server (shared/forkserver.py)
# Separate mode forks the services from a fork server that made their common imports once
# (~65 MiB less for the stack, docs/performance.md "Memory"); it is only an optimisation:
# a service it cannot start, or any when it is not running, is started standalone, and
# services outlive it (their parent is init either way, as with `setsid nohup`).
# Files: $CORRAL_DIR/logs/<name>.log, $CORRAL_DIR/run/<name>.pid, $CORRAL_DIR/nats (JetStream
# data, the bus users in auth.conf), $CORRAL_DIR/credentials/<user>.json (mode 0600): NATS
# refuses anonymous connections, each service connects as its own user (shared/auth.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE="${CORRAL_MODE:-separate}"
TIMEOUT="${CORRAL_UP_TIMEOUT:-60}"
export CORRAL_NATS_PORT="${CORRAL_NATS_PORT:-4222}"
[[ "$MODE" == separate || "$MODE" == single ]] ||
    die "CORRAL_MODE='$MODE' is not valid: use 'separate' or 'single'"
[[ "$CORRAL_NATS_PORT" =~ ^[0-9]+$ ]] && ((CORRAL_NATS_PORT > 0 && CORRAL_NATS_PORT < 65536)) ||
    die "CORRAL_NATS_PORT='$CORRAL_NATS_PORT' is not a TCP port number (1-65535)"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "CORRAL_UP_TIMEOUT='$TIMEOUT' is not a number of seconds"
# The services follow the NATS we start, whatever an older shell exported.
export CORRAL_NATS_URL="nats://127.0.0.1:$CORRAL_NATS_PORT"
export CORRAL_NATS_STORE_DIR="$CORRAL_DIR/nats"
# Each service reads its own credentials file; one exported for a client must not leak in.
unset CORRAL_NATS_CREDENTIALS
export PYTHONUNBUFFERED=1
# The code of this checkout, whichever one the venv was installed from (the fork server's
# `-m shared.forkserver` and the services' programs alike).
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
FORKSERVER="${CORRAL_FORKSERVER:-1}"
SOCKET="$CORRAL_DIR/unix.socket"

if [[ "$MODE" == single ]]; then
    APPS=(all); OTHER=("${SERVICES[@]}" gateway forkserver); API_LOG="$LOG_DIR/all.log"
    FORKSERVER=0
else
    APPS=("${SERVICES[@]}" gateway); OTHER=(all); API_LOG="$LOG_DIR/gateway.log"
fi

STARTED=()
# On failure, stop the processes this run forked. They are our own children, so their
# PIDs are signalled directly: one may not have exec'd its program yet, which would fail
# the cmdline check that down.sh needs for strangers' PIDs.
on_exit() {
    local rc=$? name pid pids=()
    set +e
    if [[ $rc -ne 0 && ${#STARTED[@]} -gt 0 ]]; then
        say "start failed; stopping what this run started: ${STARTED[*]}" >&2
        for name in "${STARTED[@]}"; do
            pid="$(cat "$(pid_file "$name")")"
            kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
            rm -f "$(pid_file "$name")"
        done
        local deadline=$((SECONDS + 10))
        for pid in "${pids[@]}"; do
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        done
    fi
    exit "$rc"
}
trap on_exit EXIT

# Start <name> as its own session (survives the shell), logging to logs/<name>.log.
start() {
    local name="$1"; shift
    say "starting $name (log: $LOG_DIR/$name.log)"
    setsid nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
    echo "$!" > "$(pid_file "$name")"
    STARTED+=("$name")
}

# Fail with the log's tail when a component we rely on is gone.
check_alive() {
    local name pid
    for name in "$@"; do
        pid="$(tr -d '[:space:]' < "$(pid_file "$name")" 2>/dev/null || true)"
        if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$LOG_DIR/$name.log" >&2 || true
            die "$name exited while starting; see $LOG_DIR/$name.log"
        fi
    done
}

port_busy() { [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }

# The bus users and their credentials (kept when they exist), and the server config linked
# beside them so its `include "auth.conf"` finds this CORRAL_DIR's users.
nats_auth() {
    "$VENV/bin/python" -m shared.auth --dir "$CORRAL_DIR" init \
        --link "$REPO/deploy/nats/single.conf"
    NATS_CONF="$CORRAL_DIR/nats/single.conf"
}

start_nats() {
    local pid port
    nats_auth
    pid="$(running_pid nats)"
    if [[ -n "$pid" ]]; then
        port="$(proc_env "$pid" CORRAL_NATS_PORT)"
        [[ "$port" == "$CORRAL_NATS_PORT" ]] ||
            die "NATS for $CORRAL_DIR already runs on port $port (pid $pid); run with" \
                "CORRAL_NATS_PORT=$port or run 'make down' first"
        say "nats already running (pid $pid)"
        if ! tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qxF "$NATS_CONF"; then
            say "WARNING: that nats-server was started before bus authorization (not from" \
                "$NATS_CONF) and admits anonymous clients: run 'make down' then 'make up'"
            return 0
        fi
        kill -HUP "$pid" || true  # re-read auth.conf: permissions follow the code
        return 0
    fi
    port_busy "$CORRAL_NATS_PORT" &&
        die "port $CORRAL_NATS_PORT on 127.0.0.1 is used by another process; choose a" \
            "free one with CORRAL_NATS_PORT"
    # Go's GC let the heap double before collecting (nats-server grew from ~21 to ~32 MiB
    # RSS over a benchmark): GOGC=50 collects at 1.5x the live heap (scales with it, so no
    # thrashing on a big host: a low GOMEMLIMIT would make GC run nonstop once the live heap
    # passes it); GOMEMLIMIT only a soft ceiling for spikes, set above what a host with a
    # thousand instances holds: at 64 MiB, 1000 records' live heap (~77 MB) kept Go's GC
    # running nonstop and a cluster move's nats-server CPU went from ~0.12 to ~0.9 s.
    GOGC="${CORRAL_NATS_GOGC:-50}" GOMEMLIMIT="${CORRAL_NATS_GOMEMLIMIT:-128MiB}" \
        start nats "$VENV/bin/nats-server" -c "$NATS_CONF"
    local deadline=$((SECONDS + 20))
    until (exec 3<>"/dev/tcp/127.0.0.1/$CORRAL_NATS_PORT") 2>/dev/null; do
        check_alive nats
        ((SECONDS < deadline)) ||
            die "NATS did not listen on port $CORRAL_NATS_PORT within 20 s; see $LOG_DIR/nats.log"
        sleep 0.1
    done
}

check_mode() {
    local name pid
    for name in "${OTHER[@]}"; do
        pid="$(running_pid "$name")"
        [[ -z "$pid" ]] || die "$name (pid $pid) runs from another CORRAL_MODE;" \
            "run 'make down' first, then 'CORRAL_MODE=$MODE make up'"
    done
}

# The fork server (separate mode): started unless it runs. It imports while NATS starts;
# wait_forkserver then waits until it is ready. If it does not come up, the services are
# started standalone: nothing depends on it.
start_forkserver() {
    local pid
    pid="$(running_pid forkserver)"  # also drops a stale pid file
    [[ "$FORKSERVER" != 0 ]] || return 0
    if [[ -n "$pid" && -S "$FORKSERVER_SOCKET" ]]; then
        say "forkserver already running (pid $pid)"
        return 0
    fi
    [[ -z "$pid" ]] || kill -TERM "$pid" 2>/dev/null || true  # ours, but lost its socket
    rm -f "$FORKSERVER_SOCKET"
    start forkserver "$VENV/bin/python" -m shared.forkserver serve --socket "$FORKSERVER_SOCKET"
}

wait_forkserver() {
    local pid deadline=$((SECONDS + 30))
    [[ "$FORKSERVER" != 0 ]] || return 0
    pid="$(tr -d '[:space:]' < "$(pid_file forkserver)" 2>/dev/null || true)"
    until [[ -S "$FORKSERVER_SOCKET" ]]; do
        if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            say "WARNING: the fork server did not start (see $LOG_DIR/forkserver.log);" \
                "starting the services standalone"
            [[ -z "$pid" ]] || kill -TERM "$pid" 2>/dev/null || true
            rm -f "$(pid_file forkserver)"
            return 0
        fi
        sleep 0.05
    done
}

# Fork <name> from the fork server when it runs; prints nothing (and fails) when it cannot.
fork_app() {
    local name="$1" pid
    [[ "$FORKSERVER" != 0 && -n "$(running_pid forkserver)" ]] || return 1
    pid="$("$VENV/bin/python" -m shared.forkserver spawn --socket "$FORKSERVER_SOCKET" \
        "$name" --log "$LOG_DIR/$name.log" --argv0 "$VENV/bin/$(program_of "$name")")" ||
        return 1
    say "starting $name, forked by the fork server (log: $LOG_DIR/$name.log)"
    echo "$pid" > "$(pid_file "$name")"
    STARTED+=("$name")
}

start_apps() {
    local name pid
    for name in "${APPS[@]}"; do
        pid="$(running_pid "$name")"
        if [[ -n "$pid" ]]; then
            say "$name already running (pid $pid)"
        elif ! fork_app "$name"; then
            start "$name" "$VENV/bin/$(program_of "$name")"
        fi
    done
}

# True when every service answers through the gateway. GET /1.0 alone is not enough: it
# answers while a service is still reconciling with the host (each list is one service).
api_ready() {
    local path
    for path in /1.0 /1.0/instances /1.0/images /1.0/storage-pools /1.0/networks; do
        curl -sf --max-time 2 --unix-socket "$SOCKET" -o /dev/null "http://corral$path" ||
            return 1
    done
}

wait_api() {
    local deadline=$((SECONDS + TIMEOUT))
    until api_ready; do
        check_alive nats "${APPS[@]}"
        ((SECONDS < deadline)) ||
            die "the services did not all answer on $SOCKET within $TIMEOUT s; see $LOG_DIR"
        sleep 0.2
    done
}

if [[ "${CORRAL_SKIP_INSTALL:-0}" != 1 ]]; then
    "$REPO/deploy/install.sh"
fi
mkdir -p "$RUN_DIR" "$LOG_DIR" "$CORRAL_NATS_STORE_DIR"
# Unprivileged containers run as a mapped root that must traverse every parent of their
# rootfs: CORRAL_DIR itself is made traversable (0711, as LXD's /var/lib/lxd: nobody else
# may list it), its parents are only checked. Logs and PID files are root's only.
chmod 0711 "$CORRAL_DIR"
chmod 0700 "$RUN_DIR" "$LOG_DIR"
find "$LOG_DIR" -maxdepth 1 -type f -exec chmod 0600 {} +
while IFS= read -r d; do
    say "WARNING: $d is not traversable by others (o+x): unprivileged containers under" \
        "$CORRAL_DIR will fail to start; chmod o+x it or choose another CORRAL_DIR"
done < <(untraversable_parents "$CORRAL_DIR")
# libvirtd + virtlogd for VMs (started only when not running; CORRAL_VMS=0 skips them).
if [[ "${CORRAL_VMS:-1}" != 0 ]]; then
    CORRAL_APT_UPDATED=1 "$REPO/deploy/libvirt.sh" up
fi
check_mode
start_forkserver
start_nats
wait_forkserver
start_apps
wait_api
if [[ -x "$REPO/deploy/bootstrap.sh" ]]; then
    "$REPO/deploy/bootstrap.sh"
fi
STARTED=()
say "up ($MODE mode): API on $SOCKET, logs in $LOG_DIR"
say "try: LXD_DIR=$CORRAL_DIR lxc list"
