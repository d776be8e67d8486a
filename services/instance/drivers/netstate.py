"""A container's interfaces, addresses and counters, read over netlink in its netns.

Why not pyroute2's NetNS: it forks a helper process per namespace, and ``state_many``
for 100 instances must not spawn anything. Instead a short-lived thread joins the
container's netns with setns(2) (per-thread for CLONE_NEWNET), opens a NETLINK_ROUTE
socket there (a socket stays bound to the netns it was created in), and switches back.
pyroute2's marshal then parses the dumps.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_GETADDR, RTM_GETLINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
_IFF_UP = 1
_ARPHRD = {1: "broadcast", 772: "loopback", 65534: "point-to-point", 776: "point-to-point"}


def _socket_in_netns(pid: int) -> socket.socket:
    result: list = []

    def run() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(target, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into container netns failed")
                try:
                    result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                                socket.NETLINK_ROUTE))
                finally:
                    if _libc.setns(own, CLONE_NEWNET) != 0:  # never leave a thread moved
                        os._exit(70)
            finally:
                os.close(target)
        except OSError as exc:
            result.append(exc)
        finally:
            os.close(own)

    t = threading.Thread(target=run, name=f"netns-{pid}")
    t.start()
    t.join()
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]


def _dump(sock: socket.socket, msg_cls, msg_type: int, family: int = 0) -> list:
    msg = msg_cls()
    msg["family"] = family
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    msg["header"]["sequence_number"] = 1
    msg.encode()
    sock.send(msg.data)
    marshal, out = MarshalRtnl(), []
    while True:
        data = sock.recv(65536)
        for m in marshal.parse(data):
            if m["header"]["type"] == 3:  # NLMSG_DONE
                return out
            if m["header"]["type"] == 2:  # NLMSG_ERROR
                return out
            out.append(m)


def network_state(pid: int) -> dict[str, dict]:
    """LXD's ``state.network``: {ifname: {addresses, counters, hwaddr, mtu, state, type}}."""
    sock = _socket_in_netns(pid)
    try:
        links = _dump(sock, ifinfmsg, RTM_GETLINK)
        addrs = _dump(sock, ifaddrmsg, RTM_GETADDR)
    finally:
        sock.close()
    out: dict[str, dict] = {}
    names: dict[int, str] = {}
    for link in links:
        name = link.get_attr("IFLA_IFNAME")
        names[link["index"]] = name
        st = link.get_attr("IFLA_STATS64") or {}
        out[name] = {
            "addresses": [],
            "counters": {"bytes_received": st.get("rx_bytes", 0),
                         "bytes_sent": st.get("tx_bytes", 0),
                         "packets_received": st.get("rx_packets", 0),
                         "packets_sent": st.get("tx_packets", 0),
                         "errors_received": st.get("rx_errors", 0),
                         "errors_sent": st.get("tx_errors", 0),
                         "packets_dropped_outbound": st.get("tx_dropped", 0),
                         "packets_dropped_inbound": st.get("rx_dropped", 0)},
            "hwaddr": link.get_attr("IFLA_ADDRESS") or "",
            "host_name": "",
            "mtu": link.get_attr("IFLA_MTU") or 0,
            "state": "up" if link["flags"] & _IFF_UP else "down",
            "type": _ARPHRD.get(link["ifi_type"], "broadcast"),
        }
    for a in addrs:
        name = names.get(a["index"])
        if name is None:
            continue
        fam = "inet" if a["family"] == socket.AF_INET else "inet6"
        addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        out[name]["addresses"].append({"family": fam, "address": addr,
                                       "netmask": str(a["prefixlen"]),
                                       "scope": _SCOPES.get(a["scope"], "global")})
    return out
