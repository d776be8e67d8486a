"""Extra disks as drivers get them: neutral descriptions, LXC mount entries, hot-plug.

Why neutral: the instance service resolves a disk device (a host path, or a custom volume's
path asked of the storage service) into a :class:`DiskMount`; each driver renders its own
form (``lxc.mount.entry`` lines for LXC, a libvirt ``<disk>`` for QEMU), as NICs arrive as
:class:`Nic`. Hot-plug into a running container goes through :mod:`mount_inject`, run as
its own process (see there why), and at start as LXC's ``start-host`` hook, before the
container's init runs (LXC's own ``lxc.mount.entry`` mounts run as the container's root in
its user namespace and cannot reach a source below a directory closed to others).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from shared.errors import BadRequest, Internal

INJECT = Path(__file__).with_name("mount_inject.py")
INJECT_TIMEOUT = 20.0


class DiskMount(BaseModel):
    """One non-root disk device, resolved on this host.

    ``source`` is the host path (a directory, a file, or a block volume's image file);
    ``kind`` says which. ``idmap``: mount it id-mapped into an unprivileged container, so
    host uid 0 is the container's root (``shift=true``, and custom volumes, whose files
    are stored unshifted). Limits are bytes or operations per second (0: none).
    """

    name: str
    source: str
    path: str = ""
    kind: Literal["dir", "file", "block"] = "dir"
    readonly: bool = False
    recursive: bool = False
    optional: bool = False
    idmap: bool = False
    volume: str = ""  # "pool/name" of a custom volume ("" for a host path)
    read_bps: int = 0
    write_bps: int = 0
    read_iops: int = 0
    write_iops: int = 0

    def limited(self) -> bool:
        return bool(self.read_bps or self.write_bps or self.read_iops or self.write_iops)


def _run_inject(req: dict) -> None:
    try:
        r = subprocess.run([sys.executable, "-I", str(INJECT), json.dumps(req)],
                           capture_output=True, text=True, timeout=INJECT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Internal(f"Mounting into the container timed out ({req['path']})") from None
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        verb = "mount" if req["op"] == "attach" else "unmount"
        raise BadRequest(f"Failed to {verb} {req['path']!r} in the running container: "
                         f"{why}")


def _request(m: DiskMount, idmapped: bool, root_ids: tuple[int, int]) -> dict:
    return {"source": m.source, "path": m.path, "readonly": m.readonly,
            "recursive": m.recursive, "idmap": m.idmap and idmapped,
            "is_dir": m.kind == "dir", "uid": root_ids[0], "gid": root_ids[1]}


def inject(pid: int, m: DiskMount, idmapped: bool, root_ids: tuple[int, int]) -> None:
    """Mount ``m`` into the running container whose init is ``pid`` (400 when the kernel
    or the container refuses; nothing is mounted then)."""
    _run_inject({"op": "attach", "pid": pid, **_request(m, idmapped, root_ids)})


def hook_command(listing: Path) -> str:
    """The ``lxc.hook.start-host`` command mounting the disks listed in ``listing``."""
    return f"{sys.executable} -I {INJECT} --hook {listing}"


def write_hook_listing(listing: Path, mounts: list[DiskMount], idmapped: bool,
                       root_ids: tuple[int, int]) -> None:
    """What the start hook mounts (root's only, 0600 from its creation: it names host
    paths)."""
    Path(str(listing) + ".err").unlink(missing_ok=True)
    tmp = listing.with_name(listing.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps([_request(m, idmapped, root_ids) for m in mounts]))
    os.replace(tmp, listing)


def hook_error(listing: Path) -> str:
    try:
        return Path(str(listing) + ".err").read_text().strip()
    except OSError:
        return ""


def eject(pid: int, path: str) -> None:
    """Unmount ``path`` in the running container (nothing mounted there: no error)."""
    _run_inject({"op": "detach", "pid": pid, "path": path})


# ---- block I/O limits ---------------------------------------------------------------------


def block_device_of(path: str) -> tuple[int, int]:
    """(major, minor) of the whole block device holding ``path``'s filesystem (a
    partition counts as its disk: throttling works on whole devices). 400 when there is
    none (tmpfs, overlay...), which no I/O limit can apply to."""
    if stat.S_ISBLK(os.stat(path).st_mode):
        dev = os.stat(path).st_rdev
    else:
        dev = os.stat(path).st_dev
        if os.major(dev) == 0:  # btrfs and others report an anonymous device: ask mounts
            dev = _mount_source_dev(path)
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not sys_dev.exists():
        raise BadRequest(f"{path} is not on a block device: disk limits cannot apply to it")
    if (sys_dev / "partition").exists():
        parent = (sys_dev.resolve().parent / "dev").read_text().strip()
        major, minor = parent.split(":")
        return int(major), int(minor)
    return os.major(dev), os.minor(dev)


def _mount_source_dev(path: str) -> int:
    """The block device named as the source of the mount holding ``path``."""
    real = os.path.realpath(path)
    best, source = "", ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mnt = left.split()[4].encode().decode("unicode_escape")
        rfields = right.split()
        if len(rfields) < 2:
            continue
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, source = mnt, rfields[1]
    if source.startswith("/dev/"):
        try:
            st = os.stat(source)
        except OSError:
            st = None
        if st is not None and stat.S_ISBLK(st.st_mode):
            return st.st_rdev
    raise BadRequest(f"{path} is not on a block device: disk limits cannot apply to it")


def blkio_v1_items(mounts: list[DiskMount]) -> list[tuple[str, str]]:
    """``blkio.throttle.*_device`` items ("MAJ:MIN VALUE") for cgroup v1; several disks
    on one device: the smallest limit wins (one cgroup file per device and direction).

    As LXD on a v1 host: the throttle is on the whole device the source lives on, and v1
    cannot charge page-cache writeback to the container, so buffered writes escape
    ``limits.write`` (reads, direct and synchronous writes do not); v2's io.max does."""
    per: dict[tuple[str, str], int] = {}
    for m in mounts:
        if not m.limited():
            continue
        major, minor = block_device_of(m.source)
        dev = f"{major}:{minor}"
        for key, val in (("read_bps_device", m.read_bps), ("write_bps_device", m.write_bps),
                         ("read_iops_device", m.read_iops),
                         ("write_iops_device", m.write_iops)):
            if val:
                k = (f"blkio.throttle.{key}", dev)
                per[k] = min(per.get(k, val), val)
    return [(k, f"{dev} {v}") for (k, dev), v in sorted(per.items())]


def io_v2_items(mounts: list[DiskMount]) -> list[tuple[str, str]]:
    """``io.max`` lines ("MAJ:MIN rbps=.. wbps=..") for cgroup v2."""
    per: dict[str, dict[str, int]] = {}
    for m in mounts:
        if not m.limited():
            continue
        major, minor = block_device_of(m.source)
        d = per.setdefault(f"{major}:{minor}", {})
        for key, val in (("rbps", m.read_bps), ("wbps", m.write_bps),
                         ("riops", m.read_iops), ("wiops", m.write_iops)):
            if val:
                d[key] = min(d.get(key, val), val)
    return [("io.max", f"{dev} " + " ".join(f"{k}={v}" for k, v in sorted(d.items())))
            for dev, d in sorted(per.items())]
