"""Small helpers shared by the storage drivers: names, sizes, commands, mounts.

Kept apart from ``base.py`` so the driver interface stays readable.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from shared.errors import BadRequest, CorralError, Internal

MAX_NAME = 64

# LXD's byte units (shared/units): decimal kB..EB, binary KiB..EiB.
_UNITS = {
    "": 1, "B": 1,
    "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
    "EB": 10**18,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50, "EiB": 2**60,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def validate_name(what: str, name: str) -> str:
    """Reject names that would escape the layout or confuse tools (LXD's rules).

    The name becomes a path component, so '/', '.', '..' and control characters are out;
    whitespace is out because LXD forbids it too; a leading '-' would read as a CLI flag.
    """
    if not isinstance(name, str) or not name:
        raise BadRequest(f"Invalid {what} name {name!r}: the name must not be empty")
    if len(name) > MAX_NAME:
        raise BadRequest(f"Invalid {what} name {name!r}: at most {MAX_NAME} characters allowed")
    if name in (".", ".."):
        raise BadRequest(f"Invalid {what} name {name!r}: '.' and '..' are reserved")
    if "/" in name:
        raise BadRequest(f"Invalid {what} name {name!r}: names may not contain '/'")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadRequest(f"Invalid {what} name {name!r}: names may not contain whitespace "
                         "or control characters")
    if name.startswith("-"):
        raise BadRequest(f"Invalid {what} name {name!r}: names may not start with '-'")
    return name


def parse_size(value: str, key: str = "size") -> int:
    """Parse an LXD byte size ("500MB", "2GiB", "1073741824") into bytes."""
    m = _SIZE_RE.match(str(value))
    if not m or m.group(2) not in _UNITS:
        raise BadRequest(f"Invalid value {value!r} for {key!r}: expected a size such as "
                         "'500MiB', '2GiB' or '1GB' (units B, kB, MB, GB, TB, KiB, MiB, "
                         "GiB, TiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def run(*args: str | Path, error: type[CorralError] = Internal, what: str = "") -> str:
    """Run a command, return stdout; on failure raise ``error`` carrying its stderr.

    Never goes through a shell, so names and paths are passed verbatim.
    """
    argv = [str(a) for a in args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise Internal(f"Command {argv[0]!r} is not installed: {exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip() or f"exit code {proc.returncode}"
        prefix = f"{what}: " if what else ""
        raise error(f"{prefix}'{' '.join(argv)}' failed: {detail}")
    return proc.stdout


def _unescape(field: str) -> str:
    """Undo the octal escaping of spaces/tabs/newlines/backslashes in /proc mount tables."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_mounted(path: Path) -> bool:
    """True when ``path`` is a mount point in our mount namespace.

    Reads /proc/self/mountinfo rather than comparing st_dev, which fails for bind mounts
    of a directory from the same filesystem.
    """
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        return any(_unescape(line.split()[4]) == target for line in fh)


def loop_devices_for(file: Path) -> list[str]:
    """Loop devices backed by ``file`` (``losetup -j``), e.g. ["/dev/loop3"]."""
    out = run("losetup", "-j", file, what="list loop devices")
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Callable[..., int]:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def renameat2(src: Path | str, dst: Path | str, flags: int) -> None:
    """``renameat2(2)``: RENAME_EXCHANGE swaps two paths in one step (neither is ever
    missing, which a restore needs: a crash leaves either the old or the new volume in
    place, never none); RENAME_NOREPLACE fails with EEXIST instead of replacing an empty
    directory (``os.rename`` would). Both must be on the same filesystem."""
    if _renameat2()(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _vanished(line: str) -> bool:
    """A ``cp`` error about a file removed while it was being copied."""
    return line.rstrip().endswith(": No such file or directory")


def copy_tree(src: Path | str, dst: Path | str) -> None:
    """``cp -a --reflink=auto src dst`` (``src/.`` copies into an existing ``dst``).

    A file that vanished while a running instance's volume was copied (its /run, /tmp)
    is not a failure: the copy is what the volume held meanwhile, as LXD's rsync (exit
    code 24) takes it. Any other error is Internal, with cp's words."""
    proc = subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    if errors and os.path.isdir(dst) and all(_vanished(line) for line in errors):
        return
    raise Internal(f"copy volume: 'cp -a {src} {dst}' failed: "
                   f"{proc.stderr.strip() or f'exit code {proc.returncode}'}")
