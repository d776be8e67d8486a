#!/usr/bin/env bash
# Make libvirt + QEMU usable for Corral's VM driver on a host without systemd.
#
#   deploy/libvirt.sh up     install what is missing, configure, start virtlogd/libvirtd
#   deploy/libvirt.sh down   stop the daemons THIS script started for this CORRAL_DIR
#
# Why a script of its own: Debian's libvirt packages expect systemd to start the daemons
# and a libvirt-qemu user created by libvirt-daemon-system (which we do not install).
# Here QEMU runs as root without a security driver (no AppArmor/SELinux labels, no chown
# of disk images: dynamic_ownership=0), which is what works on these machines.
# A daemon that was already running is left alone and never recorded, so `down` only
# ever stops what `up` started: PIDs go to $CORRAL_DIR/run/{virtlogd,libvirtd}.pid and
# are signalled only while their cmdline and CORRAL_DIR environment match (lib.sh).
# Environment: CORRAL_APT_UPDATED=1 when the caller already ran apt-get update.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
          qemu-utils libvirt-dev pkg-config)
QEMU_CONF=/etc/libvirt/qemu.conf
SOCK=/run/libvirt/libvirt-sock

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

need_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do installed "$pkg" || missing+=("$pkg"); done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $EUID -eq 0 ]] || die "missing Debian packages (${missing[*]}); run as root"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    [[ "${CORRAL_APT_UPDATED:-0}" == 1 ]] || apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
}

# Set `key = value` in qemu.conf, replacing an uncommented setting; true when it changed.
set_conf() {
    local key="$1" value="$2"
    if grep -qxE "^${key}[[:space:]]*=[[:space:]]*${value}[[:space:]]*" "$QEMU_CONF"; then
        return 1
    fi
    sed -i -E "/^${key}[[:space:]]*=/d" "$QEMU_CONF"
    echo "${key} = ${value}" >> "$QEMU_CONF"
}

need_config() {
    id libvirt-qemu >/dev/null 2>&1 ||
        useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
    mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /run/libvirt
    [[ -f "$QEMU_CONF" ]] || touch "$QEMU_CONF"
    local changed=0
    set_conf user '"root"' && changed=1
    set_conf group '"root"' && changed=1
    set_conf dynamic_ownership 0 && changed=1
    set_conf security_driver '"none"' && changed=1
    if [[ $changed -eq 1 ]] && live libvirtd; then
        say "warning: $QEMU_CONF changed while a libvirtd we did not start runs;" \
            "restart it yourself for the change to apply" >&2
    fi
    return 0
}

# True when a live (not zombie) <daemon> runs: this machine's PID 1 reaps late, so a
# daemon `down` just stopped can linger as <defunct> and must not count as running.
# Only daemons in this shell's mount and network namespaces count: the libvirtd of each
# `make cluster-up` node runs in the node's own namespaces and serves another socket.
live() {
    pgrep -x -r D,R,S,T,t,W,P,I --ns $$ --nslist mnt,net "$1" >/dev/null
}

# Start <daemon> daemonized unless one already runs; record its PID only when we started it.
start_daemon() {
    local name="$1" pidfile="/run/$1.pid" pid
    if pid="$(running_pid_of "$name")" && [[ -n "$pid" ]]; then
        return 0
    fi
    if live "$name"; then
        say "$name already runs (not started by Corral); leaving it alone"
        return 0
    fi
    mkdir -p "$RUN_DIR"
    say "starting $name"
    rm -f "$pidfile"
    "$name" -d
    local deadline=$((SECONDS + 10))
    while [[ ! -s "$pidfile" ]] && ((SECONDS < deadline)); do sleep 0.1; done
    [[ -s "$pidfile" ]] || die "$name did not write $pidfile; see /var/log/libvirt"
    tr -d '[:space:]' < "$pidfile" > "$RUN_DIR/$name.pid"
}

# PID recorded for <daemon> in RUN_DIR while it is still ours, else nothing.
running_pid_of() {
    local file="$RUN_DIR/$1.pid" pid
    [[ -f "$file" ]] || return 0
    pid="$(tr -d '[:space:]' < "$file")"
    if pid_matches "$pid" "$1"; then echo "$pid"; else rm -f "$file"; fi
}

stop_daemon() {
    local name="$1" pid
    pid="$(running_pid_of "$name")"
    [[ -n "$pid" ]] || return 0
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while pid_matches "$pid" "$name" && ((SECONDS < deadline)); do sleep 0.1; done
    pid_matches "$pid" "$name" && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$RUN_DIR/$name.pid"
}

case "${1:-up}" in
    up)
        need_packages
        need_config
        start_daemon virtlogd
        start_daemon libvirtd
        deadline=$((SECONDS + 10))
        while [[ ! -S "$SOCK" ]] && ((SECONDS < deadline)); do sleep 0.1; done
        [[ -S "$SOCK" ]] || die "libvirtd did not open $SOCK; see /var/log/libvirt"
        ;;
    down)
        [[ -d "$RUN_DIR" ]] || exit 0
        stop_daemon libvirtd
        stop_daemon virtlogd
        ;;
    *) die "usage: $0 up|down" ;;
esac
