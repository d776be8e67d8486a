"""Devices into and out of a RUNNING container: NICs, unix-char/unix-block nodes.

Why outside ``lxc.py``: that module is the container's definition and lifecycle; these
are changes to a live container's namespaces that the definition only records (the
instance service stores the new NIC list in the spec through ``update`` so the next start
renders it as ``lxc.net.N`` keys).

NIC: a veth pair is made on the host (host end named as the NIC's ``host_name``, joined
to its bridge and up; the peer carries the MAC and MTU), the peer is moved into the
network namespace of the container's init and renamed there. Unplug deletes the host
end, which takes the peer with it. A failure half-way deletes what was made.

unix-char/unix-block: the node is made with mknod on the host, in the instance's
directory, owned by the mapped uid/gid, and bind-mounted at its path in the container
(through :mod:`.disk_mounts`, as a file disk); the cgroup v1 ``devices.allow`` rule is
added live (this host runs the devices controller on cgroup v1; on a pure cgroup v2 host
LXC writes an eBPF device program at start only, and python-lxc's set_cgroup_item cannot
change it, so a live allow is refused there with the reason).
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.errors import BadRequest, Conflict, Internal, NotFound

from ..proxy_fs import open_container_root, open_in_root
from . import disk_mounts
from .base import Nic
from .disk_mounts import DiskMount


def IPRoute():  # noqa: N802 - pyroute2's class, imported when a NIC is hot-plugged
    """pyroute2 costs the instance service ~4 MiB (it pulls unittest and argparse in):
    only a hot-plug needs it, so it is imported then."""
    from pyroute2 import IPRoute as _IPRoute

    return _IPRoute()


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _peer_name(host_name: str) -> str:
    """A host-unique temporary name for the guest end until it is in the container."""
    return ("hp" + host_name)[:15]


@contextmanager
def _netns(pid: int) -> Iterator[None]:
    """This thread in the network namespace of ``pid`` (setns is per thread for
    CLONE_NEWNET), and back to its own afterwards, whatever happened: a netlink socket
    opened inside stays bound to that namespace. No process is spawned for it."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise Internal(f"Cannot enter the network namespace of pid {pid}: "
                           f"{os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # never leave a pool thread moved
                os.abort()
    finally:
        os.close(target)
        os.close(own)


def container_links(pid: int) -> set[str]:
    with _netns(pid), IPRoute() as ipr:
        return {lk.get_attr("IFLA_IFNAME") for lk in ipr.get_links()}


def _rename_up(pid: int, old: str, new: str) -> None:
    with _netns(pid), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=old)
        if not found:
            raise Internal(f"The new interface {old!r} did not reach the container")
        ipr.link("set", index=found[0], ifname=new)
        ipr.link("set", index=found[0], state="up")


def nic_attach(pid: int, nic: Nic) -> None:
    """Make ``nic`` in the container whose init is ``pid``: all of it or nothing."""
    if nic.nictype != "bridged":
        raise BadRequest(f"Hot-plugging a {nic.nictype} NIC into a running container is not "
                         "supported yet: stop the instance first")
    if not nic.host_name:
        raise Internal("A bridged NIC without a host-side name cannot be hot-plugged")
    if nic.name in container_links(pid):
        raise Conflict(f"The container already has an interface named {nic.name!r}; set "
                       "the device's 'name' to another one")
    peer = _peer_name(nic.host_name)
    with IPRoute() as ipr:
        bridge = ipr.link_lookup(ifname=nic.bridge or nic.parent)
        if not bridge:
            raise NotFound(f"Bridge {nic.bridge or nic.parent!r} does not exist on the host")
        if ipr.link_lookup(ifname=nic.host_name):
            raise Conflict(f"Host interface {nic.host_name!r} exists already")
        peer_attrs: dict = {"ifname": peer, "address": nic.hwaddr}
        if nic.mtu:
            peer_attrs["mtu"] = nic.mtu
        ipr.link("add", ifname=nic.host_name, kind="veth", peer=peer_attrs)
        try:
            host_idx = ipr.link_lookup(ifname=nic.host_name)[0]
            extra = {"mtu": nic.mtu} if nic.mtu else {}
            ipr.link("set", index=host_idx, master=bridge[0], state="up", **extra)
            peer_idx = ipr.link_lookup(ifname=peer)[0]
            ipr.link("set", index=peer_idx, net_ns_pid=pid)
            _rename_up(pid, peer, nic.name)
        except BaseException:
            nic_detach(nic.host_name)
            raise


