"""``/`` and ``GET /1.0``: the server's description, answered even when a service is down."""

from __future__ import annotations

import os
import platform
from typing import Any

from aiohttp import web

from .. import host_features, responses
from ..remote import EXTENSIONS
from ..request import project_of
from ..routing import Context
from .cluster import API_EXTENSIONS as CLUSTER_EXTENSIONS
from .metrics import API_EXTENSIONS as METRICS_EXTENSIONS
from .warnings import API_EXTENSIONS as WARNING_EXTENSIONS

VERSION = "0.1.0"


async def root(_ctx: Context, _request: web.Request) -> web.Response:
    return responses.sync(["/1.0"])


async def server(ctx: Context, request: web.Request) -> web.Response:
    """``GET /1.0``: the gateway's own facts plus what each service adds (cached).

    An untrusted HTTPS client gets LXD's untrusted view (API level, extensions, how to
    authenticate) and nothing about the host; the config only shows to unrestricted
    clients, with hidden keys as ``true``."""
    env, extensions = await ctx.info.get()
    extensions = [*extensions, *(e for e in (*EXTENSIONS, *WARNING_EXTENSIONS,
                                                      *METRICS_EXTENSIONS, *CLUSTER_EXTENSIONS)
                                 if e not in extensions)]
    view = ctx.remote.server_view(request)
    untrusted = {
        "api_extensions": extensions,
        "api_status": "stable",
        "api_version": "1.0",
        "auth": view["auth"],
        "public": False,
        "auth_methods": ["tls"],
    }
    if not view["trusted"]:
        return responses.sync(untrusted)
    uname = platform.uname()
    environment = {
        "addresses": view["addresses"],
        "architectures": [uname.machine],
        "certificate": view["certificate"],
        "certificate_fingerprint": view["certificate_fingerprint"],
        "driver": "",
        "driver_version": "",
        "firewall": "nftables",
        "kernel": uname.system,
        "kernel_architecture": uname.machine,
        "kernel_features": host_features.kernel_features(),
        "kernel_version": uname.release,
        "lxc_features": host_features.lxc_features(),
        "os_name": _os_release().get("NAME", "Linux"),
        "os_version": _os_release().get("VERSION_ID", ""),
        "project": project_of(request),
        "server": "corral",
        "server_clustered": ctx.config.cluster,  # server_name: the member's name
        "server_event_mode": "full-mesh",
        "server_name": ctx.config.node,
        "server_pid": os.getpid(),
        "server_version": VERSION,
        "storage": "",
        "storage_version": "",
        "storage_supported_drivers": [],
    }
    environment.update(env)
    return responses.sync({"config": view["config"], **untrusted,
                           "environment": environment}, etag=view["etag"])


_OS: dict[str, Any] = {}


def _os_release() -> dict[str, str]:
    if not _OS:
        try:
            for line in open("/etc/os-release"):
                k, _, v = line.strip().partition("=")
                _OS[k] = v.strip('"')
        except OSError:
            _OS["NAME"] = "Linux"
    return _OS
