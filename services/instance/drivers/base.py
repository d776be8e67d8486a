"""The instance driver interface: what the instance service may ask any driver to do.

Why: the service must not care whether an instance is an LXC container or a QEMU VM.
Like Nova's ``virt/driver.py`` it is a set of explicit methods plus capability flags the
service checks before offering a feature (a VM driver may not have idmaps or live cpusets).
All methods block; the bus service calls them in a thread. ``exec_start`` returns at once
with file descriptors so an async caller can pump the streams itself.
"""

from __future__ import annotations

import abc
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import BadRequest, NotFound

# Each driver keeps an instance's inputs (config, devices, idmap...) in one JSON file.
SPEC_FILE = "corral.json"
NAME_RE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")


def check_name(name: str) -> None:
    """LXD's instance names (hostnames): both drivers use them as host object names."""
    if not NAME_RE.match(name) or name.isdigit():
        raise BadRequest(f"Invalid instance name {name!r}: use 1-63 letters, digits and "
                         "dashes, not starting or ending with a dash, not only digits")


@dataclass(frozen=True)
class Capabilities:
    """What a driver supports; the service refuses requests for missing features."""

    instance_type: str
    live_limits: bool = False
    exec: bool = False
    exec_pty: bool = False
    files: bool = False
    freeze: bool = False
    console_log: bool = False
    idmap: bool = False
    live_migration: bool = False


@dataclass
class InstanceSpec:
    """What the driver is given to build an instance (persisted next to its config)."""

    name: str
    config: dict[str, str]
    devices: dict[str, dict[str, str]]
    rootfs_path: Path
    nic_config_lines: list[str] = field(default_factory=list)


class ExecProcess(abc.ABC):
    """A running command inside an instance.

    Either ``pty_fd`` is set (interactive: read/write the master, ``resize`` works) or the
    three pipe ends are. The caller owns and must close the fds it was given.
    """

    pid: int
    stdin_fd: int | None = None
    stdout_fd: int | None = None
    stderr_fd: int | None = None
    pty_fd: int | None = None

    @abc.abstractmethod
    def wait(self) -> int:
        """Block until the command ends; exit code, 128+N when killed by signal N."""

    @abc.abstractmethod
    def signal(self, signum: int) -> None:
        """Deliver a signal to the command (no-op once it has ended)."""

    @abc.abstractmethod
    def resize(self, width: int, height: int) -> None:
        """Set the pty window size (interactive only)."""


class InstanceDriver(abc.ABC):
    """Lifecycle, state, exec and files of the instances one driver manages."""

    capabilities: Capabilities

    @abc.abstractmethod
    def create(self, name: str, config: dict[str, str], devices: dict[str, dict[str, str]],
               rootfs_path: Path, nic_config_lines: list[str]) -> dict[str, str]:
        """Define the instance; returns volatile keys to store (e.g. idmap)."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove the definition (not the root volume); refused while running."""

    @abc.abstractmethod
    def start(self, name: str) -> None: ...

    @abc.abstractmethod
    def stop(self, name: str, timeout: float = 30, force: bool = False) -> None: ...

    @abc.abstractmethod
    def restart(self, name: str, timeout: float = 30, force: bool = False) -> None: ...

    @abc.abstractmethod
    def freeze(self, name: str) -> None: ...

    @abc.abstractmethod
    def unfreeze(self, name: str) -> None: ...

    @abc.abstractmethod
    def state(self, name: str) -> dict:
        """LXD's ``/1.0/instances/<name>/state`` document."""

    def state_many(self, names: list[str]) -> dict[str, dict]:
        return {n: self.state(n) for n in names}

    @abc.abstractmethod
    def apply_limits_live(self, name: str, changed_config: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def exec_start(self, name: str, command: list[str], env: dict[str, str] | None = None,
                   cwd: str | None = None, uid: int = 0, gid: int = 0,
                   interactive: bool = False, width: int = 80,
                   height: int = 24) -> ExecProcess: ...

    @abc.abstractmethod
    def file_get(self, name: str, path: str) -> tuple[bytes | list[str], int, int, int, str]:
        ...

    @abc.abstractmethod
    def file_put(self, name: str, path: str, data: bytes, uid: int = 0, gid: int = 0,
                 mode: int | None = None, type: str = "file",
                 write: str = "overwrite") -> None: ...

    @abc.abstractmethod
    def file_delete(self, name: str, path: str) -> None: ...

    @abc.abstractmethod
    def console_log(self, name: str) -> bytes: ...

    @abc.abstractmethod
    def list_host(self) -> dict[str, str]:
        """{name: status} of every instance this driver finds on the host."""


def check_command(command: list[str]) -> None:
    """An exec command: a non-empty list of strings without NUL bytes (both drivers)."""
    if not command or not all(isinstance(a, str) and "\0" not in a for a in command):
        raise BadRequest("Invalid command: a non-empty list of strings is needed")


class SpecDir:
    """One directory per instance under ``spec_root``, holding ``corral.json``.

    Why shared: both drivers keep what they were given there, so a restarted service can
    rebuild the LXC config or the libvirt domain; the file is replaced atomically.
    """

    spec_root: Path

    def _dir(self, name: str) -> Path:
        check_name(name)
        return self.spec_root / name

    def _load(self, name: str) -> dict:
        try:
            return json.loads((self._dir(name) / SPEC_FILE).read_text())
        except FileNotFoundError:
            raise NotFound(f"Instance {name!r} not found in {self.spec_root}") from None

    def _save(self, name: str, data: dict) -> None:
        tmp = self._dir(name) / (SPEC_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self._dir(name) / SPEC_FILE)
