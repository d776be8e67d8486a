"""Pure logic of OCI images and application containers: references, manifest choice,
skopeo's errors, the process of an app with its overrides, oci.* keys, the static
address of an app's NIC."""

from __future__ import annotations

import ipaddress
import json

import pytest
import yaml

from services.instance.drivers import oci_app
from shared.errors import BadRequest, NotFound
from shared.image import oci
from shared.messages.network import Nic


@pytest.mark.parametrize("server,alias,want", [
    ("https://reg:5000", "alpine:3.20", ("reg:5000", "alpine", "3.20", "")),
    ("https://reg:5000/", "library/alpine", ("reg:5000", "library/alpine", "latest", "")),
    ("docker.io", "a/b-c_d.e:v1", ("docker.io", "a/b-c_d.e", "v1", "")),
    ("https://reg", "x@sha256:" + "a" * 64, ("reg", "x", "", "sha256:" + "a" * 64)),
    ("https://reg", "x:t@sha256:" + "b" * 64, ("reg", "x", "", "sha256:" + "b" * 64)),
])
def test_parse_reference(server, alias, want):
    ref = oci.parse_reference(server, alias)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == want
    assert ref.transport().startswith(f"docker://{want[0]}/{want[1]}")


@pytest.mark.parametrize("server,alias", [
    ("https://reg", ""), ("https://reg", "Upper/case"), ("https://reg", "x:bad tag"),
    ("https://reg", "x@sha256:12"), ("http://reg", "x"), ("", "x"), ("https://a/b/c", "x"),
])
def test_parse_reference_refuses(server, alias):
    with pytest.raises(BadRequest):
        oci.parse_reference(server, alias)


def test_pick_manifest():
    plain = json.dumps({"schemaVersion": 2, "layers": [{"size": 3}, {"size": 4}]}).encode()
    assert oci.pick_manifest(plain, "x86_64") is None
    assert oci.layers_size(plain) == 7
    index = json.dumps({"mediaType": oci.INDEX_TYPES[0], "manifests": [
        {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
    ]}).encode()
    assert oci.pick_manifest(index, "x86_64") == "sha256:" + "2" * 64
    assert oci.pick_manifest(index, "aarch64") == "sha256:" + "1" * 64
    with pytest.raises(NotFound, match="linux/s390x"):
        oci.pick_manifest(index, "s390x")


@pytest.mark.parametrize("stderr,code", [
    ('time="x" level=fatal msg="reading manifest v in r/x: manifest unknown"', 404),
    ("unauthorized: authentication required", 403),
    ("x509: certificate signed by unknown authority", 503),
    ("dial tcp 127.0.0.1:1: connect: connection refused", 503),
    ("writing blob: happened during read: Digest did not match, expected sha256:aa, "
     "got sha256:bb", 400),
])
def test_skopeo_errors(stderr, code):
    err = oci.skopeo_error(stderr, oci.parse_reference("https://r", "x:v"))
    assert err.code == code and "Error parsing image name" not in err.message


def test_metadata_yaml_and_process():
    doc = yaml.safe_load(oci.metadata_yaml(oci.parse_reference("https://r", "a/b:1"),
                                           "amd64", 5))
    assert doc == {"architecture": "x86_64", "creation_date": 5, "properties": {
        "architecture": "x86_64", "type": "oci", "description": "r/a/b:1 (OCI)",
        "id": "a/b:1"}}
    with pytest.raises(BadRequest, match="oci.entrypoint"):
        oci.runtime_process({"process": {"args": []}})


def _volume(tmp_path, proc):
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"process": proc}))
    return tmp_path / "rootfs"


def test_app_process_and_overrides(tmp_path):
    root = _volume(tmp_path, {"args": ["/bin/app", "--x"], "cwd": "/srv",
                              "env": ["A=1", "B=x=y"], "user": {"uid": 5, "gid": 6}})
    assert oci_app.is_app(root) and not oci_app.is_app(tmp_path / "other" / "rootfs")
    p = oci_app.process(root, {})
    assert p == {"args": ["/bin/app", "--x"], "cwd": "/srv", "uid": 5, "gid": 6,
                 "env": {"A": "1", "B": "x=y", "PATH": oci_app.DEFAULT_PATH}}
    p = oci_app.process(root, {"oci.entrypoint": "/bin/sh -c 'echo a b'", "oci.cwd": "/",
                               "oci.uid": "0", "oci.gid": "7", "environment.A": "2"})
    assert p["args"] == ["/bin/sh", "-c", "echo a b"]
    assert (p["cwd"], p["uid"], p["gid"], p["env"]["A"]) == ("/", 0, 7, "2")
    lines = oci_app.config_lines(p, [])
    assert "lxc.init.uid = 0" in lines and "lxc.environment = A=2" in lines


def test_app_without_a_command(tmp_path):
    with pytest.raises(BadRequest, match="oci.entrypoint"):
        oci_app.process(_volume(tmp_path, {"args": []}), {})


@pytest.mark.parametrize("key,value", [
    ("oci.uid", "-1"), ("oci.gid", "x"), ("oci.cwd", "rel"), ("oci.entrypoint", "'a"),
    ("oci.entrypoint", "   "), ("oci.other", "1"), ("oci.cwd", "/a\nb"),
])
def test_oci_keys_refused(key, value):
    with pytest.raises(BadRequest, match=key.replace(".", r"\.")):
        oci_app.check_keys({key: value})


def test_oci_keys_accepted_and_refused_on_system():
    oci_app.check_keys({"oci.uid": "1000", "oci.entrypoint": "/bin/sh -c 'x'",
                        "oci.cwd": "/srv", "oci.gid": "", "limits.cpu": "1"})
    oci_app.refuse_on_system({"oci.uid": ""})
    with pytest.raises(BadRequest, match="application containers"):
        oci_app.refuse_on_system({"oci.uid": "1"})


