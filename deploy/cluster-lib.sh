# Shared helpers of deploy/cluster-*.sh (sourced after lib.sh, not run).
#
# Layout: the cluster lives in $CORRAL_DIR/cluster (CLUSTER_DIR): the bus users for every
# node (nats/users.json, auth.conf, route-auth.conf and credentials/, root-only), the
# settings the nodes were made with (cluster.env) and one directory per node, nodeK, which
# is that node's own CORRAL_DIR (run/*.pid, logs/, nats/ JetStream data, unix.socket).
#
# Network (PLATFORM.md: namespaces joined by veths): namespace <prefix>-hub holds a bridge
# `hub`; namespace <prefix>-nodeK holds the veth end `cluster0` with 10.a.b.(10+K)/24, its
# peer `nodeK` is a port of the hub. Nothing is added to the host's own namespace, so the
# host's routes and firewall never see the cluster's traffic, and removing the namespaces
# removes every link. The prefix (CORRAL_CLUSTER_PREFIX) keeps concurrent clusters apart.

CLUSTER_DIR="$CORRAL_DIR/cluster"
CLUSTER_ENV="$CLUSTER_DIR/cluster.env"
# The prefix the cluster was made with wins over the default (kill/down need the same).
PREFIX="${CORRAL_CLUSTER_PREFIX:-$(sed -n 's/^PREFIX=//p' "$CLUSTER_ENV" 2>/dev/null || true)}"
PREFIX="${PREFIX:-corral}"
[[ "$PREFIX" =~ ^[a-z][a-z0-9-]{0,20}$ ]] ||
    die "CORRAL_CLUSTER_PREFIX='$PREFIX' is not valid: 1-21 lowercase letters, digits or '-'," \
        "starting with a letter"
HUB_NS="$PREFIX-hub"
NODE_LINK=cluster0
NATS_ROUTE_PORT=6222

node_ns() { echo "$PREFIX-node$1"; }
node_dir() { echo "$CLUSTER_DIR/node$1"; }
# Node K's mount namespace, kept by a bind mount of its ns file (deploy/cluster-sysfs.sh):
# its pools stay mounted while its processes restart, as on a host of its own.
node_mntns() { echo "$CLUSTER_DIR/mntns/node$1"; }

# Point lib.sh's per-directory bookkeeping (pid files, logs) at node K.
use_node() {
    CORRAL_DIR="$(node_dir "$1")"
    RUN_DIR="$CORRAL_DIR/run"
    LOG_DIR="$CORRAL_DIR/logs"
}

# Run a command inside node K's network namespace only (not `ip netns exec`, which also
# makes a new mount namespace: mounts the node's services make must stay visible).
in_node() {
    local k="$1"; shift
    nsenter --net="/run/netns/$(node_ns "$k")" -- "$@"
}

# The node numbers recorded for this cluster (from cluster.env), one a line.
known_nodes() {
    local n
    [[ -f "$CLUSTER_ENV" ]] || return 0
    n="$(sed -n 's/^NODES=//p' "$CLUSTER_ENV")"
    seq 1 "${n:-0}"
}

ns_exists() { [[ -e "/run/netns/$1" ]]; }

# -- per-node libvirtd (VMs): cluster-up starts it, cluster-down/-kill stop it ---------------
# Each node runs its own virtlogd + libvirtd, as a host of its own would: in the node's
# network and mount namespaces plus a UTS namespace with the node's hostname, with the
# node's directories bound over libvirt's fixed system paths (/run/libvirt,
# /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt, /etc/libvirt/qemu) inside the
# node's mount namespace only, and its own host_uuid. Why all of it: libvirt refuses to
# migrate a domain to the daemon it comes from (same host UUID or hostname), and two
# daemons sharing /run/libvirt or /etc/libvirt/qemu would fight over sockets and domains.
# The node's services reach theirs by CORRAL_LIBVIRT_URI (node_libvirt_uri); another
# node's libvirtd reaches it by the same socket path on the shared filesystem (peer to
# peer live migration, services/instance/vm_migrate.py). PIDs go to <node>/libvirt/*.pid
# (not run/: cluster-kill's loop signals only Corral's own programs there).
LIBVIRT_BINDS=(run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt
               cache:/var/cache/libvirt etc-qemu:/etc/libvirt/qemu)

node_libvirt_dir() { echo "$(node_dir "$1")/libvirt"; }
node_libvirt_uri() { echo "qemu+unix:///system?socket=$(node_libvirt_dir "$1")/run/libvirt-sock"; }
vms_wanted() { [[ "${CORRAL_VMS:-1}" != 0 ]] && command -v libvirtd >/dev/null 2>&1; }

