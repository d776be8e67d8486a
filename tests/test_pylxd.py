"""The Python LXD client ``pylxd`` against Corral's API: what scripts written for LXD use.

A module fixture makes a world (``tests/world.py``: dir pool, bridge without NAT, profile,
busybox image); the test's own container carries the world's prefix and goes with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pylxd = pytest.importorskip("pylxd")
from pylxd.exceptions import NotFound  # noqa: E402

from .world import make_world  # noqa: E402

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not Path("/bin/busybox").exists():
    pytest.skip("needs root and busybox-static", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="dir") as w:
        yield w


@pytest.fixture(scope="module")
def client(stack, world):
    return pylxd.Client(endpoint=str(stack.socket))


def test_host_info(client):
    info = client.host_info
    assert info["api_version"] == "1.0" and "instances" in info["api_extensions"]
    assert client.has_api_extension("instances")


def test_container_lifecycle_exec_files_config(client, world):
    name = world.name("py")
    inst = client.instances.create({"name": name, "profiles": [world.profile],
                                     "source": {"type": "image", "alias": world.image}},
                                    wait=True)
    assert inst.name == name and inst.status == "Stopped"
    inst.start(wait=True)
    assert inst.state().status == "Running"

    code, out, err = inst.execute(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (code, out, err) == (3, "out\n", "err\n")

    payload = bytes(range(256)) * 4096 + os.urandom(12345)
    inst.files.put("/root/blob.bin", payload)
    assert inst.files.get("/root/blob.bin") == payload

    inst.config["limits.memory"] = "96MiB"
    inst.config["user.from-pylxd"] = "yes"
    inst.save(wait=True)
    again = client.instances.get(name)
    assert again.config["limits.memory"] == "96MiB"
    assert again.config["user.from-pylxd"] == "yes"

    inst.stop(force=True, wait=True)
    assert client.instances.get(name).status == "Stopped"
    inst.delete(wait=True)
    with pytest.raises(NotFound):
        client.instances.get(name)


def test_lists(client, world):
    assert world.profile in {p.name for p in client.profiles.all()}
    assert world.net in {n.name for n in client.networks.all()}
    assert world.pool in {p.name for p in client.storage_pools.all()}
    assert world.fingerprint in {i.fingerprint for i in client.images.all()}
    image = client.images.get_by_alias(world.image)
    assert image.fingerprint == world.fingerprint


def test_not_found_maps_to_exception(client, world):
    with pytest.raises(NotFound):
        client.instances.get(f"{world.prefix}-nope")
    with pytest.raises(NotFound):
        client.profiles.get(f"{world.prefix}-nope")
    with pytest.raises(NotFound):
        client.storage_pools.get(f"{world.prefix}-nope")
