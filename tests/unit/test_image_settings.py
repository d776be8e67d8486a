"""The server config keys of pulled images (images.*): validation through the gateway's
table, and how the image service reads them (defaults, LXD's booleans)."""

from __future__ import annotations

import pytest

from services.gateway import server_config as sc
from shared.errors import BadRequest
from shared.image.settings import ImageSettings


def test_image_keys_are_accepted_and_kept_as_sent():
    new = sc.apply_changes({}, {"config": {"images.remote_cache_expiry": "3",
                                           "images.auto_update_interval": 0,
                                           "images.auto_update_cached": "false"}},
                           replace=False)
    assert new == {"images.remote_cache_expiry": "3", "images.auto_update_interval": "0",
                   "images.auto_update_cached": "false"}


@pytest.mark.parametrize("key,bad", [
    ("images.remote_cache_expiry", "-1"), ("images.remote_cache_expiry", "ten"),
    ("images.remote_cache_expiry", "1.5"), ("images.auto_update_interval", "6h"),
    ("images.auto_update_interval", "99999999"), ("images.auto_update_cached", "maybe"),
])
def test_bad_image_values_are_400_naming_the_key(key, bad):
    with pytest.raises(BadRequest, match=key.replace(".", r"\.")) as err:
        sc.apply_changes({}, {"config": {key: bad}}, replace=False)
    assert err.value.code == 400


def test_settings_defaults_and_parsing():
    assert ImageSettings.from_config({}) == ImageSettings(10, 6, True)
    got = ImageSettings.from_config({"images.remote_cache_expiry": "0",
                                     "images.auto_update_interval": "12",
                                     "images.auto_update_cached": "off"})
    assert got == ImageSettings(0, 12, False)
    # written around the gateway: defaults, not a crash of the periodic task
    assert ImageSettings.from_config({"images.auto_update_interval": "x"}
                                     ).auto_update_interval_hours == 6
