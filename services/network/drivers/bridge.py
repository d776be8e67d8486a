"""LXD-style managed bridge: a Linux bridge, its gateway address, dnsmasq and nftables.

The bridge interface is named like the network (as in LXD), so a NIC ``{network: br0}``
attaches to the interface ``br0``. Bringing a network up is one idempotent routine used by
create (fresh), start (after a reboot: recreate what is missing, restart a dead dnsmasq)
and update (restart dnsmasq with the new config); a failure half-way undoes everything.
"""

from __future__ import annotations

import hashlib
import socket
from ipaddress import IPv4Network
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shared.errors import Conflict, CorralError, Internal, NotFound

from .. import host
from . import bridge_config as bc
from . import dnsmasq, nft
from .base import NetworkDriver, parse_bool

IFF_UP = 0x1


def _wrap(err: Exception, what: str) -> CorralError:
    if isinstance(err, CorralError):
        return err
    return Internal(f"{what}: {err}")


def stable_hwaddr(name: str) -> str:
    """A MAC in LXD's 00:16:3e range derived from the name, so it survives reboots
    (otherwise the bridge takes its first port's MAC and clients see it change)."""
    h = hashlib.sha256(f"corral-bridge-{name}".encode()).digest()
    return "00:16:3e:" + ":".join(f"{b:02x}" for b in h[:3])