def test_static_address_is_stable_and_in_the_upper_half(monkeypatch):
    gw = ipaddress.IPv4Interface("10.9.8.1/24")
    monkeypatch.setattr(oci_app, "bridge_ipv4", lambda _b: gw)
    monkeypatch.setattr(oci_app, "bridge_neighbours", lambda _b: set())
    nic = Nic(name="eth0", bridge="br0", hwaddr="00:16:3e:aa:bb:cc")
    addr, via = oci_app.static_address(nic)
    assert via == "10.9.8.1" and addr == oci_app.static_address(nic)[0]
    ip = ipaddress.IPv4Interface(addr)
    assert ip.network == gw.network and int(ip.ip) - int(gw.network.network_address) >= 128
    assert ip.ip != gw.network.broadcast_address
    other = oci_app.static_address(Nic(name="eth0", bridge="br0", hwaddr="00:16:3e:00:00:01"))
    assert other[0] != addr
    assert oci_app.static_address(Nic(name="eth0", nictype="macvlan", parent="x")) is None


def test_static_address_skips_used_and_takes_the_device_address(monkeypatch):
    gw = ipaddress.IPv4Interface("10.9.8.1/24")
    monkeypatch.setattr(oci_app, "bridge_ipv4", lambda _b: gw)
    nic = Nic(name="eth0", bridge="br0", hwaddr="00:16:3e:aa:bb:cc")
    monkeypatch.setattr(oci_app, "bridge_neighbours", lambda _b: set())
    first = oci_app.static_address(nic)[0].split("/")[0]
    monkeypatch.setattr(oci_app, "bridge_neighbours", lambda _b: {first})
    assert oci_app.static_address(nic)[0].split("/")[0] != first
    assert oci_app.static_address(nic, "10.9.8.20") == ("10.9.8.20/24", "10.9.8.1")
    for bad in ("10.9.9.20", "10.9.8.1", "nonsense"):
        with pytest.raises(BadRequest):
            oci_app.static_address(nic, bad)
    lines = oci_app.config_lines({"args": ["/x"], "cwd": "/", "uid": 0, "gid": 0, "env": {}},
                                 [nic], {"eth0": {"type": "nic", "ipv4.address": "10.9.8.30"},
                                         "root": {"type": "disk"}})
    assert "lxc.net.0.ipv4.address = 10.9.8.30/24" in lines
    assert "lxc.net.0.ipv4.gateway = 10.9.8.1" in lines


def test_network_files_and_one_default_route(monkeypatch, tmp_path):
    gw = ipaddress.IPv4Interface("10.9.8.1/24")
    monkeypatch.setattr(oci_app, "bridge_ipv4", lambda _b: gw)
    monkeypatch.setattr(oci_app, "bridge_neighbours", lambda _b: set())
    nics = [Nic(name="eth0", bridge="br0", hwaddr="00:16:3e:00:00:01"),
            Nic(name="eth1", bridge="br0", hwaddr="00:16:3e:00:00:02")]
    proc = {"args": ["/x"], "cwd": "/", "uid": 0, "gid": 0, "env": {}}
    lines = oci_app.config_lines(proc, nics, {}, tmp_path, "p1_web")
    assert [ln for ln in lines if ".ipv4.gateway" in ln] == ["lxc.net.0.ipv4.gateway = 10.9.8.1"]
    d = tmp_path / oci_app.NET_DIR
    assert (d / "resolv.conf").read_text().startswith("nameserver 10.9.8.1\n")
    assert (d / "hostname").read_text() == "web\n"  # the project prefix is not the name
    assert "web" in (d / "hosts").read_text()
    assert f"lxc.mount.entry = {d / 'resolv.conf'} etc/resolv.conf none " \
           "bind,ro,create=file,optional 0 0" in lines


def test_find_command_resolves_inside_the_rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "bin/busybox").write_text("x")
    (root / "bin/busybox").chmod(0o755)
    (root / "bin/sh").symlink_to("busybox")
    (root / "usr/local/bin/tool").symlink_to("/bin/busybox")  # absolute: inside root
    (root / "bin/env").symlink_to("/usr/bin/env")  # exists on the host, not in root
    (root / "bin/data").write_text("not executable")
    (root / "loop").symlink_to("loop")
    assert oci_app.find_command(root, "/bin/sh", "")
    assert oci_app.find_command(root, "sh", "/usr/bin:/bin")
    assert oci_app.find_command(root, "tool", "/usr/local/bin")
    assert oci_app.find_command(root, "/usr/local/bin/../../../bin/sh", "")
    assert not oci_app.find_command(root, "/bin/env", "")
    assert not oci_app.find_command(root, "/bin/data", "")
    assert not oci_app.find_command(root, "sh", "/usr/bin")
    assert not oci_app.find_command(root, "/loop", "")


def test_exit_code_waits_for_a_live_wrapper(tmp_path):
    import subprocess
    import time

    d = tmp_path / "c1"
    d.mkdir()
    assert oci_app.exit_code(tmp_path, "c1", settle=1.0) is None  # no wrapper: at once
    out = d / oci_app.EXIT_CODE
    sh = subprocess.Popen(["/bin/sh", "-c", 'sleep 0.3; echo 4 > "$1"', "sh", str(out)])
    (d / oci_app.WRAPPER_PID).write_text(str(sh.pid))
    t = time.monotonic()
    assert oci_app.exit_code(tmp_path, "c1", settle=5.0) == 4
    assert time.monotonic() - t < 3
    sh.wait()
