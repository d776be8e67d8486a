"""Storage drivers describe themselves with a typed, frozen ``Info`` (LXD's drivers.Info)."""

from __future__ import annotations

import dataclasses

import pytest

from services.storage.drivers import DRIVERS, Info
from services.storage.drivers.base import Driver
from services.storage.volumes import overlays_vms


def test_every_driver_answers_a_frozen_info() -> None:
    for name, cls in DRIVERS.items():
        info = cls.info()
        assert isinstance(info, Info) and info.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.snapshots = False  # type: ignore[misc]


def test_vm_disks_are_overlays_only_without_optimized_images(tmp_path) -> None:
    """The flag the VM volume code reads, by attribute (a typo is an AttributeError)."""
    assert overlays_vms(DRIVERS["dir"]("p", {}, tmp_path))
    assert DRIVERS["btrfs"].info().optimized_images is True
    assert Driver.info is not DRIVERS["dir"].info  # each backend answers its own
