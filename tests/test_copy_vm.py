"""Copy, move and publish of a virtual machine (issue 10): one VM (TCG is slow), copied
with a snapshot through ``lxc copy``, moved to a dir pool, published as an image (LXD's
split form: metadata tarball and a flattened qcow2) and launched from it; each boots and
has the file written in the first.
"""

from __future__ import annotations

import pytest

from .test_vms import create_vm, libvirtd, lxc, run, upload_split, vm_image, wait_agent  # noqa: F401
from .world import make_world, wait_op

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball, libvirtd, vm_image):  # noqa: F811
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="btrfs",
                    pool_config={"size": "1GiB"}) as w:
        fp = upload_split(api, *vm_image)
        w.vm_alias = f"{w.prefix}-vm"
        w.other = f"{w.prefix}q"
        assert api.post("/1.0/storage-pools", json={"name": w.other, "driver": "dir"}
                        ).status_code == 200
        try:
            assert api.post("/1.0/images/aliases", json={"name": w.vm_alias,
                                                         "target": fp}).status_code in (200, 201)
            yield w
        finally:
            for name in list(w.instances):
                w.remove(name)
            api.delete(f"/1.0/images/aliases/{w.vm_alias}")
            r = api.delete(f"/1.0/images/{fp}")
            if r.status_code == 202:
                wait_op(api, r, ok=False)
            api.delete(f"/1.0/storage-pools/{w.other}")


def cat(w, name: str, path: str) -> str:
    code, out, err = run(w, name, ["cat", path])
    assert code == 0, err
    return out


def test_vm_copy_move_publish(world, stack, api):
    w = world
    a = create_vm(w, "vmsrc", config={"limits.memory": "256MiB"})
    wait_agent(w, a)
    assert run(w, a, ["sh", "-c", "echo vm-data > /root/v && sync"])[0] == 0
    lxc(stack, "stop", a)
    lxc(stack, "snapshot", a, "s0")
    b = w.name("vmcp")
    lxc(stack, "copy", a, b)
    src, dst = w.get(a), w.get(b)
    assert dst["type"] == "virtual-machine"
    assert dst["config"]["volatile.eth0.hwaddr"] != src["config"]["volatile.eth0.hwaddr"]
    names = [u.rsplit("/", 1)[-1] for u in
             api.get(f"/1.0/instances/{b}/snapshots").json()["metadata"]]
    assert names == ["s0"]
    lxc(stack, "move", b, "--storage", w.other)
    assert w.get(b)["expanded_devices"]["root"]["pool"] == w.other
    lxc(stack, "start", b)
    wait_agent(w, b)
    assert cat(w, b, "/root/v") == "vm-data\n"
    lxc(stack, "stop", b, "--force")

    alias = f"{w.prefix}-vmpub"
    out = lxc(stack, "publish", a, "--alias", alias).stdout
    fp = out.strip().rsplit(" ", 1)[-1]
    try:
        img = api.get(f"/1.0/images/{fp}").json()["metadata"]
        assert img["type"] == "virtual-machine"
        c = w.name("vmpub")
        lxc(stack, "launch", alias, c, "--vm", "-p", w.profile, "-c", "limits.memory=256MiB")
        wait_agent(w, c)
        assert cat(w, c, "/root/v") == "vm-data\n"
        lxc(stack, "delete", "--force", c)
    finally:
        r = api.delete(f"/1.0/images/{fp}")
        if r.status_code == 202:
            wait_op(api, r)
    # a VM's snapshot publishes too (its disk flattened from the snapshot's qcow2)
    fp = lxc(stack, "publish", f"{a}/s0").stdout.strip().rsplit(" ", 1)[-1]
    img = api.get(f"/1.0/images/{fp}").json()["metadata"]
    assert img["type"] == "virtual-machine" and img["size"] > 1024 * 1024
    r = api.delete(f"/1.0/images/{fp}")
    if r.status_code == 202:
        wait_op(api, r)
    lxc(stack, "delete", "--force", a, b)
