"""Files of an instance, LXD's ``/1.0/instances/<name>/files?path=``, as a service mixin.

The driver does the path resolution that keeps every access inside the instance's root
(symlinks resolved in the container, ``..`` above the root refused); here we only decode,
move large bodies through the transfers store and publish LXD's lifecycle events.
"""

from __future__ import annotations

from typing import Any

from shared.api import url
from shared.errors import BadRequest, NotFound
from shared.messages.exec import FileRequest, pack, unpack
from shared.models import Reply
from shared.service import endpoint

from . import workers
from .drivers.base import InstanceDriver
from .names import host_name

FILE_TYPES = ("file", "directory", "symlink")

# File transfers run on threads of their own (see .workers): a transfer that blocks holds
# only file transfers, never the lists, states and exec of every instance.
_POOL = workers.FILES


def _check_path(path: str) -> str:
    if not path:
        raise BadRequest("Missing path argument: pass ?path=/absolute/path/in/the/instance")
    if "\0" in path:
        raise BadRequest("Invalid path: it contains a NUL byte")
    return path


class FilesMixin:
    """``file_get``, ``file_put``, ``file_delete``."""

    async def _files_driver(self, project: str, name: str) -> InstanceDriver:
        """The instance's driver, when it can reach the instance's files (400 if not)."""
        rec = await self.require_instance(project, name)
        drv = self.driver_of(rec)
        if not drv.capabilities.files:
            raise BadRequest(f"File access is not supported for a {rec['type']}")
        return drv

    async def _file_event(self, action: str, req: FileRequest) -> None:
        await self.events.lifecycle(f"instance-file-{action}",
                                    url("instances", req.name, req.project),
                                    project=req.project, context={"path": req.path},
                                    requestor=req.requestor)

    @endpoint("file_get", FileRequest)
    async def file_get(self, req: FileRequest) -> Reply:
        """Metadata ``{type, uid, gid, mode}`` plus ``entries``, or the bytes (inline/blob)."""
        drv = await self._files_driver(req.project, req.name)
        content, uid, gid, mode, kind = await _POOL.run(
            drv.file_get, host_name(req.project, req.name), _check_path(req.path))
        meta: dict[str, Any] = {"type": kind, "uid": uid, "gid": gid, "mode": mode}
        if kind == "directory":
            meta["entries"] = list(content)
        else:
            meta.update(await pack(self.bus, bytes(content), "download"))
        await self._file_event("retrieved", req)
        return Reply(metadata=meta)

    @endpoint("file_put", FileRequest)
    async def file_put(self, req: FileRequest) -> Reply:
        """Create or replace; an existing directory is left as it is (as LXD does)."""
        try:
            drv = await self._files_driver(req.project, req.name)
            _check_path(req.path)
            if req.type not in FILE_TYPES:
                raise BadRequest(f"Bad file type {req.type!r}: use file, directory or symlink")
            if set(req.modify_perm) - {"uid", "gid", "mode"}:
                raise BadRequest(f"Bad X-LXD-modify-perm {','.join(req.modify_perm)!r}: "
                                 "use a list of uid, gid and mode")
            if req.write not in ("overwrite", "append"):
                raise BadRequest(f"Bad file write mode {req.write!r}: use overwrite or append")
        except BaseException:
            if req.blob:  # an upload nobody will read
                await _drop(self.bus, req.blob)
            raise
        data = await unpack(self.bus, req.data, req.blob)
        host = host_name(req.project, req.name)
        if req.type == "directory" and await _is_dir(drv, host, req.path):
            return Reply(metadata=None)
        mode = None if req.mode < 0 else req.mode
        if req.type == "directory" and mode is None:
            mode = 0o750
        await _POOL.run(drv.file_put, host, req.path, data,
                                max(req.uid, 0), max(req.gid, 0), mode, req.type, req.write,
                                frozenset(req.modify_perm))
        await self._file_event("pushed", req)
        return Reply(metadata=None)

    @endpoint("file_delete", FileRequest)
    async def file_delete(self, req: FileRequest) -> Reply:
        drv = await self._files_driver(req.project, req.name)
        await _POOL.run(drv.file_delete, host_name(req.project, req.name),
                        _check_path(req.path))
        await self._file_event("deleted", req)
        return Reply(metadata=None)


async def _is_dir(drv: InstanceDriver, name: str, path: str) -> bool:
    try:
        kind = (await _POOL.run(drv.file_get, name, path))[4]
    except NotFound:
        return False
    return kind == "directory"


async def _drop(bus: Any, blob: str) -> None:
    from shared import blobs

    await blobs.delete(await blobs.transfers(bus), blob)
