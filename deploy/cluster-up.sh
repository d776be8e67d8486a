#!/usr/bin/env bash
# `make cluster-up N=3`: N Corral nodes on this machine, each in its own network namespace
# with its own CORRAL_DIR ($CORRAL_DIR/cluster/nodeK), nats-server, services and gateway
# ($CORRAL_DIR/cluster/nodeK/unix.socket). The nats-servers form one NATS cluster over the
# namespaces' links with clustered JetStream (CORRAL_KV_REPLICAS = min(N, 3) replicas for
# every bucket, object store and stream). docs/cluster.md explains the whole.
#
# Idempotent: what runs is left alone, what is missing (a node killed by cluster-kill, a
# namespace removed) is made or started again, so a second run is also the way back.
# A failure stops what this run started. Environment:
#   N / CORRAL_CLUSTER_NODES   node count (default: what cluster.env recorded, else 3)
#   CORRAL_CLUSTER_PREFIX      namespace prefix (default corral; recorded in cluster.env)
#   CORRAL_MODE                separate (a process per service) or single (corral-all)
#   CORRAL_UP_TIMEOUT          seconds to wait for every node's API (default 120)
#   CORRAL_KV_REPLICAS         JetStream replicas (default min(N, 3))
#   CORRAL_CLUSTER_OFFLINE_THRESHOLD, CORRAL_CLUSTER_HEARTBEAT  passed to the gateways
#   CORRAL_SKIP_INSTALL=1      skip deploy/install.sh
#   CORRAL_VMS=0               no libvirtd per node (containers only; also when libvirtd
#                              is not installed)
# No bootstrap (default pool, bridge, image) per node: the cluster-wide
# pools and networks are made through the API (docs/cluster.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/cluster-lib.sh"

MODE="${CORRAL_MODE:-separate}"
TIMEOUT="${CORRAL_UP_TIMEOUT:-120}"
[[ "$MODE" == separate || "$MODE" == single ]] ||
    die "CORRAL_MODE='$MODE' is not valid: use 'separate' or 'single'"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "CORRAL_UP_TIMEOUT='$TIMEOUT' is not a number of seconds"
RECORDED="$(sed -n 's/^NODES=//p' "$CLUSTER_ENV" 2>/dev/null || true)"
NODES="${N:-${CORRAL_CLUSTER_NODES:-${RECORDED:-3}}}"
[[ "$NODES" =~ ^[0-9]+$ ]] && ((NODES >= 1 && NODES <= 20)) ||
    die "N='$NODES' is not a node count (1-20)"
if [[ -n "$RECORDED" && "$RECORDED" != "$NODES" ]]; then
    die "the cluster in $CLUSTER_DIR has $RECORDED nodes; run 'make cluster-down' and" \
        "remove $CLUSTER_DIR to make one of $NODES"
fi
REPLICAS="${CORRAL_KV_REPLICAS:-$((NODES < 3 ? NODES : 3))}"
NATS_PORT=4222  # every node has its own loopback: the same port everywhere
if [[ "$MODE" == single ]]; then APPS=(all); else APPS=("${SERVICES[@]}" gateway); fi
BASE_DIR="$CORRAL_DIR"

