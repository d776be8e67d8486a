#!/usr/bin/env bash
# `make cluster-join TOKEN=...`: a node joins the cluster with the token of
# `lxc cluster add NAME` (LXD's join token: base64 JSON with server_name and secret).
# The token is redeemed first, through the API of a running node (single use, refused
# when expired or revoked); only then is the node made and started by cluster-up.sh: its
# namespace and link, its nats-server (routes to every node: NATS gossips the new route to
# the others), its services and gateway, which heartbeats into the members bucket.
#
# On this machine a node is named node<K>: K one more than the nodes so far (a new node),
# or a node removed by `lxc cluster remove` coming back. On real hosts the joining host
# needs the cluster's bus users copied to it first (docs/cluster.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/cluster-lib.sh"

TOKEN="${TOKEN:-${1:-}}"
[[ -n "$TOKEN" ]] || die "give the join token: make cluster-join TOKEN=... (from 'lxc cluster add NAME')"
[[ -f "$CLUSTER_ENV" ]] || die "no cluster in $CLUSTER_DIR: run 'make cluster-up' first"
read -r NAME SECRET < <("$VENV/bin/python" - "$TOKEN" <<'PY'
import base64, json, sys
try:
    doc = json.loads(base64.b64decode(sys.argv[1].strip(), validate=True))
    print(doc["server_name"], doc["secret"])
except Exception:
    print("- -")
PY
)
[[ "$NAME" != - ]] || die "this is not a cluster join token (from 'lxc cluster add NAME')"
RECORDED="$(sed -n 's/^NODES=//p' "$CLUSTER_ENV")"
K="${NAME#node}"
[[ "$NAME" =~ ^node[0-9]+$ ]] && ((K >= 1 && K <= RECORDED + 1)) ||
    die "on this machine the joining node must be named node1..node$((RECORDED + 1))" \
        "(the token is for '$NAME')"

# Redeem the token through the first node that answers.
body="$(printf '{"name": "%s", "secret": "%s"}' "$NAME" "$SECRET")"
answer=""
for k in $(known_nodes); do
    socket="$(node_dir "$k")/unix.socket"
    [[ -S "$socket" && "$k" != "$K" ]] || continue
    if answer="$(curl -s --max-time 10 --unix-socket "$socket" -X POST \
            -H 'Content-Type: application/json' -d "$body" \
            http://corral/internal/cluster/accept)"; then
        break
    fi
    answer=""
done
[[ -n "$answer" ]] || die "no node of the cluster answered; is it up (make cluster-up)?"
if ! grep -q '"status_code": *200' <<<"$answer"; then
    die "the cluster refused the join: $("$VENV/bin/python" -c \
        'import json,sys; print(json.loads(sys.argv[1]).get("error"))' "$answer")"
fi
if ((K > RECORDED)); then
    sed -i "s/^NODES=.*/NODES=$K/" "$CLUSTER_ENV"
fi
say "$NAME accepted by the cluster; starting it"
unset N CORRAL_CLUSTER_NODES
exec "$REPO/deploy/cluster-up.sh"
