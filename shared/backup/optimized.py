"""An optimized (``--optimized-storage``) backup's body: btrfs send streams, as LXD writes
them for instances and custom volumes alike.

``optimized_header.yaml`` lists the subvolumes; then each snapshot is a send stream against
the one before it (``<snapshots dir>/<s>.bin``) and the volume one against the last
snapshot (``<volume dir>.bin``). A tar header needs the size before the data, so each
stream is sent twice: once to count it, once into the tarball (no copy on disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import btrfs, layout


def write(tar: Any, volume: Path, snapshots: list[tuple[str, Path]], vdir: str,
          sdir: str) -> None:
    """Add the header and the streams to ``tar`` (a :class:`writer.TarStream`);
    ``snapshots`` are (name, frozen path), oldest first."""
    subvolumes = [{"path": "/", "snapshot": s, "readonly": True, "uuid": ""}
                  for s, _ in snapshots]
    subvolumes.append({"path": "/", "snapshot": "", "readonly": False, "uuid": ""})
    tar.add_bytes(layout.OPTIMIZED_HEADER, layout.dump({"subvolumes": subvolumes}))
    parts = [(path, f"{layout.PREFIX}/{sdir}/{s}.bin") for s, path in snapshots]
    parts.append((volume, f"{layout.PREFIX}/{vdir}.bin"))
    parent: Path | None = None
    for path, name in parts:
        size = btrfs.send_size(path, parent)
        send = btrfs.Send(path, parent)
        try:
            tar.add_reader(name, size, send.read)
            send.close()
        except BaseException:
            send.kill()
            raise
        parent = path
