"""What the network service accepts and answers on the bus, besides LXD's CRUD shapes.

The instance service calls ``nic_config`` (node scope) when it builds a container's LXC
config and ``nic_limits`` when a NIC's limits change on a running instance. The network
service calls the instance service's ``network_users`` to learn which instances use a
network before it deletes or renames it.
"""

from __future__ import annotations

from pydantic import Field

from shared.models import Message, Request


class NicConfigRequest(Request):
    """Resolve one ``type: nic`` device into LXC keys (the project is the instance's)."""

    instance: str
    index: int = Field(ge=0, description="N in lxc.net.N")
    device: dict[str, str]
    # Kept by the instance service in volatile.<dev>.host_name / volatile.<dev>.hwaddr;
    # None: the network service picks new ones and returns them.
    host_name: str | None = None
    hwaddr: str | None = None


class NicConfigReply(Message):
    """Travels as ``Reply.metadata``; ``lxc`` is a list of [key, value] pairs, in order."""

    lxc: list[list[str]]
    host_name: str = ""  # host-side veth ("" for macvlan)
    hwaddr: str
    bridge: str = ""  # the bridge the NIC joins ("" for macvlan/p2p)
    network: str = ""  # the managed network, "" when the parent is not one


class NicLimitsRequest(Request):
    """Apply ``limits.ingress|egress|max`` of ``device`` on a live host veth (none: clear)."""

    host_name: str
    device: dict[str, str] = Field(default_factory=dict)


class NetworkUsersRequest(Request):
    """``corral.instance.network_users``: instances whose NICs use network ``name``.

    Answered with ``Reply(metadata=[instance URLs])``.
    """

    name: str
