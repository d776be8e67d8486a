"""The ``dir`` driver: volumes are plain directories, copies are ``cp -a``.

Works on any filesystem, so it is the fallback when btrfs is unavailable. With a
``source`` directory the pool content lives there and is bind-mounted at the pool path
(as LXD does); otherwise the pool path itself holds the data.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.errors import BadRequest, Conflict, CorralError, NotFound

from .base import KINDS, TMP_DIR, Driver, Info, remove_tree
from .util import copy_tree, is_mounted, run


def check_source(value: str) -> str:
    """``source`` is optional, but when set must be an absolute path (we never guess a cwd)."""
    if value and not os.path.isabs(value):
        raise BadRequest(f"Invalid value {value!r} for 'source': expected an absolute path")
    return os.path.normpath(value) if value else ""


class DirDriver(Driver):
    name = "dir"
    config_keys = {"source": check_source}

    @classmethod
    def info(cls) -> Info:
        return Info(name=cls.name, version="1", snapshots=True)

    def _bind(self) -> Path | None:
        """The directory bind-mounted at the pool path, or None when data lives in place."""
        src = self.config.get("source", "")
        return Path(src) if src and Path(src) != self.path else None

    # ---- pool lifecycle ------------------------------------------------------------------

    def create(self) -> dict[str, str]:
        """mkdir the pool (or bind-mount an existing empty ``source``), lay out dirs."""
        self.check_host()
        if self.path.exists() and (is_mounted(self.path) or any(self.path.iterdir())):
            raise Conflict(f"Storage pool directory {self.path} already exists and is in use")
        src = self._bind()
        if src is not None:
            if not src.is_dir():
                raise BadRequest(f"Source path {src} doesn't exist or is not a directory")
            if any(src.iterdir()):
                raise BadRequest(f"Source path {src} isn't empty")
        made_path = not self.path.exists()
        try:
            self.path.mkdir(mode=0o711, parents=True, exist_ok=True)
            if src is not None:
                run("mount", "--bind", src, self.path, what="mount storage pool")
            self._make_layout()
        except BaseException:
            self._undo_create(made_path)
            raise
        return {**self.config, "source": str(src or self.path)}

    def _undo_create(self, made_path: bool) -> None:
        try:
            if self._bind() is not None:
                for sub in [*os.listdir(self.path)]:
                    remove_tree(self.path / sub)
                if is_mounted(self.path):
                    run("umount", self.path)
            if made_path:
                remove_tree(self.path)
        except (CorralError, OSError):
            pass

    def mount(self) -> bool:
        src = self._bind()
        if src is None:
            if not self.path.is_dir():
                raise NotFound(f"Storage pool directory {self.path} is missing")
            return False
        if is_mounted(self.path):
            return False
        if not src.is_dir():
            raise NotFound(f"Source path {src} of storage pool {self.pool!r} is missing")
        self.path.mkdir(mode=0o711, parents=True, exist_ok=True)
        run("mount", "--bind", src, self.path, what="mount storage pool")
        return True

    def unmount(self) -> bool:
        if self._bind() is None or not is_mounted(self.path):
            return False
        run("umount", self.path, error=Conflict, what=f"unmount storage pool {self.pool!r}")
        return True

    def delete(self) -> None:
        """Remove the pool content; a ``source`` directory itself is kept, emptied."""
        if self._bind() is None:
            remove_tree(self.path)
            return
        if self._bind().is_dir():
            self.mount()
            for sub in [*KINDS.values(), *(f"{k}-snapshots" for k in KINDS.values()), TMP_DIR]:
                remove_tree(self.path / sub)
        self.unmount()
        if self.path.exists():
            self.path.rmdir()

    # ---- volume primitives ---------------------------------------------------------------

    def _vol_create(self, path: Path) -> None:
        path.mkdir(mode=0o711)

    def _vol_copy(self, src: Path, dst: Path, readonly: bool = False) -> None:
        """``cp -a`` keeps owners, modes, xattrs, device nodes, symlinks and hard links."""
        copy_tree(src, dst)

    def _vol_delete(self, path: Path) -> None:
        remove_tree(path)
