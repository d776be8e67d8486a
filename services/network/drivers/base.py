"""What every managed-network driver offers, and the checks all of them share.

A driver is stateless apart from files under ``$CORRAL_DIR/networks/<name>/``: the network
service keeps the records (name, type, config) in its KV store and builds a driver object
for each call. Methods block; the service runs them in a thread.
"""

from __future__ import annotations

import re
import shutil
from abc import ABC, abstractmethod
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from shared.errors import BadRequest

AnyNetwork = IPv4Network | IPv6Network
_IFNAME_CHARS = re.compile(r"^[-_a-zA-Z0-9.]+$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def validate_network_name(name: str) -> None:
    """LXD's rules for a bridge network: its name becomes a kernel interface name."""
    if not isinstance(name, str) or len(name) < 2:
        raise BadRequest(f"Invalid network name {name!r}: at least 2 characters are needed")
    if len(name) > 15:
        raise BadRequest(f"Invalid network name {name!r}: at most 15 characters "
                         "(it becomes a network interface name)")
    if ".." in name or name in ("none", "."):
        raise BadRequest(f"Invalid network name {name!r}: reserved name or '..'")
    if not _IFNAME_CHARS.match(name):
        raise BadRequest(f"Invalid network name {name!r}: only letters, digits, '-', '_' "
                         "and '.' are allowed (no '/', ':' or spaces)")


def parse_bool(key: str, value: str) -> bool:
    """LXD's boolean spellings; anything else is a clear 400."""
    low = str(value).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise BadRequest(f"Invalid value for {key!r}: {value!r} is not a boolean "
                     "(use true or false)")


class NetworkDriver(ABC):
    """One managed network of one type, bound to its name, config and state dir."""

    type: str = ""

    def __init__(self, name: str, config: dict[str, str], corral_dir: str | Path) -> None:
        validate_network_name(name)
        self.name = name
        self.config = dict(config)
        self.corral_dir = Path(corral_dir)

    @property
    def state_dir(self) -> Path:
        """Per-network files (pid, leases, hosts, log)."""
        return self.corral_dir / "networks" / self.name

    def remove_state_dir(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)

    @abstractmethod
    def validate_config(self, config: dict[str, str]) -> dict[str, str]:
        """Check ``config`` and return it with defaults filled in (400 on bad input)."""

    @abstractmethod
    def create(self, taken: list[AnyNetwork] | None = None) -> dict[str, str]:
        """Build the network; returns the effective config to store ("auto" resolved)."""

    @abstractmethod
    def start(self) -> None:
        """Make sure everything is up (after a reboot or a crash); idempotent."""

    @abstractmethod
    def stop(self) -> None:
        """Take the network down but keep its state dir (leases)."""

    @abstractmethod
    def delete(self) -> None:
        """Remove everything the network made, state dir included."""

    @abstractmethod
    def update(self, new_config: dict[str, str],
               taken: list[AnyNetwork] | None = None) -> dict[str, str]:
        """Apply a new config to a live network; returns the effective config."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def is_running(self) -> bool: ...

    @abstractmethod
    def state(self) -> dict: ...

    @abstractmethod
    def leases(self, location: str = "none") -> list[dict]: ...

    def release_leases(self, hwaddrs: set[str]) -> int:
        """Forget the DHCP leases of these MACs (a deleted instance's NICs); how many."""
        return 0
