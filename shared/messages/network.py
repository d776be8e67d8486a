"""What the network service accepts and answers on the bus, besides LXD's CRUD shapes.

The instance service calls ``nic_config`` (node scope) when it builds or starts an
instance, and gets a neutral :class:`Nic` back: each instance driver renders it in its
own syntax (LXC config keys, libvirt XML), so no driver's syntax crosses the bus. It calls
``nic_limits`` when a NIC's limits change on a running instance. The network
service calls the instance service's ``network_users`` to learn which instances use a
network before it deletes or renames it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from shared.models import Message, Request

NicType = Literal["bridged", "macvlan", "p2p", "routed"]


class NicConfigRequest(Request):
    """Resolve one ``type: nic`` device into a :class:`Nic` (the project is the instance's)."""

    instance: str
    index: int = Field(ge=0, description="the NIC's position among the instance's NICs "
                                          "(sorted device names); default guest name eth<index>")
    device: dict[str, str]
    # Kept by the instance service in volatile.<dev>.host_name / volatile.<dev>.hwaddr;
    # None: the network service picks new ones and returns them.
    host_name: str | None = None
    hwaddr: str | None = None


class Nic(Message):
    """One NIC as the host will make it, in no driver's syntax.

    Why neutral: the network service knows bridges, names and MACs; how a NIC is written
    down (``lxc.net.N.*`` keys, a libvirt ``<interface>``) is each instance driver's
    business. Drivers keep these in their spec files and render them at every start.
    """

    name: str = "eth0"  # the interface name inside the instance
    nictype: NicType = "bridged"
    parent: str = ""  # the bridge (bridged) or host interface (macvlan); "" for p2p
    bridge: str = ""  # the bridge the NIC joins ("" for macvlan/p2p)
    host_name: str = ""  # host-side veth or tap ("" for macvlan)
    hwaddr: str = ""
    mtu: int | None = None
    network: str = ""  # the managed network, "" when the parent is not one
    limits_ingress: str | None = None  # what the instance receives, e.g. "10Mbit"
    limits_egress: str | None = None  # what the instance sends
    # Addresses the instance itself sets (routed NICs: no DHCP on a routed link), each
    # "address/prefixlen", and the gateway it routes through ("" none). A routed NIC's
    # host side gets a route to each address through its veth and answers ARP/NDP for
    # the gateway (LXD: 169.254.0.1 and fe80::1).
    ipv4_addresses: list[str] = Field(default_factory=list)
    ipv6_addresses: list[str] = Field(default_factory=list)
    ipv4_gateway: str = ""
    ipv6_gateway: str = ""


class NicConfigReply(Nic):
    """``nic_config``'s answer, as ``Reply.metadata``: the resolved :class:`Nic`."""


class NicLimitsRequest(Request):
    """Apply ``limits.ingress|egress|max`` of ``device`` on a live host veth (none: clear)."""

    host_name: str
    device: dict[str, str] = Field(default_factory=dict)


class NicReleaseRequest(Request):
    """Forget the DHCP leases of a deleted instance's NICs on managed network ``network``
    (its MACs ``hwaddrs``), so dnsmasq's lease file keeps no address for it, and remove
    what shaped their host-side ends (``host_names``: the ifb of ``limits.egress``)."""

    network: str
    hwaddrs: list[str] = Field(default_factory=list)
    host_names: list[str] = Field(default_factory=list)


class NetworkUsersRequest(Request):
    """``corral.instance.network_users``: instances whose NICs use network ``name``.

    Answered with ``Reply(metadata=[instance URLs])``.
    """

    name: str


class NicLeaseRequest(Request):
    """``corral.network.lease_set`` / ``lease_clear`` (node scope): the static DHCP lease of
    one bridged NIC, as LXD's ``ipv4.address``/``ipv6.address`` on a NIC of a managed
    bridge: a dnsmasq host entry for ``hwaddr`` on ``network`` (dnsmasq reloaded with
    SIGHUP). ``lease_set`` with both addresses empty is ``lease_clear``. The addresses are
    checked (inside the network's subnet, not its gateway, not another NIC's); a changed
    address also drops the MAC's dynamic lease so the guest's next DHCP request gets it.

    Answered with ``Reply(metadata={"ipv4.address": ..., "ipv6.address": ...})``.
    """

    network: str
    hwaddr: str
    instance: str = ""  # the DNS name dnsmasq gives the address
    ipv4_address: str = ""
    ipv6_address: str = ""


class ForwardRequest(Request):
    """``/1.0/networks/<network>/forwards[/<listen_address>]``: one verb per method
    (``forward_list``, ``forward_create``, ``forward_get``, ``forward_update`` (PUT),
    ``forward_patch``, ``forward_delete``); ``body`` is LXD's JSON as sent."""

    network: str
    listen_address: str = ""
    recursion: int = 0
    body: dict[str, Any] | None = None
    etag: str | None = None  # the client's If-Match, without quotes
