"""The LXC driver's list of its containers (``list_host``, what every instance list reads)
checks each directory's spec file once, not at every list: what it lists must still
follow every directory made, removed or renamed, at once when the driver did it.

Real liblxc (its list of active containers) on a temporary lxcpath; the containers are
directories with or without a spec file, as a create leaves them part way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lxc")

from services.instance.drivers import lxc as lxc_driver  # noqa: E402
from services.instance.drivers.base import SPEC_FILE  # noqa: E402
from services.instance.drivers.lxc import LXCDriver  # noqa: E402

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root (the lxcpath is made private)", allow_module_level=True)


def _defined(drv: LXCDriver, name: str, spec: bool = True) -> Path:
    d = drv.lxcpath / name
    d.mkdir()
    if spec:
        (d / SPEC_FILE).write_text("{}")
    return d


def test_list_host_follows_directories_made_and_removed(tmp_path, monkeypatch):
    drv = LXCDriver(tmp_path / "lxc")
    _defined(drv, "lha")
    half = _defined(drv, "lhb", spec=False)  # mkdir done, spec not yet written
    assert drv.list_host() == {"lha": "Stopped"}
    assert drv.list_host() == {"lha": "Stopped"}  # the second list uses what it saw

    (half / SPEC_FILE).write_text("{}")  # the create finished: listed at once
    assert drv.list_host() == {"lha": "Stopped", "lhb": "Stopped"}

    # Removed by the driver and made again (a create part way): ext4 often gives the new
    # directory the old one's inode, so only the driver forgetting the name tells. The
    # worst case, the very same inode, made sure of by moving the directory back.
    held = tmp_path / "held"
    os.rename(drv.lxcpath / "lha", held)
    drv._forget("lha")
    (held / SPEC_FILE).unlink()
    os.rename(held, drv.lxcpath / "lha")
    assert drv.list_host() == {"lhb": "Stopped"}
    shutil.rmtree(drv.lxcpath / "lha")
    drv._forget("lha")
    assert drv.list_host() == {"lhb": "Stopped"}

    # Renamed by the driver: the new name is checked, the old one is gone.
    os.rename(drv.lxcpath / "lhb", drv.lxcpath / "lhc")
    drv._forget("lhb")
    drv._forget("lhc")
    assert drv.list_host() == {"lhc": "Stopped"}

    # Behind the driver's back (its spec file removed by hand): seen at the next full
    # check of every spec file, which SPEC_RECHECK spaces out.
    (drv.lxcpath / "lhc" / SPEC_FILE).unlink()
    monkeypatch.setattr(lxc_driver, "SPEC_RECHECK", 0.0)
    assert drv.list_host() == {}

