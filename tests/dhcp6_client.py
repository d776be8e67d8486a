"""A minimal stateful DHCPv6 client for tests (Solicit, Advertise, Request, Reply).

Debian's busybox-static has no ``udhcpc6``, and no DHCPv6 client is installed here, so the
tests run this inside the network namespace of a container or a test namespace:

    ip netns exec NS python tests/dhcp6_client.py IFACE MAC HOSTNAME [--apply]
    nsenter -t PID -n python tests/dhcp6_client.py IFACE MAC HOSTNAME [--apply]

It speaks only on IFACE's link (to ff02::1:2, the all-DHCP-servers link-local group),
prints the leased address, and with ``--apply`` adds it to IFACE as a /128 (as a DHCPv6
client does; the on-link prefix comes from router advertisements).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

SOLICIT, ADVERTISE, REQUEST, REPLY = 1, 2, 3, 7
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR = 1, 2, 3, 5
OPT_ORO, OPT_ELAPSED, OPT_STATUS, OPT_FQDN, OPT_DNS = 6, 8, 13, 39, 23
IFA_F_TENTATIVE, IFA_F_DADFAILED = 0x40, 0x08
IAID = 1


def opt(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def parse(data: bytes) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    while len(data) >= 4:
        code, size = struct.unpack("!HH", data[:4])
        out.setdefault(code, []).append(data[4:4 + size])
        data = data[4 + size:]
    return out


def wait_link_local(iface: str, timeout: float = 15) -> None:
    """DHCPv6 is sent from the link-local address: wait until DAD has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in open("/proc/net/if_inet6").read().splitlines():
            addr, _idx, _plen, scope, flags, name = line.split()
            if name == iface and addr.startswith("fe80") and \
                    not int(flags, 16) & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                return
        time.sleep(0.1)
    raise SystemExit(f"no usable link-local address on {iface}")


def exchange(sock: socket.socket, dest: tuple, msg: bytes, want: int, tries: int = 10
             ) -> dict[int, list[bytes]]:
    for _ in range(tries):
        sock.sendto(msg, dest)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data, _ = sock.recvfrom(4096)
            except socket.timeout:
                break
            if data[0] == want and data[1:4] == msg[1:4]:
                return parse(data[4:])
    raise SystemExit(f"no DHCPv6 answer of type {want}")


def main() -> None:
    iface, mac, hostname = sys.argv[1:4]
    apply = "--apply" in sys.argv[4:]
    wait_link_local(iface)
    ifindex = socket.if_nametoindex(iface)
    duid = b"\x00\x03\x00\x01" + bytes.fromhex(mac.replace(":", ""))  # DUID-LL, Ethernet
    fqdn = opt(OPT_FQDN, b"\x00" + bytes([len(hostname)]) + hostname.encode())
    common = (opt(OPT_CLIENTID, duid) + opt(OPT_ELAPSED, b"\0\0")
              + opt(OPT_ORO, struct.pack("!H", OPT_DNS)) + fqdn)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    sock.bind(("::", 546, 0, ifindex))
    sock.settimeout(1.0)
    dest = ("ff02::1:2", 547, 0, ifindex)
    ia = opt(OPT_IA_NA, struct.pack("!III", IAID, 0, 0))
    adv = exchange(sock, dest, bytes([SOLICIT]) + os.urandom(3) + common + ia, ADVERTISE)
    server = adv[OPT_SERVERID][0]
    ia_opts = parse(adv[OPT_IA_NA][0][12:])
    if OPT_IAADDR not in ia_opts:
        raise SystemExit(f"advertise without an address: {adv}")
    iaaddr = ia_opts[OPT_IAADDR][0]
    req_ia = opt(OPT_IA_NA, struct.pack("!III", IAID, 0, 0) + opt(OPT_IAADDR, iaaddr))
    reply = exchange(sock, dest, bytes([REQUEST]) + os.urandom(3) + common
                     + opt(OPT_SERVERID, server) + req_ia, REPLY)
    got = parse(reply[OPT_IA_NA][0][12:])
    address = socket.inet_ntop(socket.AF_INET6, got[OPT_IAADDR][0][:16])
    if apply:
        subprocess.run(["ip", "-6", "addr", "add", f"{address}/128", "dev", iface,
                        "nodad"], check=True)
    print(address)


if __name__ == "__main__":
    main()
