"""The one instance-name rule (LXD's) and LXD's random names for unnamed instances.

Why one module: the service checks names from the API, and both drivers use the same
names for host objects (LXC directories, libvirt domains, spec directories); two rules
drifting apart once let a name through the API that a driver then refused.

LXD's rule (``validate.IsHostname``): 1 to 63 characters of ASCII letters, digits and
``-``, not starting with a digit or ``-``, not ending with ``-``. An instance created
without a name gets a free adjective-noun name from ``petname``, as LXD does.

Host names: names are unique per project, but LXC containers and libvirt domains are
host-wide, so an instance outside the ``default`` project is ``<project>_<name>`` on the
host (LXD's own choice; project names cannot contain ``_``, so the split is unambiguous).
``default`` keeps the bare name, so instances made before projects keep working.
:func:`host_name` is the one place this mapping is made: both drivers, the reconcile and
the exec/files/console paths are given its result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Mapping
from typing import Any

import petname

from shared.errors import BadRequest

_NAME = re.compile(r"^[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
RANDOM_TRIES = 100
# Corral's project names (see services/instance/projects.py): safe in host object names.
PROJECT_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9.-]{0,62}$")


def check_name(name: object) -> str:
    """The name when valid; 400 saying what is wrong otherwise."""
    if not isinstance(name, str) or not name:
        raise BadRequest("Invalid instance name: a non-empty string is needed")
    if not _NAME.match(name):
        raise BadRequest(
            f"Invalid instance name {name!r}: names must be 1-63 characters of letters, "
            "digits and '-', start with a letter and not end with '-'")
    return name


def host_name(project: str, name: str) -> str:
    """The name of the instance's host objects (LXC container, libvirt domain, spec dir)."""
    return name if project in ("", "default") else f"{project}_{name}"


def host_of(record: Mapping[str, Any]) -> str:
    """:func:`host_name` of an instance's KV record."""
    return host_name(record.get("project") or "default", record["name"])


def split_host_name(host: str) -> tuple[str, str]:
    """(project, name) of a host name made by :func:`host_name`."""
    project, sep, name = host.partition("_")
    return (project, name) if sep else ("default", host)


def check_host_name(host: object) -> str:
    """A host name as :func:`host_name` makes them (drivers refuse anything else: a path
    separator or ``..`` must never reach a directory name)."""
    if not isinstance(host, str):
        raise BadRequest("Invalid instance name: a non-empty string is needed")
    project, name = split_host_name(host)
    if project != "default" and not PROJECT_NAME.match(project):
        raise BadRequest(f"Invalid instance host name {host!r}")
    check_name(name)
    return host


def random_name(taken: Container[str],
                generate: Callable[[], str] = lambda: petname.generate(2, "-")) -> str:
    """A valid adjective-noun name not in ``taken`` (LXD's choice for an unnamed create)."""
    for _ in range(RANDOM_TRIES):
        name = generate()
        if _NAME.match(name) and name not in taken:
            return name
    raise BadRequest("Could not find a free random instance name; give one with 'name'")
