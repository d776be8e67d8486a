"""Root disk usage in instance state, through the stock ``lxc`` client (btrfs qgroups)."""

from __future__ import annotations

import shutil

import pytest

from .stack import wait_for
from .test_lxc_client import lxc
from .world import make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="btrfs") as w:
        yield w


def _disk_column(stack, name: str) -> str:
    return lxc(stack, "list", name, "--format", "csv", "-c", "nD").stdout.strip()


def test_lxc_list_and_info_show_root_disk_usage(world, stack, api):
    name = world.create("du", start=True)
    lxc(stack, "exec", name, "--", "sh", "-c",
        "dd if=/dev/urandom of=/fill bs=1M count=5 2>/dev/null && sync")

    def usage() -> int:
        state = api.get(f"/1.0/instances/{name}/state").json()["metadata"]
        return (state.get("disk") or {}).get("root", {}).get("usage", 0)

    # qgroup numbers move at a btrfs commit (the sync) and are cached 2 s by storage
    wait_for(lambda: usage() >= 5 * 2**20, 20)
    row = _disk_column(stack, name)
    assert row.startswith(f"{name},") and row.split(",", 1)[1].endswith("MiB"), row
    assert float(row.split(",", 1)[1].removesuffix("MiB")) >= 5, row
    assert "Disk usage:" in lxc(stack, "info", name).stdout
    listed = api.get("/1.0/instances", params={"recursion": 2}).json()["metadata"]
    ours = next(o for o in listed if o["name"] == name)
    assert ours["state"]["disk"]["root"]["usage"] >= 5 * 2**20