class BridgeDriver(NetworkDriver):
    type = "bridge"

    # -- config -------------------------------------------------------------------------
    def validate_config(self, config: dict[str, str]) -> dict[str, str]:
        return bc.validate(config)

    # -- lifecycle ------------------------------------------------------------------------
    def create(self, taken: list[IPv4Network] | None = None) -> dict[str, str]:
        if self._link_index() is not None:
            raise Conflict(f"Cannot create network {self.name!r}: a network interface with "
                           "that name already exists on this host")
        config = bc.resolve_auto(bc.validate(self.config), taken or [])
        self.config = config
        try:
            self._bring_up(config, restart_dnsmasq=True)
        except Exception as err:
            self._tear_down(quiet=True)
            self.remove_state_dir()
            raise _wrap(err, f"Failed to create network {self.name!r}") from err
        return config

    def start(self) -> None:
        try:
            self._bring_up(self.config, restart_dnsmasq=False)
        except Exception as err:
            self._tear_down(quiet=True)
            raise _wrap(err, f"Failed to start network {self.name!r}") from err

    def stop(self) -> None:
        self._tear_down(quiet=False)

    def delete(self) -> None:
        self._tear_down(quiet=False)
        self.remove_state_dir()

    def update(self, new_config: dict[str, str],
               taken: list[IPv4Network] | None = None) -> dict[str, str]:
        if not self.exists():
            raise NotFound(f"Network {self.name!r} is not present on this host")
        old = self.config
        new = bc.resolve_auto(bc.validate(new_config), taken or [], own_ifname=self.name)
        if bc.gateway(old) != bc.gateway(new):
            dnsmasq.stop(self.state_dir)  # old leases are for the old subnet
            (self.state_dir / dnsmasq.LEASES_FILE).unlink(missing_ok=True)
        try:
            self._bring_up(new, restart_dnsmasq=True)
        except Exception as err:
            try:
                self._bring_up(old, restart_dnsmasq=True)
            except Exception:
                pass
            raise _wrap(err, f"Failed to update network {self.name!r}") from err
        self.config = new
        return new

    def exists(self) -> bool:
        return self._link_index() is not None

    def is_running(self) -> bool:
        with IPRoute() as ipr:
            idx = self._link_index(ipr)
            if idx is None or not ipr.get_links(idx)[0]["flags"] & IFF_UP:
                return False
        if bc.gateway(self.config) is None:
            return True
        return dnsmasq.running_pid(self.state_dir) is not None

    # -- the work -----------------------------------------------------------------------
    def _link_index(self, ipr: IPRoute | None = None) -> int | None:
        """Index of our bridge; Conflict if the name is taken by a non-bridge."""
        if ipr is None:
            with IPRoute() as own:
                return self._link_index(own)
        found = ipr.link_lookup(ifname=self.name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        if kind != "bridge":
            raise Conflict(f"Interface {self.name!r} exists but is a {kind or 'plain'} "
                           "device, not a bridge; rename the network or remove the device")
        return found[0]

    def _bring_up(self, config: dict[str, str], restart_dnsmasq: bool) -> None:
        gw = bc.gateway(config)
        if gw is None and config.get("ipv4.address") == "auto":
            raise Internal("ipv4.address=auto must be resolved before the bridge is built")
        with IPRoute() as ipr:
            idx = self._link_index(ipr)
            if idx is None:
                ipr.link("add", ifname=self.name, kind="bridge")
                idx = ipr.link_lookup(ifname=self.name)[0]
            ipr.link("set", index=idx, mtu=int(config.get("bridge.mtu", "1500")),
                     address=config.get("bridge.hwaddr", stable_hwaddr(self.name)))
            self._disable_ipv6()
            for addr in ipr.get_addr(index=idx, family=socket.AF_INET):
                ip, plen = addr.get_attr("IFA_ADDRESS"), addr["prefixlen"]
                if gw is None or (ip, plen) != (str(gw.ip), gw.network.prefixlen):
                    ipr.addr("del", index=idx, address=ip, prefixlen=plen)
            if gw is not None and not ipr.get_addr(index=idx, address=str(gw.ip)):
                ipr.addr("add", index=idx, address=str(gw.ip), prefixlen=gw.network.prefixlen,
                         broadcast=str(gw.network.broadcast_address))
            ipr.link("set", index=idx, state="up")
        if gw is None:
            nft.delete_table(self.name)
            dnsmasq.stop(self.state_dir)
            return
        nft.apply_table(self.name, self.name, gw.network,
                        parse_bool("ipv4.nat", bc.setting(config, "ipv4.nat")))
        if restart_dnsmasq or dnsmasq.running_pid(self.state_dir) is None:
            dnsmasq.stop(self.state_dir)
            dnsmasq.start(dnsmasq.args(self.name, gw, config, self.state_dir), self.state_dir)

    def _disable_ipv6(self) -> None:
        """ipv6.address is always none for now: no link-local chatter, no v6 answers."""
        path = Path(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6")
        if path.exists():
            path.write_text("1")

    def _tear_down(self, quiet: bool) -> None:
        """Stop dnsmasq, drop the nft table, delete the bridge; collect every failure."""
        errors: list[str] = []
        for step, fn in (("stop dnsmasq", lambda: dnsmasq.stop(self.state_dir)),
                         ("delete nftables table", lambda: nft.delete_table(self.name)),
                         ("delete bridge", self._delete_link)):
            try:
                fn()
            except Exception as err:  # keep going: remove as much as we can
                errors.append(f"{step}: {getattr(err, 'message', err)}")
        if errors and not quiet:
            raise Internal(f"Network {self.name!r} not fully removed: " + "; ".join(errors))

    def _delete_link(self) -> None:
        with IPRoute() as ipr:
            idx = self._link_index(ipr)
            if idx is not None:
                try:
                    ipr.link("del", index=idx)
                except NetlinkError as err:
                    if err.code != 19:  # ENODEV: gone meanwhile
                        raise

    # -- views --------------------------------------------------------------------------
    def state(self) -> dict:
        """LXD's ``/1.0/networks/<name>/state``."""
        if self._link_index() is None:
            raise NotFound(f"Network {self.name!r} has no interface on this host")
        return host.interface_state(self.name)

    def leases(self, location: str = "none") -> list[dict]:
        """LXD's ``/1.0/networks/<name>/leases`` from dnsmasq's lease file."""
        return [{"hostname": lease["hostname"], "hwaddr": lease["hwaddr"],
                 "address": lease["address"], "type": "dynamic", "location": location}
                for lease in dnsmasq.read_leases(self.state_dir)]
