"""The instance driver interface: every method the instance service calls on a driver.

Why: the service must not care whether an instance is an LXC container or a QEMU VM.
Like Nova's ``virt/driver.py`` (or LXD's ``instance.Instance``) it is a set of explicit
methods plus capability flags the service reads before offering a feature (a VM cannot
change every limit live, nor be renamed yet). All methods block; the bus service calls
them in a thread. ``exec_start`` returns at once with file descriptors so an async caller
can pump the streams itself. Instances are named by LXD's rule (:mod:`..names`).
"""

from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from shared.errors import BadRequest, NotFound
from shared.messages.network import Nic

from ..names import check_host_name, check_name
from .disk_mounts import DiskMount

# Each driver keeps an instance's inputs (config, devices, NICs...) in one JSON file.
SPEC_FILE = "corral.json"

__all__ = ["SPEC_FILE", "Capabilities", "ExecProcess", "InstanceDriver", "InstanceSpec",
           "DiskMount", "Nic", "SpecDir", "check_command", "check_name"]


@dataclass(frozen=True)
class Capabilities:
    """What a driver supports; the service refuses requests for missing features (400).

    ``live_limits`` are the ``limits.*`` keys a running instance takes without a restart;
    a change to another limit while it runs is refused rather than silently deferred.
    ``templates``: the instance's files lie in its volume as the host sees them, so the
    service renders image templates there at create and start (containers; a VM's disk
    is a block image).
    """

    instance_type: str
    live_limits: frozenset[str] = frozenset()
    exec: bool = False
    exec_pty: bool = False
    files: bool = False
    freeze: bool = False
    console: bool = False
    rename: bool = False
    templates: bool = False
    # Disk devices (other than the root) added to or removed from a running instance
    # take effect at once (disk_attach/disk_detach); otherwise such a change is refused.
    hotplug_disks: bool = False
    # Stateful snapshots: the running instance's memory saved with its disk
    # (save_memory/drop_memory/resume_memory); otherwise ``stateful`` is refused.
    stateful: bool = False


