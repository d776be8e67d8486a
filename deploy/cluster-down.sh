#!/usr/bin/env bash
# `make cluster-down`: stop every node made by cluster-up (gateway first, NATS last, as
# down.sh does for one node), then remove the namespaces, which removes the veths and the
# hub bridge with them. The data (node directories, JetStream, users) is kept: the next
# cluster-up starts the same cluster again; remove $CORRAL_DIR/cluster to forget it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/cluster-lib.sh"

# The nodes stop side by side (each in order: API, services, NATS), not one after another.
stop_node() {
    use_node "$1"
    say "node$1: stopping"
    stop_components gateway all
    stop_components "${SERVICES[@]}"
    stop_components nats
}
pids=()
for k in $(known_nodes); do
    [[ -d "$(node_dir "$k")/run" ]] || continue
    stop_node "$k" &
    pids+=("$!")
done
for pid in "${pids[@]}"; do wait "$pid"; done
for k in $(known_nodes); do
    ns="$(node_ns "$k")"
    ns_exists "$ns" || continue
    # Processes the services left in the namespace (containers, dnsmasq) would keep it
    # alive unnamed: say so rather than kill what this script did not start.
    left="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
    [[ -z "$left" ]] || say "WARNING: processes still in $ns: $left(ip netns pids $ns)"
    ip netns del "$ns"
done
for k in $(known_nodes); do  # the nodes' mount namespaces (cluster-up's prepare_node)
    f="$(node_mntns "$k")"
    if mountpoint -q "$f" 2>/dev/null; then umount "$f"; fi
    rm -f "$f"
done
if ns_exists "$HUB_NS"; then ip netns del "$HUB_NS"; fi
say "cluster stopped; namespaces $PREFIX-* removed; data kept in $CLUSTER_DIR"
