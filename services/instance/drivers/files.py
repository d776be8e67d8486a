"""File access inside a container's root from the host, without escaping that root.

Why this shape: the container owns its files and may plant symlinks (``/etc/x ->
/../../..``). We resolve every component ourselves, treating absolute link targets as
relative to the container root and refusing any ``..`` above it, then open the result
component by component with ``O_NOFOLLOW`` so a link swapped in after resolution fails
instead of leading out. Ids in the API are container ids; :class:`FsView` says how they
map to the ids seen through the path we use (shifted, idmapped mount, or identity).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from shared.errors import BadRequest, Conflict, Forbidden, NotFound

MAX_LINKS = 40
_libc = ctypes.CDLL(None, use_errno=True)

# Kernel pseudo-filesystems by their statfs magic (linux/magic.h). Corral reaches a
# running container's files as the host's root through /proc/<pid>/root, so a write
# there would be the host's: /proc/sysrq-trigger, /sys/..., a cgroup's files. The
# container's own root may not do that (LXD runs its file helper inside the container's
# user namespace); refusing these file systems keeps Corral from doing it for it.
KERNEL_FS = {0x9FA0: "proc", 0x62656572: "sysfs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2",
             0x64626720: "debugfs", 0x74726163: "tracefs", 0x73636673: "securityfs",
             0x62656570: "configfs", 0xCAFE4A11: "bpf", 0xDE5E81E4: "efivarfs",
             0x6165676C: "pstore", 0x42494E4D: "binfmt_misc", 0x65735543: "fusectl",
             0xF97CFF8C: "selinuxfs", 0x43415D53: "smackfs", 0x19800202: "mqueue"}


@dataclass
class FsView:
    """A root directory plus how container ids appear through it.

    ``to_host``/``from_host`` translate (uid, gid) pairs; ``create_as`` is set when the
    root is seen through an idmapped mount, where host root itself is unmapped and new
    files must be created with the fsuid/fsgid of the container's root.
    """

    root: Path
    to_host: Callable[[int, int], tuple[int, int]] = lambda u, g: (u, g)
    from_host: Callable[[int, int], tuple[int, int]] = lambda u, g: (u, g)
    create_as: tuple[int, int] | None = None


def fs_type(fd: int) -> int:
    """The statfs magic of the file system ``fd`` lives on (``os`` has no fstatfs)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86-64
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def refuse_kernel_fs(fd: int, path: str) -> None:
    """400 when ``fd`` is on a kernel pseudo-filesystem (see :data:`KERNEL_FS`)."""
    kind = KERNEL_FS.get(fs_type(fd))
    if kind is not None:
        raise BadRequest(f"{path!r} is on a kernel file system ({kind}): Corral would read "
                         "or write it as the host, so it is refused; use exec to reach it "
                         "as the instance does")


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve_parts(root: Path, path: str, follow_last: bool = True) -> list[str]:
    """Components of ``path`` below ``root`` with symlinks resolved inside the root."""
    if "\0" in path:
        raise BadRequest("Invalid path: it contains a NUL byte")
    todo, done, links = deque(_split(path)), [], 0
    while todo:
        part = todo.popleft()
        if part == "..":
            if not done:
                raise Forbidden(f"Path {path!r} leads outside the instance's root")
            done.pop()
            continue
        here = root.joinpath(*done, part)
        if (todo or follow_last) and here.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise BadRequest(f"Path {path!r}: too many levels of symbolic links")
            try:
                target = os.readlink(here)
            except OSError:  # a /proc "magic" link: from the host it names the reader
                raise BadRequest(f"Path {path!r}: /{'/'.join([*done, part])} is a link only "
                                 "the instance's own processes can follow") from None
            if target.startswith("/"):
                done = []
            todo.extendleft(reversed(_split(target)))
            continue
        done.append(part)
    return done


def resolve_in_root(root: Path, path: str, follow_last: bool = True) -> Path:
    """The host path for ``path`` in the container rooted at ``root``; never outside it."""
    return root.joinpath(*resolve_parts(root, path, follow_last))


