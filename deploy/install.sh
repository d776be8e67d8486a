#!/usr/bin/env bash
# Install what Corral needs on a Debian 12 host, skipping whatever is already there.
#
# Shared by `make up`, `make test` and .ci/run so a developer machine and CI are set up
# the same way. Each step checks before it acts, so a second run touches nothing:
#   1. Debian packages (apt-get update only when one is missing; `make` too, since a
#      fresh machine has gcc but not make),
#   2. root ranges in /etc/subuid and /etc/subgid (empty on fresh machines; unprivileged
#      containers need them),
#   3. the venv at .venv and `pip install -e '.[test,lxc,vm]'`, redone only when
#      pyproject.toml changed (its hash is kept in .venv/.corral-pyproject.sha256).
# Environment: CORRAL_PYTHON (default python3.11), CORRAL_VENV (default .venv),
# CORRAL_APT_UPDATED=1 when the caller already ran apt-get update.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON="${CORRAL_PYTHON:-python3.11}"
PACKAGES=(lxc lxc-dev pkg-config dnsmasq-base dnsmasq-utils nftables btrfs-progs busybox-static rsync
          lxd-client iproute2 uidmap xz-utils zstd bzip2 squashfs-tools curl make
          # VMs: QEMU (TCG here), qcow2 tools, ext4 tools and a static libc for the agent
          qemu-system-x86 qemu-utils e2fsprogs libc6-dev
          libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
          # OCI images: copy and unpack them; a real registry for the tests
          skopeo umoci docker-registry)
SUBID_DEFAULT="root:1000000:1000000000"  # LXD's default range for root
STAMP="$VENV/.corral-pyproject.sha256"

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

need_packages() {
    local missing=() pkg
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11 first"
    for pkg in "${PACKAGES[@]}"; do installed "$pkg" || missing+=("$pkg"); done
    if [[ ! -x "$VENV/bin/python" ]] && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null
    then
        missing+=(python3-venv)
    fi
    # The PyPI `lxc` binding is compiled at pip time and needs the interpreter's headers.
    if ! "$PYTHON" -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
    then
        missing+=(python3-dev)
    fi
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $EUID -eq 0 ]] || die "missing Debian packages (${missing[*]}); run as root"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [[ "${CORRAL_APT_UPDATED:-0}" != 1 ]]; then
        apt-get update
    fi
    # Packages with a daemon (docker-registry) must not start it: no invoke-rc.d start
    # while we install (a policy-rc.d of our own, only when the host has none).
    local policy=/usr/sbin/policy-rc.d ours=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && ours=1
    fi
    apt-get install -y "${missing[@]}" || { [[ $ours == 1 ]] && rm -f "$policy"; return 1; }
    [[ $ours == 1 ]] && rm -f "$policy"
    return 0
}

need_subids() {
    local file
    for file in /etc/subuid /etc/subgid; do
        if ! grep -qs '^root:' "$file"; then
            [[ $EUID -eq 0 ]] || die "$file has no root: line; run as root to add one"
            say "adding $SUBID_DEFAULT to $file"
            echo "$SUBID_DEFAULT" >> "$file"
        fi
    done
}

need_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating venv $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    local want have=""
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    [[ -f "$STAMP" ]] && have="$(cat "$STAMP")"
    if [[ "$want" == "$have" && -x "$VENV/bin/corral-all" ]]; then
        return 0
    fi
    say "pip install -e '.[test,lxc,vm]' into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "$REPO[test,lxc,vm]"
    echo "$want" > "$STAMP"
}

need_packages
need_subids
need_venv
