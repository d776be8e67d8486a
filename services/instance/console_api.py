"""Console log and log files of an instance, LXD's ``/console`` and ``/logs``, as a mixin.

Where logs live: each driver keeps ``console.log`` (LXC also ``lxc.log``) in its
``log_dir`` of the instance; recorded exec output goes to
``$CORRAL_DIR/logs/instances/<name>/``. Log names are checked against a fixed pattern,
never joined blindly, so no path trick reaches another file.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from shared.api import url
from shared.config import Config
from shared.errors import BadRequest, NotFound
from shared.messages.exec import LogRequest, pack
from shared.models import Reply
from shared.service import endpoint

from .names import host_of

DRIVER_LOGS = ("lxc.log", "console.log")
EXEC_LOG = re.compile(r"^exec_[0-9a-f-]{36}\.(stdout|stderr)$")


def log_dir(config: Config, project: str, name: str) -> Path:
    """Where recorded exec output of an instance goes (LXD's ``<project>_<name>``)."""
    leaf = name if project == "default" else f"{project}_{name}"
    return config.log_dir / "instances" / leaf


class ConsoleMixin:
    """``console_get``, ``console_clear``, ``log_list``, ``log_get``, ``log_delete``."""

    async def _driver_dir(self, project: str, name: str) -> Path:
        """The instance's driver's log directory (404 for an unknown instance)."""
        rec = await self.require_instance(project, name)
        return await asyncio.to_thread(self.driver_of(rec).log_dir, host_of(rec))

    async def _log_path(self, project: str, name: str, file: str | None) -> Path:
        if file in DRIVER_LOGS:
            return await self._driver_dir(project, name) / file
        if file and EXEC_LOG.match(file):
            return log_dir(self.config, project, name) / file
        raise BadRequest(f"Invalid log file name {file!r}: use lxc.log, console.log or an "
                         "exec_<operation>.stdout|stderr name from GET .../logs")

    @endpoint("console_get", LogRequest)
    async def console_get(self, req: LogRequest) -> Reply:
        """The console log as bytes (LXD: ``lxc console --show-log``)."""
        rec = await self.require_instance(req.project, req.name)
        data = await asyncio.to_thread(self.driver_of(rec).console_log, host_of(rec))
        return Reply(metadata=await pack(self.bus, data, "console"))

    @endpoint("console_clear", LogRequest)
    async def console_clear(self, req: LogRequest) -> Reply:
        """Empty the console log; LXC appends to it, so truncating in place is safe."""
        path = await self._driver_dir(req.project, req.name) / "console.log"
        await asyncio.to_thread(_truncate, path)
        return Reply(metadata=None)

    @endpoint("log_list", LogRequest)
    async def log_list(self, req: LogRequest) -> Reply:
        ddir = await self._driver_dir(req.project, req.name)
        names = [f for f in DRIVER_LOGS if (ddir / f).is_file()]
        d = log_dir(self.config, req.project, req.name)
        if d.is_dir():
            names += sorted(p.name for p in d.iterdir() if EXEC_LOG.match(p.name))
        base = url("instances", req.name)
        suffix = "" if req.project == "default" else f"?project={req.project}"
        return Reply(metadata=[f"{base}/logs/{n}{suffix}" for n in names])

    @endpoint("log_get", LogRequest)
    async def log_get(self, req: LogRequest) -> Reply:
        await self.require_instance(req.project, req.name)
        path = await self._log_path(req.project, req.name, req.file)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFound(f"Log file {req.file!r} of instance {req.name!r} not found"
                           ) from None
        return Reply(metadata=await pack(self.bus, data, "log"))

    @endpoint("log_delete", LogRequest)
    async def log_delete(self, req: LogRequest) -> Reply:
        await self.require_instance(req.project, req.name)
        path = await self._log_path(req.project, req.name, req.file)
        if req.file in DRIVER_LOGS:
            raise BadRequest(f"{req.file} may not be deleted (clear the console log with "
                             "DELETE /1.0/instances/<name>/console)")
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"Log file {req.file!r} of instance {req.name!r} not found"
                           ) from None
        return Reply(metadata=None)


def _truncate(path: Path) -> None:
    try:
        with open(path, "r+b") as fh:
            fh.truncate(0)
    except FileNotFoundError:
        pass
