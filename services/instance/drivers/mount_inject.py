"""Mount a host path into, or unmount it from, a RUNNING container's mount namespace.

Why a separate process: the new mount API must be used from a process whose mount
namespace can change (``setns(CLONE_NEWNS)`` is refused to a multi-threaded process, and
the instance service has many threads). So this file runs as its own short-lived
interpreter (``python3 mount_inject.py '<json>'``), stdlib only, and does, as LXD's
``forkmount`` does on new kernels:

1. ``open_tree(source, OPEN_TREE_CLONE)`` in the host's namespace: a detached copy of the
   bind mount, not yet visible anywhere;
2. ``mount_setattr`` on it: read-only and/or an id-mapped mount through the container's
   user namespace (``/proc/<pid>/ns/user``), so the container's root owns what host root
   owns (``shift``, custom volumes);
3. ``setns`` into the container's mount namespace (its root and cwd become the
   container's: paths, symlinks included, resolve inside the container only), create the
   mount point owned by the container's root, and ``move_mount`` the detached tree there.

At start the same runs as LXC's ``start-host`` hook (``--hook <file>``): after the
container is set up, before its init runs, so init finds its disks in place (LXC's own
``lxc.mount.entry`` cannot be used: it mounts as the container's root inside its user
namespace, which cannot reach a source below a directory closed to others).

Unmounting is ``setns`` + ``umount2(MNT_DETACH)``. Every failure exits non-zero with one
line on stderr; nothing is left half-done (a detached tree vanishes with its fd).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys

# x86_64 / generic syscall numbers (identical on every arch for these new calls).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x00100000
CLONE_NEWNS = 0x00020000
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def open_tree(source: str, recursive: bool) -> int:
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, source.encode(), flags),
                  f"open_tree({source})")


def mount_setattr(fd: int, attr_set: int, userns_fd: int = 0, recursive: bool = False) -> None:
    attr = MountAttr(attr_set=attr_set, attr_clr=0, propagation=0, userns_fd=userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(_libc.syscall(SYS_MOUNT_SETATTR, fd, b"", flags, ctypes.byref(attr),
                         ctypes.sizeof(attr)), "mount_setattr")


def setns_mnt(pid: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNS), "setns(mnt)")
    finally:
        os.close(fd)


def _make_target(path: str, is_dir: bool, uid: int, gid: int) -> None:
    """Create the mount point (and missing parents) as the container's root would: with
    its host ids as file system ids (an id-mapped root refuses inodes made by an id it
    does not map: EOVERFLOW), then back to ours."""
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    try:
        _make_parts(path, is_dir)
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
    if os.path.isdir(path) != is_dir:  # a file cannot cover a directory, nor the reverse
        what = ("a directory", "a file") if is_dir else ("a file", "a directory")
        raise OSError(errno.ENOTDIR if is_dir else errno.EISDIR,
                      f"the source is {what[0]} but {path} in the instance is not "
                      f"({'it is ' + what[1]})")


def _make_parts(path: str, is_dir: bool) -> None:
    parts = [p for p in path.split("/") if p]
    cur = "/"
    for i, part in enumerate(parts):
        cur = os.path.join(cur, part)
        last = i == len(parts) - 1
        try:
            if last and not is_dir:
                fd = os.open(cur, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                os.close(fd)
            else:
                os.mkdir(cur, 0o755)
        except FileExistsError:
            continue


def attach(req: dict) -> None:
    attach_many(req["pid"], [req])


def attach_many(pid: int, reqs: list[dict]) -> None:
    """Every source is opened (and id-mapped) in our namespace first, then all of them
    are moved into the container's at once: after ``setns`` host paths no longer
    resolve."""
    trees = []
    userns = -1
    for req in reqs:
        tree = open_tree(req["source"], bool(req.get("recursive")))
        attrs = MOUNT_ATTR_RDONLY if req.get("readonly") else 0
        if req.get("idmap"):
            if userns < 0:
                userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            attrs |= MOUNT_ATTR_IDMAP
        if attrs:
            try:
                mount_setattr(tree, attrs, max(userns, 0), bool(req.get("recursive")))
            except OSError as exc:
                if exc.errno == errno.EINVAL and attrs & MOUNT_ATTR_IDMAP:
                    raise OSError(exc.errno, f"the file system of {req['source']} cannot "
                                  "be id-mapped (needed for shift=true and custom volumes "
                                  "in unprivileged containers)") from None
                raise
        trees.append((tree, req))
    setns_mnt(pid)
    for tree, req in trees:
        target = req["path"]
        _make_target(target, bool(req.get("is_dir", True)), req.get("uid", 0),
                     req.get("gid", 0))
        _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(),
                             MOVE_MOUNT_F_EMPTY_PATH), f"move_mount(-> {target})")


def detach(req: dict) -> None:
    setns_mnt(req["pid"])
    if _libc.umount2(req["path"].encode(), MNT_DETACH) < 0:
        e = ctypes.get_errno()
        if e != errno.EINVAL or req.get("strict"):  # EINVAL: nothing mounted there
            raise OSError(e, f"umount({req['path']}): {os.strerror(e)}")


def hook(path: str) -> None:
    """As LXC's ``start-host`` hook: the container is set up, its init not yet started
    (``LXC_PID``); mount every disk listed in ``path`` so init finds them in place. The
    reason of a failure goes to ``path`` + ".err" too (LXC logs hook output only at
    levels Corral does not keep)."""
    with open(path) as fh:
        reqs = json.loads(fh.read())
    # Opened now: after setns, host paths resolve inside the container.
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if reqs:
            attach_many(int(os.environ["LXC_PID"]), reqs)
    except (OSError, KeyError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        fd = os.open(os.path.basename(path) + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                     | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        with os.fdopen(fd, "w") as fh:
            fh.write(why)
        raise


def main() -> int:
    try:
        if sys.argv[1] == "--hook":
            hook(sys.argv[2])
            return 0
        req = json.loads(sys.argv[1])
        (attach if req["op"] == "attach" else detach)(req)
    except OSError as exc:
        print(exc.strerror or str(exc), file=sys.stderr)
        return 1
    except (KeyError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
