"""Custom storage volumes: ``/1.0/storage-pools/<pool>/volumes/custom`` (the gateway's
cluster-scoped verbs), their snapshots, copies, moves and attachments' bookkeeping.

A mixin of :class:`services.storage.service.StorageService`.
"""

from __future__ import annotations


class CustomVolumesMixin:
    """Custom volume CRUD (filled in by the custom volumes work of issue 10)."""
