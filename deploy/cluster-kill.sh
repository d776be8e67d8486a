#!/usr/bin/env bash
# `make cluster-kill NODE=K`: kill every process of node K with SIGKILL, as a crash or a
# power cut would (no clean shutdown, no flush): the fault drills and tests use it, and
# `make cluster-up` brings the node back. Only PIDs from node K's run/*.pid that still run
# our program with node K's CORRAL_DIR (lib.sh's pid_matches) are signalled.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/cluster-lib.sh"

K="${NODE:-${1:-}}"
[[ "$K" =~ ^[0-9]+$ ]] || die "name the node to kill: make cluster-kill NODE=K (K a number)"
[[ -d "$(node_dir "$K")" ]] || die "no node$K in $CLUSTER_DIR"
use_node "$K"
killed=()
for file in "$RUN_DIR"/*.pid; do
    [[ -e "$file" ]] || continue
    name="$(basename "$file" .pid)"
    pid="$(running_pid "$name")"
    [[ -n "$pid" ]] || continue
    kill -KILL "$pid" 2>/dev/null && killed+=("$name:$pid")
done
# Its libvirtd, virtlogd and QEMU processes too (a host that dies takes its VMs with it).
stop_node_libvirt "$K" kill
# SIGKILL is not instant: wait until the processes are gone (a test then sees them dead).
# A zombie (parent not reaping yet) counts as gone; 10 s at most.
gone() { [[ ! -e "/proc/$1" || "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" == Z ]]; }
deadline=$((SECONDS + 10))
for entry in "${killed[@]}"; do
    pid="${entry#*:}"
    until gone "$pid" || ((SECONDS >= deadline)); do sleep 0.05; done
done
for entry in "${killed[@]}"; do rm -f "$RUN_DIR/${entry%%:*}.pid"; done
say "node$K killed: ${killed[*]:-nothing was running}"
