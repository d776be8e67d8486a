"""LXD's managed ``macvlan`` network: a name for "macvlan NICs on this host interface".

It makes no kernel object of its own (each NIC is a macvlan LXC creates on the parent
when the instance starts), so create, start and delete only check the parent; what the
network holds is its config (``parent``, ``mtu``), which NICs with ``network: <name>``
take. There is no DHCP of ours on it: addresses come from whatever serves the parent's
segment.
"""

from __future__ import annotations

from shared.errors import BadRequest, NotFound

from .. import host
from .base import AnyNetwork, NetworkDriver, validate_network_name

KEYS = {"parent", "mtu", "vlan", "gvrp"}
NOT_YET = {"vlan", "gvrp"}


class MacvlanDriver(NetworkDriver):
    type = "macvlan"

    def validate_config(self, config: dict[str, str]) -> dict[str, str]:
        out = {k: v for k, v in config.items() if v != "" or k.startswith("user.")}
        for key in out:
            if key.startswith("user."):
                continue
            if key not in KEYS:
                raise BadRequest(f"Invalid config key {key!r} for a macvlan network (known: "
                                 f"{', '.join(sorted(KEYS))}, user.*)")
            if key in NOT_YET:
                raise BadRequest(f"Config key {key!r} is valid in LXD but not supported by "
                                 "Corral yet")
        if not out.get("parent"):
            raise BadRequest("A macvlan network needs 'parent' (the host interface its "
                             "NICs sit on)")
        validate_network_name(out["parent"])
        if "mtu" in out and (not out["mtu"].isdigit() or not 576 <= int(out["mtu"]) <= 65535):
            raise BadRequest(f"Invalid value for 'mtu': {out['mtu']!r} (576 to 65535)")
        return out

    def _check_parent(self, config: dict[str, str]) -> None:
        kind = host.interface_type(config["parent"])
        if kind is None:
            raise NotFound(f"Parent interface {config['parent']!r} of network {self.name!r} "
                           "does not exist on this host")
        if kind == "loopback":
            raise BadRequest("A macvlan network cannot sit on the loopback interface")

    def create(self, taken: list[AnyNetwork] | None = None) -> dict[str, str]:
        config = self.validate_config(self.config)
        self._check_parent(config)
        self.config = config
        return config

    def start(self) -> None:
        self._check_parent(self.config)

    def stop(self) -> None:
        pass

    def delete(self) -> None:
        self.remove_state_dir()

    def update(self, new_config: dict[str, str],
               taken: list[AnyNetwork] | None = None) -> dict[str, str]:
        config = self.validate_config(new_config)
        self._check_parent(config)
        self.config = config
        return config

    def exists(self) -> bool:
        return host.interface_type(self.config.get("parent", "")) is not None

    def is_running(self) -> bool:
        return self.exists()

    def state(self) -> dict:
        return host.interface_state(self.config["parent"])

    def leases(self, location: str = "none") -> list[dict]:
        raise BadRequest(f"Network {self.name!r} is a macvlan network: Corral serves no "
                         "DHCP on it, so it has no leases")
