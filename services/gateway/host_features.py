"""``kernel_features`` and ``lxc_features`` of ``GET /1.0``, probed on this host once.

The keys are LXD 5.0's (lxd/api_1.0.go, lxd/daemon.go). LXD probes most kernel features by
forking helpers that unshare namespaces or install seccomp filters; the gateway must not
do that in its own process, so it asks the kernel what it can without side effects:

- ``seccomp_listener``: ``seccomp(SECCOMP_GET_ACTION_AVAIL, SECCOMP_RET_USER_NOTIF)``;
- ``idmapped_mounts``: whether the ``mount_setattr`` system call exists (an EBADF answer
  to a call on fd -1, not ENOSYS);
- ``shiftfs``: listed in ``/proc/filesystems``;
- the rest from the kernel version that brought them (``netnsid_getifaddrs`` 4.20,
  ``uevent_injection`` 4.18, ``unpriv_fscaps`` 4.14, ``seccomp_listener_continue`` 5.5),
  which is what LXD's probes find on any kernel that has them.

``lxc_features`` asks liblxc itself (``lxc_has_api_extension``), as LXD does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import platform
import re

LXC_EXTENSIONS = ("mount_injection_file", "seccomp_notify", "network_ipvlan",
                  "network_l2proxy", "network_gateway_device_route", "network_phys_macvlan_mtu",
                  "network_veth_router", "cgroup2", "pidfd", "seccomp_allow_deny_syntax",
                  "devpts_fd", "seccomp_proxy_send_notify_fd", "idmapped_mounts_v2",
                  "core_scheduling")

_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (new syscall table)
_SECCOMP_GET_ACTION_AVAIL = 2
_SECCOMP_RET_USER_NOTIF = 0x7FC00000


def _kernel_at_least(major: int, minor: int, release: str | None = None) -> bool:
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (major, minor)


def _syscall(number: int, *args: object) -> int:
    """The raw result of a system call and its errno (0 on success)."""
    libc = ctypes.CDLL(None, use_errno=True)
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(number), *args)
    return 0 if ret == 0 else ctypes.get_errno()


def _seccomp_listener() -> bool:
    nr = _SYS_SECCOMP.get(platform.machine())
    if nr is None:
        return False
    action = ctypes.c_uint32(_SECCOMP_RET_USER_NOTIF)
    return _syscall(nr, ctypes.c_uint(_SECCOMP_GET_ACTION_AVAIL), ctypes.c_uint(0),
                    ctypes.byref(action)) == 0


def _idmapped_mounts() -> bool:
    err = _syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(-1), ctypes.c_char_p(b""),
                   ctypes.c_uint(0), ctypes.c_void_p(None), ctypes.c_size_t(0))
    return err != errno.ENOSYS


def _filesystem(name: str) -> bool:
    try:
        with open("/proc/filesystems") as fh:
            return any(line.split()[-1] == name for line in fh if line.strip())
    except OSError:
        return False


def _flag(value: bool) -> str:
    return "true" if value else "false"


@functools.cache
def kernel_features() -> dict[str, str]:
    listener = _seccomp_listener()
    return {
        "idmapped_mounts": _flag(_idmapped_mounts()),
        "netnsid_getifaddrs": _flag(_kernel_at_least(4, 20)),
        "seccomp_listener": _flag(listener),
        "seccomp_listener_continue": _flag(listener and _kernel_at_least(5, 5)),
        "shiftfs": _flag(_filesystem("shiftfs")),
        "uevent_injection": _flag(_kernel_at_least(4, 18)),
        "unpriv_fscaps": _flag(_kernel_at_least(4, 14)),
    }


@functools.cache
def lxc_features() -> dict[str, str]:
    """Empty when liblxc is not installed (LXD leaves the field out then)."""
    name = ctypes.util.find_library("lxc") or "liblxc.so.1"
    try:
        lib = ctypes.CDLL(name)
        has = lib.lxc_has_api_extension
    except (OSError, AttributeError):
        return {}
    has.argtypes = [ctypes.c_char_p]
    has.restype = ctypes.c_bool
    return {ext: _flag(bool(has(ext.encode()))) for ext in LXC_EXTENSIONS}
