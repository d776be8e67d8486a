"""The server config keys of pulled images' life (LXD 5.0's names, meanings and defaults).

One place for both sides: the gateway validates them when ``PUT``/``PATCH /1.0`` sets
them (``services/gateway/server_config.py``), the image service reads them from the
``server_config`` KV bucket for its periodic task and for pulls. Neither service may import
the other, so the rules live here.

- ``images.remote_cache_expiry``: days an image cached for an instance (``cached: true``)
  may stay unused before it is deleted; default 10; 0 keeps them forever (LXD: <= 0).
- ``images.auto_update_interval``: hours between two checks of an ``auto_update`` image's
  source; default 6; 0 never checks.
- ``images.auto_update_cached``: whether images cached for instances are pulled with
  ``auto_update`` on; default true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from shared.errors import BadRequest

# Where the gateway keeps the server config: one KV entry {"config": {key: value}}.
BUCKET = "server_config"
ENTRY = "config"

REMOTE_CACHE_EXPIRY = "images.remote_cache_expiry"
AUTO_UPDATE_INTERVAL = "images.auto_update_interval"
AUTO_UPDATE_CACHED = "images.auto_update_cached"
DEFAULTS = {REMOTE_CACHE_EXPIRY: "10", AUTO_UPDATE_INTERVAL: "6", AUTO_UPDATE_CACHED: "true"}

# LXD's booleans (lxd/config: shared.IsTrue / IsFalse)
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def check_count(key: str, value: str) -> str:
    """A whole number >= 0 (days or hours); the value is kept as sent."""
    text = value.strip()
    if not text.isdigit():
        unit = "days" if key == REMOTE_CACHE_EXPIRY else "hours"
        raise BadRequest(f"Invalid value for {key!r}: {value!r} is not a whole number of "
                         f"{unit} (0 or more; 0 = never)")
    if int(text) > 100 * 365 * 24:
        raise BadRequest(f"Invalid value for {key!r}: {value!r} is too large")
    return text


def check_bool(key: str, value: str) -> str:
    if value.strip().lower() not in (*_TRUE, *_FALSE):
        raise BadRequest(f"Invalid value for {key!r}: {value!r} is not a boolean (true or "
                         "false)")
    return value.strip()


@dataclass(frozen=True)
class ImageSettings:
    """The three keys as numbers and a flag (defaults where unset or unreadable)."""

    remote_cache_expiry_days: int = 10
    auto_update_interval_hours: int = 6
    auto_update_cached: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ImageSettings":
        """From the stored server config (``{key: value}``); a value that does not parse
        (written around the gateway) falls back to the default rather than stopping the
        periodic task."""
        def count(k: str) -> int:
            raw = str(config.get(k) or DEFAULTS[k]).strip()
            return int(raw) if raw.isdigit() else int(DEFAULTS[k])

        flag = str(config.get(AUTO_UPDATE_CACHED) or DEFAULTS[AUTO_UPDATE_CACHED])
        return cls(remote_cache_expiry_days=count(REMOTE_CACHE_EXPIRY),
                   auto_update_interval_hours=count(AUTO_UPDATE_INTERVAL),
                   auto_update_cached=flag.strip().lower() not in _FALSE)
