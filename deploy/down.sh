#!/usr/bin/env bash
# Stop what deploy/up.sh started for this CORRAL_DIR (default $PWD/var), keep the data.
#
# Only the PIDs recorded in $CORRAL_DIR/run/*.pid are signalled, and only after
# /proc/<pid>/cmdline and the process's CORRAL_DIR confirm they are ours (never pkill).
# Order: the API first (gateway, or the single `all` process) so clients stop getting
# half-answers, and the fork server (nothing new is forked), then the services, NATS last
# so services can flush their state.
# Containers and networks the services made are host objects and keep running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ! -d "$RUN_DIR" ]]; then
    say "nothing runs for $CORRAL_DIR"
    exit 0
fi
stop_components gateway all forkserver
stop_components "${SERVICES[@]}"
stop_components nats
# Only the libvirt daemons `up` started for this CORRAL_DIR (none when they already ran).
"$REPO/deploy/libvirt.sh" down
say "stopped; data kept in $CORRAL_DIR"