STARTED=()  # "K name" of what this run started
LIBVIRT_STARTED=()  # nodes whose libvirtd this run started (cluster-lib.sh)
on_exit() {
    local rc=$? entry k name pid
    set +e
    if [[ $rc -ne 0 ]]; then
        for k in "${LIBVIRT_STARTED[@]}"; do stop_node_libvirt "$k"; done
    fi
    if [[ $rc -ne 0 && ${#STARTED[@]} -gt 0 ]]; then
        say "cluster start failed; stopping what this run started" >&2
        for entry in "${STARTED[@]}"; do
            read -r k name <<<"$entry"
            use_node "$k"
            pid="$(cat "$(pid_file "$name")" 2>/dev/null)"
            [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null
            rm -f "$(pid_file "$name")"
        done
    fi
    exit "$rc"
}
trap on_exit EXIT

node_ip() { echo "$SUBNET.$((10 + $1))"; }

# -- shared state: users, subnet ---------------------------------------------------------
if [[ "${CORRAL_SKIP_INSTALL:-0}" != 1 ]]; then
    "$REPO/deploy/install.sh"
fi
mkdir -p "$CLUSTER_DIR"
chmod 0711 "$BASE_DIR" "$CLUSTER_DIR"
# One set of bus users for the whole cluster (a service may answer a request from any
# node, so its user must be the same everywhere); the route user authenticates the routes.
"$VENV/bin/python" -m shared.auth --dir "$CLUSTER_DIR" init
SUBNET="$(sed -n 's/^SUBNET=//p' "$CLUSTER_ENV" 2>/dev/null || true)"
if [[ -z "$SUBNET" ]]; then
    SUBNET="$("$VENV/bin/python" "$REPO/deploy/cluster_helper.py" subnet "$PREFIX")"
fi
umask 077
printf 'PREFIX=%s\nNODES=%s\nSUBNET=%s\n' "$PREFIX" "$NODES" "$SUBNET" > "$CLUSTER_ENV"
umask 022

# -- links: a hub bridge in its own namespace, one veth per node -------------------------
if ! ns_exists "$HUB_NS"; then
    say "making namespace $HUB_NS with bridge hub"
    ip netns add "$HUB_NS"
fi
ip -n "$HUB_NS" link show hub >/dev/null 2>&1 || ip -n "$HUB_NS" link add hub type bridge
ip -n "$HUB_NS" link set hub up
for k in $(seq 1 "$NODES"); do
    ns="$(node_ns "$k")"
    if ! ns_exists "$ns"; then
        say "making namespace $ns ($(node_ip "$k")/24 on $NODE_LINK)"
        ip netns add "$ns"
    fi
    ip -n "$ns" link set lo up
    if ! ip -n "$ns" link show "$NODE_LINK" >/dev/null 2>&1; then
        ip -n "$HUB_NS" link del "node$k" 2>/dev/null || true  # a half-made pair
        ip -n "$HUB_NS" link add "node$k" type veth peer name "$NODE_LINK" netns "$ns"
        ip -n "$ns" addr add "$(node_ip "$k")/24" dev "$NODE_LINK"
    fi
    ip -n "$HUB_NS" link set "node$k" master hub up
    ip -n "$ns" link set "$NODE_LINK" up
done

# -- per node: directory, NATS, apps ------------------------------------------------------
ROUTE_HOSTS=()
for k in $(seq 1 "$NODES"); do ROUTE_HOSTS+=("$(node_ip "$k"):$NATS_ROUTE_PORT"); done
ROUTES="$("$VENV/bin/python" "$REPO/deploy/cluster_helper.py" routes "$CLUSTER_DIR" \
    "${ROUTE_HOSTS[@]}")"

prepare_node() {
    local k="$1" f
    use_node "$k"
    mkdir -p "$RUN_DIR" "$LOG_DIR" "$CORRAL_DIR/nats"
    chmod 0711 "$CORRAL_DIR"
    chmod 0700 "$RUN_DIR" "$LOG_DIR" "$CORRAL_DIR/nats"
    # The cluster's users, seen from the node's directory (where each process looks).
    ln -sfn "$CLUSTER_DIR/credentials" "$CORRAL_DIR/credentials"
    for f in auth.conf route-auth.conf users.json; do
        ln -sfn "$CLUSTER_DIR/nats/$f" "$CORRAL_DIR/nats/$f"
    done
    for f in cluster.conf cluster-node.conf; do
        ln -sfn "$REPO/deploy/nats/$f" "$CORRAL_DIR/nats/$f"
    done
    # The node's own mount namespace (a slave of the host's, /sys of its own network
    # namespace): every process of the node shares it (deploy/cluster-sysfs.sh says why).
    f="$(node_mntns "$k")"
    if ! mountpoint -q "$f" 2>/dev/null; then
        mkdir -p "$(dirname "$f")"
        touch "$f"
        nsenter --net="/run/netns/$(node_ns "$k")" -- unshare --mount="$f" \
            --propagation slave -- "$REPO/deploy/cluster-sysfs.sh" true ||
            die "node$k: cannot make its mount namespace"
    fi
}

# The environment every process of node K starts with (CORRAL_DIR makes it "ours").
node_env() {
    local k="$1"
    echo "CORRAL_DIR=$(node_dir "$k") CORRAL_NODE=node$k CORRAL_CLUSTER=1" \
         "CORRAL_KV_REPLICAS=$REPLICAS CORRAL_NATS_URL=nats://127.0.0.1:$NATS_PORT" \
         "CORRAL_NATS_STORE_DIR=$(node_dir "$k")/nats PYTHONUNBUFFERED=1" \
         "CORRAL_CLUSTER_ADDRESS=$(node_ip "$k"):8443"
    if vms_wanted; then echo "CORRAL_LIBVIRT_URI=$(node_libvirt_uri "$k")"; fi
}

# Start <name> of node K in its namespace, as its own session, logging to its log.
start_in_node() {
    local k="$1" name="$2"; shift 2
    use_node "$k"
    say "node$k: starting $name"
    # Its network namespace and its own mount namespace (prepare_node).
    # shellcheck disable=SC2046
    env -u CORRAL_NATS_CREDENTIALS -u CORRAL_CONFIG $(node_env "$k") "$@" \
        nsenter --net="/run/netns/$(node_ns "$k")" --mount="$(node_mntns "$k")" -- \
        setsid nohup "${APP_CMD[@]}" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
    echo "$!" > "$(pid_file "$name")"
    STARTED+=("$k $name")
}

check_alive_node() {
    local k="$1" name pid; shift
    use_node "$k"
    for name in "$@"; do
        pid="$(tr -d '[:space:]' < "$(pid_file "$name")" 2>/dev/null || true)"
        if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$LOG_DIR/$name.log" >&2 || true
            die "node$k: $name exited while starting; see $LOG_DIR/$name.log"
        fi
    done
}

for k in $(seq 1 "$NODES"); do
    prepare_node "$k"
    if vms_wanted; then
        [[ -n "$(node_daemon_pid "$k" libvirtd)" ]] || LIBVIRT_STARTED+=("$k")
        start_node_libvirt "$k"
    fi
    if [[ -n "$(running_pid nats)" ]]; then
        say "node$k: nats already running (pid $(running_pid nats))"
        continue
    fi
    APP_CMD=("$VENV/bin/nats-server" -c "$CORRAL_DIR/nats/cluster-node.conf")
    start_in_node "$k" nats GOGC="${CORRAL_NATS_GOGC:-50}" \
        GOMEMLIMIT="${CORRAL_NATS_GOMEMLIMIT:-128MiB}" \
        CORRAL_NATS_PORT="$NATS_PORT" CORRAL_NATS_CLUSTER_HOST="$(node_ip "$k")" \
        CORRAL_NATS_CLUSTER_PORT="$NATS_ROUTE_PORT" CORRAL_NATS_ROUTES="$ROUTES"
done
for k in $(seq 1 "$NODES"); do
    deadline=$((SECONDS + 20))
    until in_node "$k" bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT" 2>/dev/null; do
        check_alive_node "$k" nats
        ((SECONDS < deadline)) || die "node$k: NATS did not listen within 20 s"
        sleep 0.1
    done
done
# The services open their buckets with REPLICAS replicas at start: wait until clustered
# JetStream can make one (meta leader elected, enough peers).
say "waiting for clustered JetStream ($REPLICAS replicas)"
in_node 1 env -u CORRAL_NATS_CREDENTIALS -u CORRAL_CONFIG \
    CORRAL_NATS_URL="nats://127.0.0.1:$NATS_PORT" CORRAL_KV_REPLICAS="$REPLICAS" \
    "$VENV/bin/python" "$REPO/deploy/cluster_helper.py" wait-js "$CLUSTER_DIR" "$TIMEOUT"

start_apps_of() {
    local k name
    for k in "$@"; do
        use_node "$k"
        for name in "${APPS[@]}"; do
            if [[ -n "$(running_pid "$name")" ]]; then continue; fi
            APP_CMD=("$VENV/bin/$(program_of "$name")")
            start_in_node "$k" "$name"
        done
    done
}

api_ready() {
    local socket="$1" path
    for path in /1.0 /1.0/instances /1.0/images /1.0/storage-pools /1.0/networks \
                /1.0/cluster/members; do
        curl -sf --max-time 2 --unix-socket "$socket" -o /dev/null "http://corral$path" ||
            return 1
    done
}

wait_nodes() {
    local k
    for k in "$@"; do
        until api_ready "$(node_dir "$k")/unix.socket"; do
            check_alive_node "$k" nats "${APPS[@]}"
            ((SECONDS < deadline)) ||
                die "node$k did not answer on $(node_dir "$k")/unix.socket within" \
                    "$TIMEOUT s; see $(node_dir "$k")/logs"
            sleep 0.2
        done
    done
}

# The first node that has to start makes the buckets, streams and object stores alone:
# three nodes making the same R3 streams at once on a small host timed out JetStream's
# API (5 s) and a service died at start. The others follow once it answers.
deadline=$((SECONDS + TIMEOUT))
MISSING=()
for k in $(seq 1 "$NODES"); do
    use_node "$k"
    for name in "${APPS[@]}"; do
        if [[ -z "$(running_pid "$name")" ]]; then MISSING+=("$k"); break; fi
    done
done
if ((${#MISSING[@]} > 0)); then
    start_apps_of "${MISSING[0]}"
    wait_nodes "${MISSING[0]}"
    start_apps_of "${MISSING[@]:1}"
fi
wait_nodes $(seq 1 "$NODES")
STARTED=()
LIBVIRT_STARTED=()

# --- defaults (cluster-net): as `make up`'s bootstrap, once for the whole cluster ---------
# Through node1's API once every member is ONLINE: the `default` pool is then made by each
# member on its own disk (services/storage/pool_members.py), the bridge is defined once and
# each node's network service brings up its own (its own namespace, dnsmasq and leases),
# the `default` profile and the busybox image are shared records. Idempotent (corral init
# creates what is absent); CORRAL_BOOTSTRAP=0 skips it.
cluster_defaults() {
    local sock online
    sock="$(node_dir 1)/unix.socket"
    until online="$(curl -sf --max-time 2 --unix-socket "$sock" \
            'http://corral/1.0/cluster/members?recursion=1' |
            "$VENV/bin/python" -c 'import json,sys
print(sum(m["status"] == "Online" for m in json.load(sys.stdin)["metadata"]))')" &&
            ((online >= NODES)); do
        ((SECONDS < deadline)) || die "defaults: not every member ONLINE within $TIMEOUT s"
        sleep 0.5
    done
    CORRAL_DIR="$(node_dir 1)" "$VENV/bin/corral" init --auto \
        --network "${CORRAL_DEFAULT_NETWORK:-corralbr0}" \
        --pool-size "${CORRAL_CLUSTER_POOL_SIZE:-4GiB}" || die "defaults: corral init failed"
    if ! CORRAL_DIR="$(node_dir 1)" "$VENV/bin/corral" image show busybox >/dev/null 2>&1; then
        say "defaults: importing the busybox image (alias busybox) once for the cluster"
        CORRAL_DIR="$(node_dir 1)" "$VENV/bin/corral" image build busybox --alias busybox ||
            say "defaults: WARNING: could not import the busybox image"
    fi
}
if [[ "${CORRAL_BOOTSTRAP:-1}" != 0 ]]; then
    deadline=$((SECONDS + TIMEOUT))
    cluster_defaults
fi
say "cluster up: $NODES nodes ($MODE mode), namespaces $PREFIX-node1..$NODES"
say "try: LXD_DIR=$(node_dir 1) lxc cluster list"
