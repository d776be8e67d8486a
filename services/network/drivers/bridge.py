"""LXD-style managed bridge: a Linux bridge, its gateway address, dnsmasq and nftables.

The bridge interface is named like the network (as in LXD), so a NIC ``{network: br0}``
attaches to the interface ``br0``. Bringing a network up is one idempotent routine used by
create (fresh), start (after a reboot: recreate what is missing, restart a dead dnsmasq)
and update (restart dnsmasq with the new config); a failure half-way undoes everything.
"""

from __future__ import annotations

import hashlib
import socket
from ipaddress import IPv4Interface, IPv6Interface

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shared.errors import Conflict, CorralError, Internal, NotFound

from .. import host
from . import bridge_config as bc
from . import bridge_links as links
from . import dhcp_release, dnsmasq, nft, sysctl
from .base import AnyNetwork, NetworkDriver

IFF_UP = 0x1
IFA_F_NODAD = 0x02
SCOPE_LINK = 253


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
    def create(self, taken: list[AnyNetwork] | None = None) -> dict[str, str]:
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
               taken: list[AnyNetwork] | None = None) -> dict[str, str]:
        if not self.exists():
            raise NotFound(f"Network {self.name!r} is not present on this host")
        old = self.config
        new = bc.resolve_auto(bc.validate(new_config), taken or [], own_ifname=self.name)
        if (bc.gateway(old), bc.gateway6(old)) != (bc.gateway(new), bc.gateway6(new)):
            dnsmasq.stop(self.state_dir)  # old leases are for the old subnet
            (self.state_dir / dnsmasq.LEASES_FILE).unlink(missing_ok=True)
        dropped = set(links.external_interfaces(old)) - set(links.external_interfaces(new))
        try:
            if dropped:
                with IPRoute() as ipr:
                    links.detach_external(ipr, self._link_index(ipr), sorted(dropped))
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
        if bc.gateway(self.config) is None and bc.gateway6(self.config) is None:
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
        gw, gw6 = bc.gateway(config), bc.gateway6(config)
        for key, value in (("ipv4.address", gw), ("ipv6.address", gw6)):
            if value is None and config.get(key) == "auto":
                raise Internal(f"{key}=auto must be resolved before the bridge is built")
        with IPRoute() as ipr:
            idx = self._link_index(ipr)
            if idx is None:
                ipr.link("add", ifname=self.name, kind="bridge")
                idx = ipr.link_lookup(ifname=self.name)[0]
            ipr.link("set", index=idx, mtu=int(config.get("bridge.mtu", "1500")),
                     address=config.get("bridge.hwaddr", stable_hwaddr(self.name)))
            self._ipv6_sysctls(gw6 is not None)
            for family, want in ((socket.AF_INET, gw), (socket.AF_INET6, gw6)):
                self._sync_address(ipr, idx, family, want)
            ipr.link("set", index=idx, state="up")
            links.sync_routes(ipr, idx, config)
            links.attach_external(ipr, idx, self.name, links.external_interfaces(config))
        families = self._families(config)
        if not families:
            nft.delete_table(self.name)
            dnsmasq.stop(self.state_dir)
            return
        if gw is not None and bc.flag(config, "ipv4.routing"):
            sysctl.enable_ipv4_forwarding()
        if gw6 is not None and bc.flag(config, "ipv6.routing"):
            sysctl.enable_ipv6_forwarding()
        nft.apply_table(self.name, self.name, families)
        dnsmasq.write_raw(config, self.state_dir)
        if restart_dnsmasq or dnsmasq.running_pid(self.state_dir) is None:
            dnsmasq.stop(self.state_dir)
            dnsmasq.start(dnsmasq.args(self.name, config, self.state_dir), self.state_dir)

    @staticmethod
    def _sync_address(ipr: IPRoute, idx: int, family: int,
                      want: IPv4Interface | IPv6Interface | None) -> None:
        """Leave exactly ``want`` as the bridge's address of this family (link-local
        IPv6 addresses are the kernel's and stay)."""
        for addr in ipr.get_addr(index=idx, family=family):
            ip, plen = addr.get_attr("IFA_ADDRESS"), addr["prefixlen"]
            if family == socket.AF_INET6 and addr["scope"] == SCOPE_LINK:
                continue
            if want is None or (ip, plen) != (str(want.ip), want.network.prefixlen):
                ipr.addr("del", index=idx, address=ip, prefixlen=plen, family=family)
        if want is None or ipr.get_addr(index=idx, family=family, address=str(want.ip)):
            return
        if family == socket.AF_INET:
            ipr.addr("add", index=idx, address=str(want.ip), prefixlen=want.network.prefixlen,
                     broadcast=str(want.network.broadcast_address))
        else:
            ipr.addr("add", index=idx, address=str(want.ip), prefixlen=want.network.prefixlen,
                     family=socket.AF_INET6, flags=IFA_F_NODAD)

    def _ipv6_sysctls(self, enabled: bool) -> None:
        """No IPv6: the bridge says nothing (no link-local chatter, no v6 answers).
        IPv6: as LXD, no autoconfiguration and no DAD on the bridge's own address."""
        values = ({"autoconf": "0", "accept_dad": "0", "disable_ipv6": "0"} if enabled
                  else {"disable_ipv6": "1"})
        for key, value in values.items():
            sysctl.set_interface("ipv6", self.name, key, value, required=enabled)

    @staticmethod
    def _families(config: dict[str, str]) -> list[nft.Family]:
        """The nftables part of each address family the bridge has."""
        out = []
        for version, gw in ((4, bc.gateway(config)), (6, bc.gateway6(config))):
            if gw is None:
                continue
            k = f"ipv{version}"
            out.append(nft.Family(
                version=version, subnet=gw.network, nat=bc.flag(config, f"{k}.nat"),
                nat_address=config.get(f"{k}.nat.address", ""),
                nat_order=bc.setting(config, f"{k}.nat.order"),
                firewall=bc.flag(config, f"{k}.firewall"),
                routing=bc.flag(config, f"{k}.routing")))
        return out

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

    def release_leases(self, hwaddrs: set[str]) -> int:
        """Forget these MACs' leases. dnsmasq keeps leases in memory, so as LXD 5.0 does
        it is sent a DHCPRELEASE per lease on the client's behalf and keeps running (a
        restart cost most of an ``lxc delete`` and left the bridge without DNS/DHCP for
        a moment). Only when that cannot be done (dnsmasq-utils missing, a lease not
        dropped in time) is it stopped, the lines removed from its file, and restarted."""
        if not dnsmasq.has_leases(self.state_dir, hwaddrs):
            return 0
        running = dnsmasq.running_pid(self.state_dir) is not None
        if running:
            released = dhcp_release.release(self.state_dir, self.name, hwaddrs)
            if released is not None:
                return released
        dnsmasq.stop(self.state_dir)
        try:
            return dnsmasq.remove_leases(self.state_dir, hwaddrs)
        finally:
            if running:
                dnsmasq.start(dnsmasq.args(self.name, self.config, self.state_dir),
                              self.state_dir)

    def leases(self, location: str = "none") -> list[dict]:
        """LXD's ``/1.0/networks/<name>/leases``: the static ones (NICs' ``ipv4.address``,
        dnsmasq host entries) first, then dnsmasq's lease file, a static one's lease not
        listed twice."""
        out, seen = [], set()
        for entry in dnsmasq.read_hosts(self.state_dir):
            for address in (entry["ipv4"], entry["ipv6"]):
                if address:
                    seen.add((entry["hwaddr"], address))
                    out.append({"hostname": entry["hostname"], "hwaddr": entry["hwaddr"],
                                "address": address, "type": "static", "location": location})
        return out + [
            {"hostname": lease["hostname"], "hwaddr": lease["hwaddr"],
             "address": lease["address"], "type": "dynamic", "location": location}
            for lease in dnsmasq.read_leases(self.state_dir)
            if (lease["hwaddr"], lease["address"]) not in seen]
