"""The one instance-name rule (LXD's) and LXD's random names for unnamed instances.

Why one module: the service checks names from the API, and both drivers use the same
names for host objects (LXC directories, libvirt domains, spec directories); two rules
drifting apart once let a name through the API that a driver then refused.

LXD's rule (``validate.IsHostname``): 1 to 63 characters of ASCII letters, digits and
``-``, not starting with a digit or ``-``, not ending with ``-``. An instance created
without a name gets a free adjective-noun name from ``petname``, as LXD does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container

import petname

from shared.errors import BadRequest

_NAME = re.compile(r"^[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
RANDOM_TRIES = 100


def check_name(name: object) -> str:
    """The name when valid; 400 saying what is wrong otherwise."""
    if not isinstance(name, str) or not name:
        raise BadRequest("Invalid instance name: a non-empty string is needed")
    if not _NAME.match(name):
        raise BadRequest(
            f"Invalid instance name {name!r}: names must be 1-63 characters of letters, "
            "digits and '-', start with a letter and not end with '-'")
    return name


def random_name(taken: Container[str],
                generate: Callable[[], str] = lambda: petname.generate(2, "-")) -> str:
    """A valid adjective-noun name not in ``taken`` (LXD's choice for an unnamed create)."""
    for _ in range(RANDOM_TRIES):
        name = generate()
        if _NAME.match(name) and name not in taken:
            return name
    raise BadRequest("Could not find a free random instance name; give one with 'name'")
