"""Forget leases in a running dnsmasq by releasing them on the client's behalf.

dnsmasq keeps its leases in memory and writes them all back to its lease file on each
change, so editing the file under a live dnsmasq is undone at its next write. Stopping
it, editing and starting it again works but costs a restart (tens of ms, a DNS/DHCP gap on
the bridge) per deleted instance. LXD 5.0 instead sends dnsmasq a DHCPRELEASE (DHCPv6
Release) per lease, as if from the client; dnsmasq drops the lease and rewrites the
file at once. We do the same with dnsmasq's own tools ``dhcp_release`` and
``dhcp_release6`` (Debian package dnsmasq-utils), then wait until the lease file no longer
names these MACs, so a caller that returns has the address free for the next guest.

Anything the fast path cannot do (a tool missing, a lease dnsmasq did not drop in time)
returns None and the caller falls back to the restart, so lease state is never left wrong.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from . import dnsmasq

DHCP_RELEASE = "dhcp_release"
DHCP_RELEASE6 = "dhcp_release6"


def _commands(state_dir: Path, bridge: str, macs: set[str]
              ) -> tuple[list[list[str]] | None, set[str]]:
    """One release command per lease of these MACs (None when one cannot be released
    this way: no tool, an IPv6 lease without the server's DUID), and the MACs of the
    other leases, from one read of the lease file."""
    try:
        lines = (state_dir / dnsmasq.LEASES_FILE).read_text().splitlines()
    except OSError:
        return [], set()
    others = {lease["hwaddr"] for lease in dnsmasq.parse_leases(lines)} - macs - {""}
    server_duid = ""
    out: list[list[str]] = []
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[0] == "duid":
            server_duid = fields[1]  # comes before the IPv6 leases
            continue
        if len(fields) < 5:
            continue
        _expiry, iaid_or_mac, address, _hostname, client_id = fields[:5]
        if ":" not in address:  # IPv4: expiry mac ip hostname client-id
            if iaid_or_mac.lower() not in macs:
                continue
            tool = shutil.which(DHCP_RELEASE)
            if tool is None:
                return None, others
            cmd = [tool, bridge, address, iaid_or_mac.lower()]
            if client_id != "*":
                cmd.append(client_id)  # dnsmasq matches a lease by client-id first
            out.append(cmd)
        else:  # IPv6: expiry iaid ip hostname client-duid
            if dnsmasq.mac_from_duid(client_id) not in macs:
                continue
            tool = shutil.which(DHCP_RELEASE6)
            if tool is None or not server_duid:
                return None, others
            out.append([tool, "--iface", bridge, "--ip", address, "--iaid", iaid_or_mac,
                        "--client-id", client_id, "--server-id", server_duid])
    return out, others


def release(state_dir: Path, bridge: str, hwaddrs: set[str],
            timeout: float = 1.0) -> int | None:
    """Release every lease of these MACs in the bridge's running dnsmasq and wait until
    its lease file shows none; how many were released, or None when the caller must fall
    back to a restart."""
    macs = {m.lower() for m in hwaddrs}
    for _ in range(20):  # a file caught mid-rewrite reads empty: look again
        commands, others = _commands(state_dir, bridge, macs)
        if commands is None:
            return None
        if commands:
            break
        time.sleep(0.001)
    else:
        return 0  # gone meanwhile (expired, released by the guest)
    for cmd in commands:
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if r.returncode != 0:
            return None
    deadline = time.monotonic() + timeout
    while not _written(state_dir, macs, others):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)
    return len(commands)


def _written(state_dir: Path, gone: set[str], kept: set[str]) -> bool:
    """dnsmasq has written its leases back without ``gone``. It rewrites the file in
    place (truncate, then write), so a file merely lacking ``gone`` may be one caught
    half-written: the other guests' leases must all be back too."""
    now = {lease["hwaddr"] for lease in dnsmasq.read_leases(state_dir)}
    return not now & gone and kept <= now
