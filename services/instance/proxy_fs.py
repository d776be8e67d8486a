"""Paths inside a container, opened from the host without leaving it.

Why: the instance service and the proxy forwarders run as host root; a walk through
``/proc/<pid>/root`` follows the container's symbolic links as the host sees them, so an
absolute link (or ``..``) made inside the container leads to a host file. openat2 with
RESOLVE_IN_ROOT resolves as if the container's root were ``/``. Stdlib only: the
forwarder imports it at every start.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


SYS_OPENAT2 = 437  # the same on x86_64 and aarch64
RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x02, 0x10


def open_in_root(root: int, path: str, flags: int) -> int:
    """Open ``path`` as if ``root`` were ``/`` (openat2 RESOLVE_IN_ROOT): a symbolic link
    in the container, absolute or with .., cannot lead the forwarder (host root) to a
    host file or socket, as a walk through /proc/<pid>/root would."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    rel = path.lstrip("/") or "."
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(root),
                       ctypes.c_char_p(rel.encode()), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{path}: {os.strerror(err)}")
    return fd


def open_container_root(pid: int) -> int:
    """An fd of the container's root (opened as root: it needs the ptrace right)."""
    return os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
