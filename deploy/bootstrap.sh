#!/usr/bin/env bash
# Post-start defaults, run by deploy/up.sh once GET /1.0 answers (every `make up`, so
# whatever lands here must be idempotent: create only what is absent).
#
# Placeholder for now. The containers work will make it create, through the API on
# $CORRAL_DIR/unix.socket (e.g. with `.venv/bin/corral`):
#   - the `default` storage pool (btrfs on a loop file under $CORRAL_DIR, or dir),
#   - the `corralbr0` bridge network with a free private subnet (chosen from the host's
#     own routes, never by probing), DHCP/DNS by dnsmasq and NAT,
#   - the `default` profile with a root disk on that pool and eth0 on that bridge.
set -euo pipefail
echo "corral: bootstrap: nothing to do yet (default pool, network and profile come later)"
