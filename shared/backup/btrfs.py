"""btrfs send/receive for optimized backups (``--optimized-storage`` on btrfs pools).

Each snapshot is sent whole or against the previous one (``-p``), the volume against the
last snapshot: what LXD writes as ``backup/snapshots/<s>.bin`` and ``backup/container.bin``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

from shared.errors import BadRequest, Internal

CHUNK = 256 * 1024


def _send_cmd(path: Path, parent: Path | None) -> list[str]:
    return ["btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(path)]


def send_size(path: Path, parent: Path | None = None) -> int:
    """The byte length of the send stream (read and thrown away)."""
    proc = subprocess.Popen(_send_cmd(path, parent), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    size = 0
    while data := proc.stdout.read(CHUNK):
        size += len(data)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = proc.wait()
    if code != 0:
        raise Internal(f"btrfs send {path} failed ({code}): {err.strip()}")
    return size


class Send:
    """A running ``btrfs send``: ``read(n)`` its bytes, ``close()`` checks its end."""

    def __init__(self, path: Path, parent: Path | None = None) -> None:
        self.path = path
        self.proc = subprocess.Popen(_send_cmd(path, parent), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def read(self, n: int) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.read(n)

    def close(self) -> None:
        """After the counted bytes: the stream must end here (nothing more to read)."""
        assert self.proc.stdout is not None
        extra = self.proc.stdout.read(1)
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        code = self.proc.wait()
        if extra:
            raise Internal(f"btrfs send {self.path} was longer the second time: the "
                           "subvolume changed during the export")
        if code != 0:
            raise Internal(f"btrfs send {self.path} failed ({code}): {err.strip()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def receive(dest: Path, read: Callable[[int], bytes]) -> Path:
    """Feed a send stream to ``btrfs receive`` in the empty directory ``dest``; return the
    subvolume it made. A bad stream is a 400 (it came from the user's tarball)."""
    proc = subprocess.Popen(["btrfs", "receive", "-q", str(dest)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    broken = False
    try:
        while data := read(CHUNK):
            try:
                proc.stdin.write(data)
            except BrokenPipeError:
                broken = True
                break
        if not broken:
            proc.stdin.close()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = proc.wait()
    if code != 0 or broken:
        raise BadRequest(f"Invalid backup: btrfs receive failed: {err.strip()[:300]}")
    made = [p for p in dest.iterdir()]
    if len(made) != 1:
        raise BadRequest("Invalid backup: a btrfs send stream made "
                         f"{len(made)} subvolumes, expected one")
    return made[0]