@dataclass
class InstanceSpec:
    """What a driver is given to define an instance.

    ``volume`` is the root volume's directory as the storage service made it; each
    driver knows its own layout in it (``rootfs/`` for containers, ``rootfs.img`` for VMs).
    """

    name: str
    config: dict[str, str]
    devices: dict[str, dict[str, str]]
    volume: Path
    nics: list[Nic] = field(default_factory=list)


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
    """Definition, lifecycle, state, exec, files and console of one kind of instance."""

    capabilities: ClassVar[Capabilities]

    # ---- definition --------------------------------------------------------------------

    @abc.abstractmethod
    def create(self, spec: InstanceSpec) -> dict[str, str]:
        """Define the instance; returns ``volatile.*`` keys to store (e.g. the idmap)."""

    @abc.abstractmethod
    def update(self, name: str, config: dict[str, str], devices: dict[str, dict[str, str]],
               nics: list[Nic] | None = None, disks: list[DiskMount] | None = None) -> None:
        """Store new expanded config/devices (and NICs, resolved extra disks, when given)
        for the next start."""

    @abc.abstractmethod
    def rename(self, name: str, new_name: str, volume: Path | None = None) -> None:
        """Move a stopped instance's definition to ``new_name`` (and its moved volume)."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove the definition (not the root volume); Conflict while running."""

    @abc.abstractmethod
    def names_on_host(self) -> list[str]:
        """Every name this driver has anything for, even half-made (for reconcile)."""

    @abc.abstractmethod
    def purge(self, name: str) -> None:
        """Force off and remove whatever exists for ``name`` (never the root volume);
        best effort, for creates that died half-way. No error when nothing exists."""

    # ---- lifecycle ---------------------------------------------------------------------

    @abc.abstractmethod
    def start(self, name: str) -> None: ...

    @abc.abstractmethod
    def stop(self, name: str, timeout: float = 30, force: bool = False) -> None: ...

    def restart(self, name: str, timeout: float = 30, force: bool = False) -> None:
        self.stop(name, timeout, force)
        self.start(name)

    @abc.abstractmethod
    def freeze(self, name: str) -> None: ...

    @abc.abstractmethod
    def unfreeze(self, name: str) -> None: ...

    @abc.abstractmethod
    def apply_limits_live(self, name: str, changed_config: dict[str, str]) -> None:
        """Validate and apply changed ``limits.*`` (all or none); stored for next start."""

    # ---- extra disks (hot-plug; see capabilities.hotplug_disks) ------------------------

    def disks_of(self, name: str) -> list[DiskMount]:
        """The extra disks the instance was last given (what a running one has)."""
        return []

    def disk_attach(self, name: str, disk: DiskMount) -> None:
        """Make ``disk`` appear in the running instance now (400 when it cannot)."""
        raise BadRequest("This instance's driver cannot hot-plug disks: stop it first")

    def disk_detach(self, name: str, disk: DiskMount) -> None:
        """Remove ``disk`` from the running instance now."""
        raise BadRequest("This instance's driver cannot hot-plug disks: stop it first")

    def disk_limits(self, name: str, disks: list[DiskMount]) -> None:
        """Apply the disks' I/O limits to the running instance now (all of them)."""
        if any(d.limited() for d in disks):
            raise BadRequest("This instance's driver cannot change disk limits live")

    # ---- memory state (stateful snapshots; see capabilities.stateful) -------------------

    def save_memory(self, name: str, tag: str) -> str:
        """Save the running instance's memory and device state, kept with its root disk
        under ``tag`` (the instance keeps running); returns an opaque description that
        :meth:`resume_memory` needs once the disk was copied back."""
        raise BadRequest("This instance's driver cannot save its memory state")

    def drop_memory(self, name: str, tag: str) -> None:
        """Forget the state saved under ``tag`` (from the disk and the hypervisor's
        metadata); nothing when there is none."""
        return None

    def resume_memory(self, name: str, tag: str, saved: str) -> None:
        """Start the stopped instance from the state saved under ``tag`` (its disk holds
        it again), then forget that state."""
        raise BadRequest("This instance's driver cannot restore a memory state")

    def disks_intent(self, name: str, disks: list[DiskMount] | None) -> None:
        """Journal the disks a hot-plug is about to give the running instance (None: the
        change is whole, recorded). A service that died in between finds the entry at
        its next start and puts the instance's disks back to its record's."""
        return None

    def disks_pending(self, name: str) -> list[DiskMount] | None:
        """The journaled disks of a hot-plug that never finished (None: none)."""
        return None

    # ---- status and state --------------------------------------------------------------

    @abc.abstractmethod
    def host_status(self, name: str) -> str:
        """Running/Stopped/Frozen/... as the host says, cheaply (no process spawned);
        "Stopped" when the host has nothing for ``name``."""

    @abc.abstractmethod
    def list_host(self) -> dict[str, str]:
        """{name: status} of every instance this driver finds on the host."""

    @abc.abstractmethod
    def state(self, name: str) -> dict:
        """LXD's ``/1.0/instances/<name>/state`` document."""

    def state_many(self, names: list[str]) -> dict[str, dict]:
        """States for a list (``recursion=2``): names gone meanwhile are left out."""
        out = {}
        for n in names:
            try:
                out[n] = self.state(n)
            except NotFound:
                continue
        return out

    # ---- exec, files ---------------------------------------------------------------------

    def exec_ready(self, name: str) -> None:
        """Raise at once (e.g. 503 "VM agent isn't currently running") when exec and files
        cannot work now although the instance runs; the service asks before an operation."""
        return None

    @abc.abstractmethod
    def exec_start(self, name: str, command: list[str], env: dict[str, str] | None = None,
                   cwd: str | None = None, uid: int = 0, gid: int = 0,
                   interactive: bool = False, width: int = 80,
                   height: int = 24) -> ExecProcess: ...

    @abc.abstractmethod
    def file_get(self, name: str, path: str) -> tuple[bytes | list[str], int, int, int, str]:
        """(content or directory entries, uid, gid, mode, type)."""

    @abc.abstractmethod
    def file_put(self, name: str, path: str, data: bytes, uid: int = 0, gid: int = 0,
                 mode: int | None = None, type: str = "file",
                 write: str = "overwrite", modify: frozenset[str] = frozenset()) -> None:
        """Write a file, directory or symlink. A new file gets ``uid``/``gid``/``mode``
        (0:0, 0644 by default); an existing file keeps its owner and mode except what
        ``modify`` names ("uid", "gid", "mode": LXD's ``X-LXD-modify-perm``)."""

    @abc.abstractmethod
    def file_delete(self, name: str, path: str) -> None: ...

    def root_owner(self, name: str) -> tuple[int, int]:
        """Host (uid, gid) owning the instance's root in its volume as the host sees it
        (non-zero only for a container whose files were shifted); templates use it."""
        return 0, 0

    # ---- console -----------------------------------------------------------------------

    @abc.abstractmethod
    def log_dir(self, name: str) -> Path:
        """The directory holding the instance's ``console.log`` (and ``lxc.log``)."""

    def console_log(self, name: str) -> bytes:
        try:
            return (self.log_dir(name) / "console.log").read_bytes()
        except FileNotFoundError:
            return b""

    @abc.abstractmethod
    def console_open(self, name: str) -> int:
        """A read/write fd on the running instance's console; the caller closes it."""


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
        check_host_name(name)
        return self.spec_root / name

    def _load(self, name: str) -> dict:
        try:
            return json.loads((self._dir(name) / SPEC_FILE).read_text())
        except FileNotFoundError:
            raise NotFound(f"Instance {name!r} not found in {self.spec_root}") from None

    def _make_dir(self, name: str) -> Path:
        """The instance's directory, root's only (0700, as LXD's log and state dirs): it
        holds the config, logs and exec output. FileExistsError when it is there."""
        d = self._dir(name)
        d.mkdir(mode=PRIVATE_DIR)
        d.chmod(PRIVATE_DIR)  # whatever the umask
        return d

    def _save(self, name: str, data: dict) -> None:
        write_private(self._dir(name) / SPEC_FILE, json.dumps(data, indent=1))

    def disks_intent(self, name: str, disks: list[DiskMount] | None) -> None:
        data = self._load(name)
        if disks is None:
            if data.pop("disks_pending", None) is None:
                return
        else:
            data["disks_pending"] = [d.model_dump() for d in disks]
        self._save(name, data)

    def disks_pending(self, name: str) -> list[DiskMount] | None:
        pending = self._load(name).get("disks_pending")
        return None if pending is None else [DiskMount.model_validate(d) for d in pending]


# State files are root's only (LXD: /var/lib/lxd 0711, logs and state 0700): configs hold
# environment variables, raw config and the id map; logs and exec output what ran.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a 0600 file (never readable by others, not even
    for a moment: the temporary file is created 0600); nothing when it holds ``text``.

    Why the check: a start rewrites the instance's spec and LXC config, most often with
    what they hold already, and on ext4 a rename over an existing file flushes the new
    file's data first (``auto_da_alloc``): 7 ms a rename measured on a loaded host, two
    per start. Reading the file back costs microseconds.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read(len(text) + 1) == text:
                return
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: write it
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        with os.fdopen(fd, "w", closefd=False) as fh:
            fh.write(text)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def make_private(root: Path) -> None:
    """Tighten what an older version left readable: each instance directory under
    ``root`` to 0700 and the files directly in it to 0600 (``root`` itself stays 0711:
    liblxc and libvirt traverse it)."""
    root.chmod(0o711)
    for d in root.iterdir():
        if not d.is_dir() or d.is_symlink():
            continue
        d.chmod(PRIVATE_DIR)
        for f in d.iterdir():
            if f.is_file() and not f.is_symlink():
                f.chmod(PRIVATE_FILE)
