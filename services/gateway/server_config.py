"""The server's own configuration (``config`` of ``GET /1.0``; ``PUT``/``PATCH /1.0``).

Which keys exist and what each accepts is one table (:data:`KEYS`); a key Corral does not
know is refused by name (400), and so is a key LXD has but Corral does not implement
(accepting it would promise a behaviour nobody provides). The values live in the KV bucket
``server_config`` (one entry), shared by every gateway and mirrored by each
(``kvmirror.py``), so a change made through one gateway applies in all.

``core.trust_password`` is stored as LXD stores it: scrypt (N=2^14, r=8, p=1, 64 bytes)
over a random 32-byte salt, hex of salt + hash; it is shown as ``true`` and a ``true``
sent back means "unchanged", as LXD's hidden keys do (so ``lxc config set`` of another
key, which PUTs back what it read, keeps the password).
"""

from __future__ import annotations

import grp
import hashlib
import hmac
import json
import re
import secrets
from typing import Any, Callable

from shared.errors import BadRequest
from shared.image import settings as image_settings

from . import tls

BUCKET = image_settings.BUCKET  # "server_config" (the image service reads it too)
ENTRY = image_settings.ENTRY
HIDDEN = ("core.trust_password",)


def _https_address(value: str) -> str:
    if value:
        tls.parse_address(value)
    return value


def _socket_group(value: str) -> str:
    if value and not value.isdigit():
        try:
            grp.getgrnam(value)
        except KeyError:
            raise BadRequest(f"Invalid core.socket_group {value!r}: no such group on this "
                             "host") from None
    return value


_EXPIRY_PART = re.compile(r"^(\d+)(S|M|H|d|w|m|y)$")
_EXPIRY_SECONDS = {"S": 1, "M": 60, "H": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400,
                   "y": 365 * 86400}


def expiry_seconds(value: str) -> int:
    """LXD's expiry expression (``"30M"``, ``"1d 12H"``: S, M, H, d, w, m, y) in seconds;
    months count 30 days and years 365 (LXD adds calendar months; close enough for a
    token's life)."""
    total, used = 0, set()
    for part in value.split():
        m = _EXPIRY_PART.match(part)
        if not m or m.group(2) in used:
            raise BadRequest(f"Invalid expiry expression {value!r}: expected parts like 30M, "
                             "1H, 2d, 1w (each unit once)")
        used.add(m.group(2))
        total += int(m.group(1)) * _EXPIRY_SECONDS[m.group(2)]
    return total


def _expiry(value: str) -> str:
    if value:
        expiry_seconds(value)
    return value


def _any(value: str) -> str:
    return value


def _image_count(key: str) -> Callable[[str], str]:
    return lambda value: image_settings.check_count(key, value)


# key -> validator (returns the value to store; raises BadRequest)
KEYS: dict[str, Callable[[str], str]] = {
    "core.https_address": _https_address,
    "core.trust_password": _any,  # hashed by `apply_changes`
    "core.remote_token_expiry": _expiry,
    "core.socket_group": _socket_group,  # Corral's: the group let into the unix socket
    # pulled images' life, read by the image service (shared/image/settings.py)
    image_settings.REMOTE_CACHE_EXPIRY: _image_count(image_settings.REMOTE_CACHE_EXPIRY),
    image_settings.AUTO_UPDATE_INTERVAL: _image_count(image_settings.AUTO_UPDATE_INTERVAL),
    image_settings.AUTO_UPDATE_CACHED: lambda v: image_settings.check_bool(
        image_settings.AUTO_UPDATE_CACHED, v),
}

# Keys LXD 5.0 has that Corral does not implement: refused with a message saying so.
LXD_ONLY = (
    "backups.compression_algorithm", "candid.api.key", "candid.api.url", "candid.domains",
    "candid.expiry", "cluster.https_address", "cluster.images_minimal_replica",
    "cluster.max_standby", "cluster.max_voters", "cluster.offline_threshold",
    "core.bgp_address", "core.bgp_asn", "core.bgp_routerid", "core.debug_address",
    "core.dns_address", "core.https_allowed_credentials", "core.https_allowed_headers",
    "core.https_allowed_methods", "core.https_allowed_origin", "core.https_trusted_proxy",
    "core.metrics_address", "core.proxy_http", "core.proxy_https", "core.proxy_ignore_hosts",
    "core.shutdown_timeout", "core.trust_ca_certificates", "images.compression_algorithm",
    "images.default_architecture", "maas.api.key",
    "maas.api.url", "maas.machine", "network.ovn.integration_bridge",
    "network.ovn.northbound_connection", "rbac.agent.private_key", "rbac.agent.public_key",
    "rbac.agent.url", "rbac.agent.username", "rbac.api.expiry", "rbac.api.key",
    "rbac.api.url", "storage.backups_volume", "storage.images_volume",
)


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise BadRequest(f"Invalid server config key {key!r}: keys are strings")
    if key in KEYS or (key.startswith("user.") and len(key) > 5):
        return
    if key in LXD_ONLY:
        raise BadRequest(f"Cannot set {key!r}: this LXD server key is not supported by "
                         f"Corral (supported: {', '.join(sorted(KEYS))}, user.*)")
    raise BadRequest(f"Cannot set {key!r}: unknown server config key (supported: "
                     f"{', '.join(sorted(KEYS))}, user.*)")


# -- the trust password -------------------------------------------------------------------

_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "dklen": 64, "maxmem": 64 * 1024 * 1024}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(32)
    return (salt + hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)).hex()


def check_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches the stored hash (False when none is set)."""
    if not stored or not password:
        return False
    try:
        raw = bytes.fromhex(stored)
    except ValueError:
        return False
    salt, want = raw[:32], raw[32:]
    got = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return hmac.compare_digest(got, want)


# -- changes ------------------------------------------------------------------------------

def _string(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise BadRequest(f"Invalid value for {key!r}: expected a string")
    return value


def apply_changes(current: dict[str, str], body: Any, replace: bool) -> dict[str, str]:
    """The stored config after ``PUT`` (``replace``: keys not sent are removed) or
    ``PATCH`` (merge) of ``body`` (``{"config": {...}}``). An empty value removes a key; a
    hidden key sent as ``true`` stays as it is. Pure: raises BadRequest, changes nothing."""
    if not isinstance(body, dict):
        raise BadRequest("Invalid request body: expected a JSON object")
    config = body.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise BadRequest("Invalid config: expected an object of keys to string values")
    new = {} if replace else dict(current)
    for key, value in config.items():
        _check_key(key)
        if key in HIDDEN and value is True:
            if key in current:
                new[key] = current[key]
            continue
        text = _string(key, value)
        if text == "":
            new.pop(key, None)
            continue
        checked = KEYS[key](text) if key in KEYS else text
        new[key] = hash_password(checked) if key == "core.trust_password" else checked
    return new


def render(stored: dict[str, str]) -> dict[str, Any]:
    """What ``GET /1.0`` shows: hidden keys as ``true``."""
    return {k: (True if k in HIDDEN else v) for k, v in sorted(stored.items())}


def etag(stored: dict[str, str]) -> str:
    raw = json.dumps(render(stored), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()