@contextlib.contextmanager
def _open_parent(root: Path, parts: list[str], create_dirs: bool = False) -> Iterator[int]:
    """An O_PATH fd of the directory holding ``parts[-1]``, walked with O_NOFOLLOW."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for comp in parts[:-1]:
            try:
                nfd = os.open(comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            except FileNotFoundError:
                raise NotFound(f"Parent directory of /{'/'.join(parts)} does not exist") from None
            except (NotADirectoryError, OSError) as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise BadRequest(f"/{'/'.join(parts)}: {comp!r} is not a directory") from None
                raise
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _fsids(view: FsView) -> Iterator[None]:
    """Create as the container's root when the root is an idmapped mount (per thread)."""
    if view.create_as is None:
        yield
        return
    uid, gid = view.create_as
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    try:
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)


def file_get(view: FsView, path: str) -> tuple[bytes | list[str], int, int, int, str]:
    """(content or directory listing, uid, gid, mode bits, type) of a path."""
    parts = resolve_parts(view.root, path, follow_last=False)
    if not parts:
        return _read_dir(view, os.open(view.root, os.O_RDONLY | os.O_DIRECTORY))
    with _open_parent(view.root, parts) as dfd:
        refuse_kernel_fs(dfd, path)
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            raise NotFound(f"File {path!r} does not exist in the instance") from None
        uid, gid = view.from_host(st.st_uid, st.st_gid)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dfd).encode()
            return target, uid, gid, stat.S_IMODE(st.st_mode), "symlink"
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            return _read_dir(view, fd)
        refuse_special(path, st.st_mode)
        fd = open_regular(name, os.O_RDONLY, dfd, path)
        with os.fdopen(fd, "rb") as fh:
            return fh.read(), uid, gid, stat.S_IMODE(st.st_mode), "file"


_SPECIAL = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def refuse_special(path: str, mode: int) -> None:
    """400 for a FIFO, socket or device node: as LXD, only regular files, directories and
    symlinks are transferred. Why it matters: opening a FIFO blocks until the other end
    opens, so a container could hold a host worker thread forever; a device may act on
    open (a tape rewinds)."""
    for test, what in _SPECIAL:
        if test(mode):
            raise BadRequest(f"{path!r} is {what}: only regular files, directories and "
                             "symlinks can be read or written")


def open_regular(name: str, flags: int, dfd: int, path: str, mode: int = 0o600) -> int:
    """Open ``name`` (under ``dfd``) only if it is a regular file, never blocking.

    O_NONBLOCK makes an open of a FIFO that was swapped in after our stat fail (ENXIO) or
    return at once instead of waiting for a peer; the fstat afterwards refuses whatever
    is not a regular file. On a regular file O_NONBLOCK changes nothing.
    """
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode,
                     dir_fd=dfd)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENODEV):
            raise BadRequest(f"{path!r} is not a regular file: only regular files, "
                             "directories and symlinks can be read or written") from None
        raise
    try:
        refuse_special(path, os.fstat(fd).st_mode)
        refuse_kernel_fs(fd, path)  # a file bind-mounted from one, e.g. over /proc/...
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_dir(view: FsView, fd: int) -> tuple[list[str], int, int, int, str]:
    try:
        st = os.fstat(fd)
        uid, gid = view.from_host(st.st_uid, st.st_gid)
        return sorted(os.listdir(fd)), uid, gid, stat.S_IMODE(st.st_mode), "directory"
    finally:
        os.close(fd)


PERMS = frozenset({"uid", "gid", "mode"})


