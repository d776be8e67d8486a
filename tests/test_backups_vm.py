"""Backups of virtual machines (issue 10): ``lxc export`` / ``lxc import`` of a VM in LXD
5.0's layout (the config filesystem part as a tree, the disk as a raw ``.img`` per
snapshot and for the volume). One VM (TCG is slow): a file written, a snapshot, the file
changed, exported, deleted, imported: it boots with the file, keeps its snapshot, and the
snapshot restores. A dir pool's VM (a qcow2 overlay on the image's disk, never booted)
exports the whole chain's content. Bad VM tarballs leave nothing.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from .test_vms import create_vm, libvirtd, lxc, run, upload_split, vm_image, wait_agent  # noqa: F401
from .world import make_world, wait_op

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball, libvirtd, vm_image):  # noqa: F811
    with make_world(api, stack, busybox_tarball, network=True, pool_driver="btrfs",
                    pool_config={"size": "2GiB"}) as w:
        fp = upload_split(api, *vm_image)
        w.vm_alias = f"{w.prefix}-vm"
        w.dirpool = f"{w.prefix}d"
        assert api.post("/1.0/storage-pools", json={"name": w.dirpool, "driver": "dir"}
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
            api.delete(f"/1.0/storage-pools/{w.dirpool}")


def vm_volume(w, pool: str, name: str) -> Path:
    return w.stack.dir / "storage-pools" / pool / "virtual-machines" / name


def vm_snapshots(w, pool: str, name: str) -> Path:
    return w.stack.dir / "storage-pools" / pool / "virtual-machines-snapshots" / name


def cat(w, name: str, path: str) -> str:
    code, out, err = run(w, name, ["cat", path])
    assert code == 0, err
    return out


def virtual_size(path: Path) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(yaml.safe_load(out)["virtual-size"])


def test_vm_export_delete_import_boots_with_its_snapshot(world, stack, api, tmp_path):
    w = world
    name = create_vm(w, "vbk", config={"limits.memory": "256MiB"})
    wait_agent(w, name)
    assert run(w, name, ["sh", "-c", "echo one > /root/v && sync"])[0] == 0
    lxc(stack, "stop", name)
    lxc(stack, "snapshot", name, "s0")
    lxc(stack, "start", name)
    wait_agent(w, name)
    assert run(w, name, ["sh", "-c", "echo two > /root/v && sync"])[0] == 0
    lxc(stack, "stop", name)
    size = virtual_size(vm_volume(w, w.pool, name) / "root.qcow2")

    out = tmp_path / "vm.tar.gz"
    lxc(stack, "export", name, str(out))
    with tarfile.open(out) as t:
        m = {i.name: i for i in t.getmembers()}
        idx = yaml.safe_load(t.extractfile("backup/index.yaml").read())  # type: ignore[union-attr]
    names = list(m)
    assert idx["type"] == "virtual-machine" and idx["snapshots"] == ["s0"]
    assert idx["optimized"] is False
    assert idx["config"]["volume"]["content_type"] == "block"
    # LXD's order: each snapshot's tree then its disk, then the volume's tree and disk
    assert m["backup/virtual-machine.img"].size == size
    assert m["backup/virtual-machine-snapshots/s0.img"].size == size
    assert "backup/virtual-machine/backup.yaml" in m
    assert "backup/virtual-machine/metadata.yaml" in m
    assert "backup/virtual-machine-snapshots/s0/metadata.yaml" in m
    assert names.index("backup/virtual-machine-snapshots/s0.img") < \
        names.index("backup/virtual-machine/metadata.yaml") < \
        names.index("backup/virtual-machine.img")
    assert not [n for n in names if n.endswith(("root.qcow2", "rootfs.img"))]

    lxc(stack, "delete", name)
    assert not vm_volume(w, w.pool, name).exists()
    lxc(stack, "import", str(out), "--storage", w.pool)
    inst = w.get(name)
    assert inst["type"] == "virtual-machine"
    snaps = api.get(f"/1.0/instances/{name}/snapshots").json()["metadata"]
    assert [s.rsplit("/", 1)[-1] for s in snaps] == ["s0"]
    assert (vm_snapshots(w, w.pool, name) / "s0" / "root.qcow2").is_file()
    lxc(stack, "start", name)
    wait_agent(w, name)
    assert lxc(stack, "exec", name, "--", "true").returncode == 0
    assert cat(w, name, "/root/v") == "two\n"
    # a running VM exports too (its frozen copy is read); optimized gives a plain backup
    running = tmp_path / "running.tar.gz"
    lxc(stack, "export", name, str(running), "--optimized-storage", "--instance-only")
    with tarfile.open(running) as t:
        names = t.getnames()
        idx = yaml.safe_load(t.extractfile("backup/index.yaml").read())  # type: ignore[union-attr]
    assert idx["optimized"] is False and idx["snapshots"] == []
    assert "backup/virtual-machine.img" in names and not [n for n in names if ".bin" in n]
    lxc(stack, "stop", name, "--force")
    lxc(stack, "restore", name, "s0")
    lxc(stack, "start", name)
    wait_agent(w, name)
    assert cat(w, name, "/root/v") == "one\n"
    lxc(stack, "stop", name, "--force")

    # bad VM tarballs: cut short in the disk, or without the volume's disk: nothing stays
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size * 3 // 4])
    nodisk = tmp_path / "nodisk.tar.gz"
    with tarfile.open(out) as src, tarfile.open(nodisk, "w:gz") as dst:
        for info in src:
            if info.name != "backup/virtual-machine.img":
                dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    for tag, path, why in (("cut", cut, "damaged"), ("nodisk", nodisk, "virtual-machine.img")):
        bad = w.name(tag)
        r = lxc(stack, "import", str(path), bad, "--storage", w.pool, check=False)
        assert r.returncode != 0 and why in r.stderr, r.stderr
        assert api.get(f"/1.0/instances/{bad}").status_code == 404
        assert not vm_volume(w, w.pool, bad).exists()
        assert not vm_snapshots(w, w.pool, bad).exists()
        vols = api.get(f"/1.0/storage-pools/{w.pool}/volumes/virtual-machine").json()
        assert bad not in {v.rsplit("/", 1)[-1] for v in vols["metadata"]}
    lxc(stack, "delete", name)


def test_dir_pool_vm_overlay_exports_the_whole_chain(world, stack, api, tmp_path):
    """A dir pool's VM disk is an overlay on the image volume's rootfs.img: the raw .img
    is the chain's content (compared with qemu-img on the import), never booted."""
    w = world
    name = create_vm(w, "vdir", start=False, devices={
        "root": {"type": "disk", "path": "/", "pool": w.dirpool}})
    disk = vm_volume(w, w.dirpool, name) / "root.qcow2"
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)],
                          capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(info).get("backing-filename")  # an overlay indeed
    out = tmp_path / "vdir.tar"
    lxc(stack, "export", name, str(out), "--compression", "none")
    with tarfile.open(out) as t:
        img = t.getmember("backup/virtual-machine.img")
        assert img.size == virtual_size(disk)
    copy = w.name("vdir2")
    lxc(stack, "import", str(out), copy, "--storage", w.dirpool)
    got = vm_volume(w, w.dirpool, copy) / "root.qcow2"
    r = subprocess.run(["qemu-img", "compare", "-U", str(disk), str(got)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(got)],
                          capture_output=True, text=True, check=True).stdout
    assert not yaml.safe_load(info).get("backing-filename")  # standalone
    assert (vm_volume(w, w.dirpool, copy) / "metadata.yaml").is_file()
    lxc(stack, "delete", name, copy)
    assert not vm_volume(w, w.dirpool, copy).exists()


