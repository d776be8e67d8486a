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