def file_put(view: FsView, path: str, data: bytes, uid: int = -1, gid: int = -1,
             mode: int | None = None, type: str = "file", write: str = "overwrite", *,
             modify: frozenset[str] = frozenset()) -> None:
    """Create or replace a file, directory or symlink (LXD's POST /files).

    ``uid``/``gid`` below 0 and ``mode`` None mean "not given". A new file gets what is
    given, else 0:0 and 0644. An existing file keeps its owner and mode, as in LXD 5.0
    (its client always sends the local file's owner and mode, so applying them would
    make every pushed-over file root's); only what ``modify`` names (LXD's
    ``X-LXD-modify-perm``: "uid", "gid", "mode") is changed on it.
    """
    if type not in ("file", "directory", "symlink"):
        raise BadRequest(f"Invalid file type {type!r}: use file, directory or symlink")
    if write not in ("overwrite", "append"):
        raise BadRequest(f"Invalid write mode {write!r}: use overwrite or append")
    if modify - PERMS:
        raise BadRequest(f"Invalid permission to modify {sorted(modify - PERMS)[0]!r}: "
                         "use uid, gid or mode")
    parts = resolve_parts(view.root, path, follow_last=(type == "file"))
    if not parts:
        raise BadRequest("Cannot write to the instance's root directory itself")
    with _open_parent(view.root, parts) as dfd:
        refuse_kernel_fs(dfd, path)
        name = parts[-1]
        if type == "file":
            _put_file(view, dfd, name, data, uid, gid, mode, write, modify)
            return
        huid, hgid = view.to_host(max(uid, 0), max(gid, 0))
        if type == "directory":
            _put_dir(view, dfd, name, huid, hgid, 0o755 if mode is None else mode)
        else:
            _put_symlink(view, dfd, name, data.decode(), huid, hgid)


def _put_dir(view: FsView, dfd: int, name: str, uid: int, gid: int, mode: int) -> None:
    try:
        with _fsids(view):
            os.mkdir(name, mode, dir_fd=dfd)
    except FileExistsError:
        if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            raise Conflict(f"{name!r} exists and is not a directory") from None
    os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _put_symlink(view: FsView, dfd: int, name: str, target: str, uid: int, gid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            raise Conflict(f"{name!r} exists and is a directory")
        os.unlink(name, dir_fd=dfd)
    with _fsids(view):
        os.symlink(target, name, dir_fd=dfd)
    os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)


def _put_file(view: FsView, dfd: int, name: str, data: bytes, uid: int, gid: int,
              mode: int | None, write: str, modify: frozenset[str]) -> None:
    flags = os.O_WRONLY
    flags |= os.O_APPEND if write == "append" else os.O_TRUNC
    created = False
    with contextlib.suppress(FileNotFoundError):  # refuse before any open (see refuse_special)
        refuse_special(name, os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    try:
        fd = open_regular(name, flags, dfd, name)
    except FileNotFoundError:
        with _fsids(view):
            fd = open_regular(name, flags | os.O_CREAT | os.O_EXCL, dfd, name)
        created = True
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):
            raise Conflict(f"{name!r} exists and is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Conflict(f"{name!r} exists and is not a regular file")
        view_data = memoryview(data)
        while view_data:
            view_data = view_data[os.write(fd, view_data):]
        if created:
            os.fchown(fd, *view.to_host(max(uid, 0), max(gid, 0)))
            os.fchmod(fd, 0o644 if mode is None else mode)
            return
        if modify & {"uid", "gid"}:
            cur_uid, cur_gid = view.from_host(st.st_uid, st.st_gid)
            os.fchown(fd, *view.to_host(uid if "uid" in modify and uid >= 0 else cur_uid,
                                        gid if "gid" in modify and gid >= 0 else cur_gid))
        if "mode" in modify and mode is not None:
            os.fchmod(fd, mode)
        elif st.st_mode & 0o6000:  # writing dropped setuid/setgid: as they were
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)


def file_delete(view: FsView, path: str) -> None:
    """Remove a file, symlink or empty directory (the link itself, never its target)."""
    parts = resolve_parts(view.root, path, follow_last=False)
    if not parts:
        raise BadRequest("Cannot delete the instance's root directory")
    with _open_parent(view.root, parts) as dfd:
        refuse_kernel_fs(dfd, path)
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            raise NotFound(f"File {path!r} does not exist in the instance") from None
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise Conflict(f"Directory {path!r} is not empty") from None
            raise
