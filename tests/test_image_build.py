"""The busybox image builder: build, inspect, unpack, template, and boot it in LXC."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import BadRequest
from shared.image import build
from shared.image.format import inspect_unified, unpack
from shared.image.templates import apply_templates

ROOT = os.geteuid() == 0


def uid() -> str:
    return "crt" + os.urandom(3).hex()[:5]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.build_busybox(tmp_path_factory.mktemp("img"))


def test_build_inspect_and_reproducible(image: Path, tmp_path: Path) -> None:
    info = inspect_unified(image)
    assert info.architecture == "x86_64" and info.type == "container"
    assert info.properties["os"] == "busybox" and info.properties["variant"] == "default"
    assert {"release", "description"} <= info.properties.keys()
    assert set(info.templates) == {"/etc/hostname", "/etc/hosts"}
    assert all(t.when == ["create", "copy", "start"] for t in info.templates.values())
    out = subprocess.run([sys.executable, "-m", "shared.image.build", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    again = Path(out)
    assert again.parent == tmp_path and again.name == image.name
    assert inspect_unified(again).fingerprint == info.fingerprint  # deterministic output


@pytest.mark.skipif(not ROOT, reason="unpacking with owners needs root")
def test_unpack_layout_and_templates(image: Path, tmp_path: Path) -> None:
    dest = unpack(image, tmp_path / "vol")
    r = dest / "rootfs"
    assert os.readlink(r / "sbin/init") == "/bin/busybox"
    assert os.readlink(r / "bin/sh") == "/bin/busybox" and (r / "bin/busybox").is_file()
    assert os.access(r / "etc/init.d/rcS", os.X_OK)
    assert os.access(r / "usr/share/udhcpc/default.script", os.X_OK)
    assert (r / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (r / "root").stat().st_mode & 0o777 == 0o700
    assert "udhcpc -b -i eth0 -x hostname:" in (r / "etc/init.d/rcS").read_text()
    assert (r / "etc/passwd").read_text().startswith("root:x:0:0:")
    info = inspect_unified(image)
    apply_templates(r, dest / "templates", info.templates, "create", {"name": "bb1"})
    assert (r / "etc/hostname").read_text() == "bb1\n"
    assert "127.0.1.1\tbb1\n" in (r / "etc/hosts").read_text()


def test_busybox_from_deb(tmp_path: Path, image: Path) -> None:
    """The path used when busybox-static is not installed: dpkg -x of the package."""
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "bin").mkdir()
    shutil.copy2(build.BUSYBOX, pkg / "bin/busybox")
    (pkg / "DEBIAN/control").write_text(
        "Package: busybox-static\nVersion: 1:0-test\nArchitecture: amd64\n"
        "Maintainer: t <t@example.invalid>\nDescription: test\n")
    deb = tmp_path / "busybox-static_test_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)],
                   check=True, capture_output=True)
    bb = build.busybox_from_deb(deb, tmp_path / "work")
    assert bb.read_bytes() == build.BUSYBOX.read_bytes()
    img = build.build_busybox(tmp_path / "out", busybox=bb)
    assert inspect_unified(img).fingerprint == inspect_unified(image).fingerprint
    gz = build.build_busybox(tmp_path / "out", busybox=bb, alias_hint="bbdeb",
                             compression="gz")
    assert gz.name.startswith("bbdeb-") and gz.name.endswith(".tar.gz")
    assert inspect_unified(gz).fingerprint == inspect_unified(
        build.build_busybox(tmp_path / "gz2", busybox=bb, compression="gz")).fingerprint
    with pytest.raises(BadRequest, match="alias hint"):
        build.build_busybox(tmp_path / "out", alias_hint="../x")


@pytest.mark.skipif(not ROOT, reason="needs root for a network namespace")
def test_udhcpc_script_applies_lease(tmp_path: Path) -> None:
    """Run the lease hook with busybox's own ip/grep in a throwaway network namespace."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for applet in ("sh", "ip", "grep", "cat", "rm"):
        (bindir / applet).symlink_to(build.BUSYBOX)
    script = tmp_path / "default.script"
    script.write_text(build.UDHCPC_SCRIPT)
    resolv = tmp_path / "resolv.conf"
    ifname = uid()
    env = {"PATH": str(bindir), "interface": ifname, "ip": "10.213.7.5", "mask": "24",
           "broadcast": "10.213.7.255", "router": "10.213.7.1", "dns": "10.213.7.1 10.213.7.2",
           "domain": "lxd", "RESOLV_CONF": str(resolv)}
    ip, unshare = shutil.which("ip"), shutil.which("unshare")
    assert ip and unshare
    # unshare -n: the namespace and the veth die with this one command.
    cmd = (f"{ip} link add {ifname} type veth peer name {ifname}p && "
           f"{ip} link set {ifname}p up && {bindir}/sh {script} deconfig && "
           f"{bindir}/sh {script} bound && {bindir}/sh {script} renew && "
           f"{ip} -4 -o addr show dev {ifname} && {ip} -4 route")
    res = subprocess.run([unshare, "--net", "/bin/sh", "-c", cmd], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "inet 10.213.7.5/24 brd 10.213.7.255" in res.stdout
    assert f"default via 10.213.7.1 dev {ifname}" in res.stdout
    assert res.stdout.count("10.213.7.5/24") == 1  # renew did not duplicate the address
    assert resolv.read_text() == "search lxd\nnameserver 10.213.7.1\nnameserver 10.213.7.2\n"


# ---------------------------------------------------------------- boot it with LXC


def _own_cgroups() -> dict[str, str]:
    """Map each cgroup mount point to this process's cgroup path under it."""
    mounts: dict[str, str] = {}
    for line in open("/proc/self/mountinfo"):
        pre, post = line.split(" - ")
        fstype, _, opts = post.split()
        if fstype == "cgroup2":
            mounts[""] = pre.split()[4]
        elif fstype == "cgroup":
            for o in opts.split(","):
                if o not in ("rw", "ro") and not o.startswith(("xattr", "release_agent")):
                    mounts.setdefault(o, pre.split()[4])
    out: dict[str, str] = {}
    for line in open("/proc/self/cgroup"):
        _, ctrls, path = line.rstrip("\n").split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            if c in mounts:
                out[mounts[c]] = path
    return out


def _restore_cgroups(saved: dict[str, str]) -> None:
    """python-lxc's start() moves the caller into lxc.monitor.NAME; move this process back."""
    for mnt, path in saved.items():
        with open(os.path.join(mnt, path.lstrip("/"), "cgroup.procs"), "w") as f:
            f.write("0")


def _remove_cgroups(name: str) -> None:
    for _ in range(100):
        left = sorted(glob.glob(f"/sys/fs/cgroup/*/lxc.*.{name}")
                      + glob.glob(f"/sys/fs/cgroup/*/lxc.*.{name}/**/", recursive=True),
                      key=len, reverse=True)
        for d in left:
            try:
                os.rmdir(d)
            except OSError:
                pass
        if not glob.glob(f"/sys/fs/cgroup/*/lxc.*.{name}"):
            return
        time.sleep(0.1)


@pytest.fixture
def container(image: Path, tmp_path: Path) -> Iterator[tuple[object, str, Path]]:
    lxc = pytest.importorskip("lxc")
    name = uid()
    lxcpath = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_path))
    vol = unpack(image, lxcpath / "image")
    (lxcpath / name).mkdir()
    (lxcpath / name / "config").write_text(
        "lxc.include = /usr/share/lxc/config/common.conf\n"
        "lxc.arch = x86_64\n"
        f"lxc.rootfs.path = dir:{vol / 'rootfs'}\n"
        "lxc.uts.name = placeholder\n"  # rcS must replace it from /etc/hostname
        "lxc.net.0.type = empty\n"
        "lxc.signal.halt = SIGUSR2\n"  # busybox init powers off on SIGUSR2
        "lxc.apparmor.profile = unconfined\n"
        f"lxc.log.file = {lxcpath / 'lxc.log'}\n")
    saved = _own_cgroups()
    c = lxc.Container(name, config_path=str(lxcpath))
    try:
        yield c, name, vol
    finally:
        if c.running:
            c.stop()
        _restore_cgroups(saved)
        c.destroy()
        _remove_cgroups(name)
        shutil.rmtree(lxcpath, ignore_errors=True)


@pytest.mark.skipif(not ROOT, reason="LXC containers need root")
def test_boot_in_lxc(container: tuple, image: Path) -> None:
    import lxc

    c, name, vol = container
    info = inspect_unified(image)
    apply_templates(vol / "rootfs", vol / "templates", info.templates, "start", {"name": name})
    saved = _own_cgroups()
    try:
        assert c.start(), "lxc start failed"
    finally:
        _restore_cgroups(saved)
    assert c.wait("RUNNING", 10)
    out = ""
    for _ in range(100):  # rcS runs asynchronously after init; poll until it is done
        with tempfile.TemporaryFile() as f:
            rc = c.attach_wait(lxc.attach_run_command,
                               ["/bin/sh", "-c", "cat /proc/1/comm; hostname; "
                                "grep -c ' /run tmpfs ' /proc/mounts"], stdout=f)
            f.seek(0)
            out = f.read().decode()
        if rc == 0 and out.split()[1:2] == [name]:
            break
        time.sleep(0.1)
    assert out.split() == ["init", name, "1"], out
    assert c.shutdown(20), "busybox init did not power off on SIGUSR2"
    assert c.state == "STOPPED"
