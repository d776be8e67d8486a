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
    stop_node_libvirt "$1"  # its VMs, then libvirtd and virtlogd
}
pids=()
for k in $(known_nodes); do
    [[ -d "$(node_dir "$k")/run" ]] || continue
    stop_node "$k" &
    pids+=("$!")
done
for pid in "${pids[@]}"; do wait "$pid"; done
# What the node's services started lives in its namespace, which goes now: its containers
# (their host-side veths are in it) and its dnsmasq. Unlike `make down`, which leaves them
# to the next `make up`, they are stopped: each container through liblxc in the node's
# namespaces (its command socket is there), each dnsmasq by the PID its own pid file names
# when /proc says that dnsmasq was started with that very pid file.
stop_node_objects() {
    local k="$1" dir lxcpath name pidf pid
    dir="$(node_dir "$k")"
    lxcpath="$dir/lxc"
    if [[ -d "$lxcpath" ]] && [[ -e "$(node_mntns "$k")" ]]; then
        for name in $(nsenter --net="/run/netns/$(node_ns "$k")" --mount="$(node_mntns "$k")" \
                          -- lxc-ls -P "$lxcpath" --running 2>/dev/null); do
            say "node$k: stopping container $name"
            nsenter --net="/run/netns/$(node_ns "$k")" --mount="$(node_mntns "$k")" \
                -- lxc-stop -P "$lxcpath" -n "$name" -k || true
        done
    fi
    while IFS= read -r -d '' pidf; do
        pid="$(cat "$pidf" 2>/dev/null || true)"
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        if tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--pid-file=$pidf"; then
            say "node$k: stopping dnsmasq $pid"
            kill "$pid" 2>/dev/null || true
        fi
    done < <(find "$dir" -name dnsmasq.pid -print0 2>/dev/null)
}
for k in $(known_nodes); do
    ns="$(node_ns "$k")"
    ns_exists "$ns" || continue
    stop_node_objects "$k"
    sleep 0.2
    # Anything else still there would keep the namespace alive unnamed: say so rather
    # than kill what neither this script nor the node's services started.
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