def test_compressed_qcow2_raw_stream_matches_qemu_img(tmp_path):
    """The export's raw reader on a chain with compressed clusters (LXD images are often
    compressed qcow2): byte for byte what ``qemu-img convert -O raw`` makes."""
    from shared.backup import vmdisk
    from shared.errors import BadRequest

    base, top, comp = tmp_path / "base.qcow2", tmp_path / "top.qcow2", tmp_path / "c.qcow2"
    sh = ["qemu-img", "create", "-q", "-f", "qcow2"]
    subprocess.run([*sh, str(base), "40M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x11 0 3M", "-c", "write -P 0x22 20M 1M",
                    str(base)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(base), str(comp)],
                   check=True)
    subprocess.run([*sh, "-F", "qcow2", "-b", str(comp), str(top)], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x33 1M 64k", "-c", "write -z 20M 4k",
                    str(top)], check=True, capture_output=True)
    ref = tmp_path / "ref.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(top), str(ref)], check=True)
    reader = vmdisk.RawReader(top)
    got = io.BytesIO()
    while data := reader.read(1 << 20):
        got.write(data)
    reader.close()
    assert reader.size == 40 * 2**20 and got.getvalue() == ref.read_bytes()
    # back to a standalone qcow2: through qemu-nbd, and staged (without qemu-nbd)
    for write in (vmdisk.write_qcow2, vmdisk.write_staged):
        back = tmp_path / write.__name__
        back.mkdir()
        got.seek(0)
        write(got.read, reader.size, back)
        assert sorted(p.name for p in back.iterdir()) == ["root.qcow2"]
        assert subprocess.run(["qemu-img", "compare", "-q", str(top),
                               str(back / "root.qcow2")]).returncode == 0
        info = subprocess.run(["qemu-img", "info", "--output=json", str(back / "root.qcow2")],
                              capture_output=True, text=True, check=True).stdout
        assert not yaml.safe_load(info).get("backing-filename")
        # a member shorter than its header says: a 400, nothing left
        with pytest.raises(BadRequest, match="ends early"):
            write(io.BytesIO(b"x" * 100).read, 2 << 20, back / "..")
        assert not (tmp_path / "root.qcow2").exists()


def test_vm_disk_members():
    """The raw disks' tar members (LXD's names) map to their volume or snapshot; a
    container backup holding a .img is refused."""
    from shared.backup import layout
    from shared.errors import BadRequest

    t = layout.member_target
    vm = "virtual-machine"
    assert t("backup/virtual-machine.img", vm, []) == ("img", "")
    assert t("backup/virtual-machine-snapshots/s0.img", vm, ["s0"]) == ("img", "s0")
    assert t("backup/virtual-machine/metadata.yaml", vm, []) == ("volume", "metadata.yaml")
    for name, kind in (("backup/virtual-machine-snapshots/zz.img", vm),
                       ("backup/container.img", "container")):
        with pytest.raises(BadRequest):
            t(name, kind, ["s0"])
