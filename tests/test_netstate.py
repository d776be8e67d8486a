"""netstate's own rtnetlink decoding against iproute2's view of the same namespace.

The instance service reads every running container's interfaces this way for
``GET /1.0/instances?recursion=2`` and ``lxc info``; the host's namespace (bridges, veths,
loopback, IPv4 and IPv6 addresses) is a real netns with more variety than a container's.
"""

from __future__ import annotations

import json
import os
import subprocess

from services.instance.drivers import netstate


def _ip(*args: str) -> list[dict]:
    return json.loads(subprocess.run(["ip", "-j", *args], check=True, capture_output=True,
                                     text=True).stdout)


def test_interfaces_addresses_and_counters_match_iproute2():
    ours = netstate.network_state(os.getpid())
    links = {link["ifname"]: link for link in _ip("-s", "link")}
    assert set(ours) == set(links)
    for name, link in links.items():
        mine = ours[name]
        assert mine["mtu"] == link["mtu"], name
        assert mine["hwaddr"] == link.get("address", ""), name
        assert mine["state"] == ("up" if "UP" in link["flags"] else "down"), name
        if name == "lo":
            assert mine["type"] == "loopback"
        # counters move between the two reads: ours were read first
        assert 0 <= mine["counters"]["packets_received"] <= link["stats64"]["rx"]["packets"]
        assert 0 <= mine["counters"]["bytes_sent"] <= link["stats64"]["tx"]["bytes"]
    for entry in _ip("addr"):
        want = sorted((a["family"], a["local"], str(a["prefixlen"]), a["scope"])
                      for a in entry.get("addr_info", []))
        got = sorted((a["family"], a["address"], a["netmask"], a["scope"])
                     for a in ours[entry["ifname"]]["addresses"])
        assert got == want, entry["ifname"]


def test_a_thread_is_back_in_its_own_namespace_after_reading():
    before = os.readlink("/proc/thread-self/ns/net")
    netstate.network_state(os.getpid())
    assert os.readlink("/proc/thread-self/ns/net") == before


def test_a_gone_process_is_an_error_not_a_wrong_answer():
    proc = subprocess.Popen(["true"])
    proc.wait()
    try:
        netstate.network_state(proc.pid)
    except (FileNotFoundError, ProcessLookupError):
        pass
    else:
        raise AssertionError("a gone PID must raise")
