"""Error messages without the host's paths, applied where the gateway renders errors.

Why here: a service's error can carry a path of the host (an ``OSError`` naming the file
it failed on, under ``$CORRAL_DIR`` or a container's root seen from the host). A client
learns nothing it can act on from that, and it tells where the host keeps what. The
rendering of errors is one place every message passes, whichever service made it, so the
rule lives here once instead of in each service's ``except``.

A path inside an instance's root file system becomes the path the instance sees
(``.../containers/c1/rootfs/etc/x`` -> ``/etc/x``); any other path under ``$CORRAL_DIR``
is named relative to it (``$CORRAL_DIR/storage-pools/p``).
"""

from __future__ import annotations

import re
from pathlib import Path

# A container's root under $CORRAL_DIR as the host sees it: <dir>/.../rootfs.
_ROOTFS = r"(?:/[^\s'\"]*?)?/rootfs(?=[/\s'\"]|$)"  # the first /rootfs: the instance's own
# A running container's root through its init: /proc/<pid>/root, as an OSError quotes
# it ("[Errno 2] No such file or directory: '/proc/8385/root/proc/self'"). Only in such
# messages: in Corral's own, a /proc/1/root/x is the path the client asked for.
_OSERROR = re.compile(r"\[Errno \d+\]")
_PROC_ROOT = re.compile(r"'/proc/\d+/root(/[^']*)?'")


def scrub(message: str, corral_dir: Path | str) -> str:
    """``message`` with host paths replaced as the module says."""
    if _OSERROR.search(message):
        message = _PROC_ROOT.sub(lambda m: f"'{m.group(1) or '/'}'", message)
    base = re.escape(str(corral_dir).rstrip("/"))
    if base:
        message = re.sub(base + _ROOTFS + r"(/[^\s'\"]*)?",
                         lambda m: m.group(1) or "/", message)
        message = re.sub(base + r"(?=/|\b)", "$CORRAL_DIR", message)
    return message
