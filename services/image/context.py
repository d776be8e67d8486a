"""What the image logic needs from its service: stores, the bus (for blobs and requests to
other services), events, log, node and temp dir.

Why a narrow context instead of the service object: ``images``, ``aliases`` and ``imports``
used to take the ``ImageService`` itself, so they imported ``service.py`` (under
TYPE_CHECKING) while ``service.py`` imported them: a circle. With this dataclass the logic
depends on data only, the service builds it once in ``setup()``, and a test can build one
from a bus and two stores without a service.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.bus import Bus
from shared.events import Events
from shared.state import Store


@dataclass(frozen=True)
class ImageContext:
    images: Store
    aliases: Store
    bus: Bus
    events: Events
    log: Any
    node: str
    tmp_dir: Path

    def blobs_in_use(self, fp: str, but: str | None = None) -> bool:
        """Whether a record (of a project other than ``but``) holds this fingerprint:
        projects share the files of identical images."""
        return any(r["fingerprint"] == fp and r.get("project", "default") != but
                   for r in self.images.cached())