def nic_detach(host_name: str) -> None:
    """Delete the host end of a hot-plugged (or started) veth; its peer goes with it."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=host_name)
        if found:
            ipr.link("del", index=found[0])


# ---- unix-char / unix-block -------------------------------------------------------------

def _devices_cgroup_v1() -> bool:
    return any(len(f := line.split()) > 3 and f[2] == "cgroup" and
               "devices" in f[3].split(",")
               for line in Path("/proc/self/mounts").read_text().splitlines())


def _rule(kind: str, major: int, minor: int) -> str:
    return f"{'c' if kind == 'unix-char' else 'b'} {major}:{minor} rwm"


def host_node(devices_dir: Path, name: str) -> Path:
    return devices_dir / f"unix.{name}"


def unix_attach(container, pid: int, devices_dir: Path, name: str, path: str, kind: str,
                major: int, minor: int, uid: int, gid: int, mode: int) -> None:
    """Make the node on the host (``devices_dir``, ids already mapped to host ids), allow
    it in the devices cgroup and bind-mount it at ``path`` in the running container (a
    node made inside would be useless: the container's /dev is mounted in its user
    namespace, hence nodev; LXD mounts host-made nodes too). On failure nothing stays."""
    if not _devices_cgroup_v1():
        raise BadRequest("Hot-plugging unix devices needs the cgroup v1 devices controller; "
                         "on cgroup v2 LXC sets device rules at start only: stop the "
                         "instance first")
    devices_dir.mkdir(mode=0o711, exist_ok=True)
    node = host_node(devices_dir, name)
    node.unlink(missing_ok=True)
    os.mknod(node, mode | (stat.S_IFCHR if kind == "unix-char" else stat.S_IFBLK),
             os.makedev(major, minor))
    allowed = False
    try:
        os.chown(node, uid, gid)
        os.chmod(node, mode)
        if not container.set_cgroup_item("devices.allow", _rule(kind, major, minor)):
            raise Internal(f"The devices cgroup refused {_rule(kind, major, minor)}")
        allowed = True
        disk_mounts.inject(pid, DiskMount(name=name, source=str(node), path=path,
                                          kind="file"), False, (uid, gid))
    except BaseException:
        if allowed:
            container.set_cgroup_item("devices.deny", _rule(kind, major, minor))
        node.unlink(missing_ok=True)
        raise


def unix_detach(container, pid: int, devices_dir: Path, name: str, path: str, kind: str,
                major: int, minor: int) -> None:
    """Unmount the node, deny the device again, remove the host node (gone: fine)."""
    disk_mounts.eject(pid, path)
    _remove_mount_point(pid, path)
    if _devices_cgroup_v1():
        container.set_cgroup_item("devices.deny", _rule(kind, major, minor))
    host_node(devices_dir, name).unlink(missing_ok=True)


def _remove_mount_point(pid: int, path: str) -> None:
    """The empty file the bind mount was made on, resolved inside the container's root
    (a link made in the container must not lead here to a host file)."""
    parent, base = os.path.split(os.path.normpath("/" + path))
    try:
        root = open_container_root(pid)
        try:
            dfd = open_in_root(root, parent, os.O_PATH | os.O_DIRECTORY)
        finally:
            os.close(root)
        try:
            st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(base, dir_fd=dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