# Run "$@" in node K's network and mount namespaces.
in_node_mnt() {
    local k="$1"; shift
    nsenter --net="/run/netns/$(node_ns "$k")" --mount="$(node_mntns "$k")" -- "$@"
}

# PID of node K's <virtlogd|libvirtd> while it runs that program for this node, else nothing.
node_daemon_pid() {
    local k="$1" name="$2" file pid
    file="$(node_libvirt_dir "$k")/$name.pid"
    [[ -f "$file" ]] || return 0
    # The daemon removes its pid file as it exits: bash's own redirection error is hushed.
    pid="$({ tr -d '[:space:]' < "$file"; } 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r "/proc/$pid/cmdline" ]] &&
            tr '\0' '\n' < "/proc/$pid/cmdline" | head -n1 | grep -q "$name\$" &&
            tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null |
                grep -qxF "CORRAL_DIR=$(node_dir "$k")"; then
        echo "$pid"
    fi
}

start_node_libvirt() {
    local k="$1" d pair src dst name uuid
    d="$(node_libvirt_dir "$k")"
    mkdir -p "$d"
    chmod 0700 "$d"
    for pair in "${LIBVIRT_BINDS[@]}"; do
        src="$d/${pair%%:*}" dst="${pair#*:}"
        mkdir -p "$src" "$dst"
        touch "$src/.corral-node$k"
        in_node_mnt "$k" test -e "$dst/.corral-node$k" ||
            in_node_mnt "$k" mount --bind "$src" "$dst" || die "node$k: cannot bind $dst"
    done
    mkdir -p "$d/log/qemu" "$d/lib/qemu" "$d/run/qemu"
    [[ -s "$d/host-uuid" ]] || "$VENV/bin/python" -c 'import uuid; print(uuid.uuid4())' > "$d/host-uuid"
    uuid="$(cat "$d/host-uuid")"
    printf 'host_uuid = "%s"\n' "$uuid" > "$d/libvirtd.conf"
    : > "$d/virtlogd.conf"
    for name in virtlogd libvirtd; do
        [[ -n "$(node_daemon_pid "$k" "$name")" ]] && continue
        say "node$k: starting $name"
        rm -f "$d/$name.pid"
        # shellcheck disable=SC2046
        env -u CORRAL_NATS_CREDENTIALS -u CORRAL_CONFIG $(node_env "$k") \
            nsenter --net="/run/netns/$(node_ns "$k")" --mount="$(node_mntns "$k")" -- \
            unshare --uts -- sh -c 'hostname "$1"; shift; exec "$@"' sh "$(node_ns "$k")" \
            "$name" -d -f "$d/$name.conf" -p "$d/$name.pid" >>"$d/log/$name.log" 2>&1 \
            </dev/null || die "node$k: $name did not start; see $d/log/$name.log"
    done
    local deadline=$((SECONDS + 15))
    until [[ -S "$d/run/libvirt-sock" && -n "$(node_daemon_pid "$k" libvirtd)" ]]; do
        ((SECONDS < deadline)) || die "node$k: libvirtd did not open $d/run/libvirt-sock"
        sleep 0.1
    done
}

# Stop node K's VMs and libvirt daemons. "kill": SIGKILL at once (a crash: make
# cluster-kill), else the domains are destroyed through libvirtd first, then SIGTERM.
stop_node_libvirt() {
    local k="$1" how="${2:-stop}" d name pid pidf dom
    d="$(node_libvirt_dir "$k")"
    [[ -d "$d" ]] || return 0
    if [[ "$how" != kill && -n "$(node_daemon_pid "$k" libvirtd)" ]]; then
        for dom in $(virsh -q -c "$(node_libvirt_uri "$k")" list --name 2>/dev/null); do
            say "node$k: stopping VM $dom"
            virsh -q -c "$(node_libvirt_uri "$k")" destroy "$dom" >/dev/null 2>&1 || true
        done
    fi
    # QEMU processes left (a crash, or libvirtd gone): the pid files libvirt wrote for them.
    for pidf in "$d"/run/qemu/*.pid; do
        [[ -e "$pidf" ]] || continue
        pid="$(tr -d '[:space:]' < "$pidf" 2>/dev/null || true)"
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        if tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | head -n1 | grep -q qemu-system; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for name in libvirtd virtlogd; do
        pid="$(node_daemon_pid "$k" "$name")"
        [[ -n "$pid" ]] || continue
        say "node$k: stopping $name (pid $pid)"
        if [[ "$how" == kill ]]; then kill -KILL "$pid" 2>/dev/null || true; continue; fi
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while [[ -n "$(node_daemon_pid "$k" "$name")" ]] && ((SECONDS < deadline)); do
            sleep 0.1
        done
        [[ -z "$(node_daemon_pid "$k" "$name")" ]] || kill -KILL "$pid" 2>/dev/null || true
    done
}
