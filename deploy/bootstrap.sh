#!/usr/bin/env bash
# Post-start defaults, run by deploy/up.sh once GET /1.0 answers (every `make up`, so
# whatever lands here must be idempotent: create only what is absent).
#
# Defaults through the API (`corral init --auto`, like `lxd init --auto`): the `default`
# storage pool (btrfs on a loop file under $CORRAL_DIR when the kernel has btrfs, else dir),
# the `corralbr0` bridge with a free private subnet (chosen from the host's own routes,
# never by probing), DHCP/DNS by dnsmasq and NAT, and the `default` profile with a root
# disk on that pool and eth0 on that bridge. Each is created only when absent.
#
# CORRAL_BOOTSTRAP=0 skips all of it (the deploy tests do: they must not make bridges);
# CORRAL_DEFAULT_NETWORK names the bridge (default corralbr0).
set -euo pipefail
if [[ "${CORRAL_BOOTSTRAP:-1}" == 0 ]]; then
    echo "corral: bootstrap: skipped (CORRAL_BOOTSTRAP=0)"
    exit 0
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"${CORRAL_VENV:-$repo/.venv}/bin/corral" init --auto \
    --network "${CORRAL_DEFAULT_NETWORK:-corralbr0}"

# --- image: busybox as alias "busybox" (owned by the image service) -----------------------
# Self-contained: builds the reproducible busybox image from the host's busybox-static and
# imports it only when the alias is absent; a failure warns instead of stopping `make up`.
(
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    corral="${CORRAL_VENV:-$repo/.venv}/bin/corral"
    if ! "$corral" image show busybox >/dev/null 2>&1; then
        echo "corral: bootstrap: importing the busybox image as alias busybox"
        "$corral" image build busybox --alias busybox \
            || echo "corral: bootstrap: WARNING: could not import the busybox image" >&2
    fi
)
# --- end image ---------------------------------------------------------------------------

# --- image: busybox-vm as alias "busybox-vm" (VM image; needs libvirt + a kernel download) --
# Built from busybox-static, the Corral agent and Debian's cloud kernel (`apt-get download`,
# cached under $CORRAL_DIR/cache/vm-kernel); imported only when the alias is absent, skipped
# with CORRAL_VMS=0 (as up.sh skips libvirtd). A failure warns, never stops `make up`.
(
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    corral="${CORRAL_VENV:-$repo/.venv}/bin/corral"
    if ! "$corral" image show busybox-vm >/dev/null 2>&1; then
        if [[ "${CORRAL_VMS:-1}" != 0 ]]; then
            echo "corral: bootstrap: importing the busybox VM image as alias busybox-vm"
            "$corral" image build busybox --vm --alias busybox-vm \
                || echo "corral: bootstrap: WARNING: could not import the busybox VM image" >&2
        else
            echo "corral: bootstrap: CORRAL_VMS=0: no busybox-vm image"
        fi
    fi
)
# --- end image busybox-vm -----------------------------------------------------------------
