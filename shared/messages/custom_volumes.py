"""Bus messages of custom storage volumes (``/1.0/storage-pools/<pool>/volumes/custom``).

The gateway sends one message shape for every custom volume verb (``custom_list``,
``custom_create``, ``custom_get``, ``custom_update``, ``custom_patch``, ``custom_rename``,
``custom_delete``, ``custom_state``, the ``custom_snapshot_*`` and ``custom_backup_*``
ones, ``custom_import``): the pool, the
volume, maybe a snapshot, the client's JSON body and its ``If-Match``. ``project`` is the
*effective* storage project: the gateway has already mapped a project without
``features.storage.volumes`` to ``default`` (as LXD's ``StorageVolumeProject``).
"""

from __future__ import annotations

from typing import Any

from shared.models import Request


class CustomVolumeRequest(Request):
    pool: str
    name: str = ""  # the volume ("" for the collection verbs: list, create)
    snapshot: str = ""  # the snapshot, for the custom_snapshot_* item verbs
    backup: str = ""  # the backup, for the custom_backup_* item verbs
    stream: str = ""  # custom_backup_export: the byte stream's id (corral.streams.<id>)
    object: str = ""  # custom_import: the upload staged in the transfers object store
    body: dict[str, Any] | None = None
    etag: str | None = None
    recursion: int = 0
    filter: str | None = None  # LXD's filter= on custom_list
    all_projects: bool = False
    # The project the client named (``?project=``): operations and events are filed
    # under it, as LXD files them under the request's project.
    request_project: str = "default"
