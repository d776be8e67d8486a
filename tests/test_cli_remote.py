"""``corral remote``, ``corral image list|copy|refresh`` and ``corral launch REMOTE:ALIAS``
through the real ``corral`` CLI, against the session's stack and a simplestreams tree
served over HTTPS on loopback (tests/simplestreams.py, a self-signed certificate).

Each test has its own CORRAL_CONF (the remotes file), so nothing leaks between tests or
into the user's ~/.config/corral.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from .simplestreams import StreamServer, make_cert
from .stack import BIN
from .world import make_world

pytestmark = pytest.mark.root
if os.geteuid() != 0 or shutil.which("mksquashfs") is None:
    pytest.skip("needs root and squashfs-tools", allow_module_level=True)

V1, V2 = "20260101_0000", "20260102_0000"


@pytest.fixture(scope="module")
def streams(tmp_path_factory, busybox_tarball):
    srv = StreamServer(tmp_path_factory.mktemp("cli-streams") / "tree", busybox_tarball,
                       os_name="clibox")
    srv.add_version(V1, rootfs=("squashfs",))
    with srv:
        yield srv


@pytest.fixture
def conf(tmp_path) -> Path:
    return tmp_path / "corral-conf"


def corral(stack, conf: Path, *args: str, timeout: float = 300, stdin: str | None = None
           ) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "corral"), *args],
                          env={**stack.env, "CORRAL_CONF": str(conf)}, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.args, r.stdout, r.stderr)
    return r


def add_remote(stack, conf: Path, streams: StreamServer, name: str = "ss") -> None:
    ok(corral(stack, conf, "remote", "add", name, streams.url, "--protocol",
              "simplestreams", "--accept-certificate"))


# -- remotes -----------------------------------------------------------------------------


def test_remote_add_pins_the_certificate_only_when_accepted(stack, conf, streams):
    from services.cli.remotes import fingerprint

    r = corral(stack, conf, "remote", "add", "ss", streams.url, "--protocol",
               "simplestreams")
    assert r.returncode == 2, r.stderr
    assert fingerprint(streams.cert_pem) in r.stderr and "--accept-certificate" in r.stderr
    assert not (conf / "remotes.json").exists()  # nothing kept

    r = ok(corral(stack, conf, "remote", "add", "ss", streams.url, "--protocol",
                  "simplestreams", "--accept-certificate"))
    assert fingerprint(streams.cert_pem) in r.stdout
    f = conf / "remotes.json"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    saved = json.loads(f.read_text())["remotes"]["ss"]
    assert saved["url"] == streams.url and saved["protocol"] == "simplestreams"
    assert fingerprint(saved["certificate"]) == fingerprint(streams.cert_pem)

    listed = json.loads(ok(corral(stack, conf, "remote", "list", "--format",
                                  "json")).stdout)
    assert [x["name"] for x in listed] == ["local", "ss"]
    assert listed[1]["certificate_fingerprint"] == fingerprint(streams.cert_pem)

    r = corral(stack, conf, "remote", "add", "ss", streams.url, "--protocol",
               "simplestreams", "--accept-certificate")
    assert r.returncode == 2 and "already exists" in r.stderr
    ok(corral(stack, conf, "remote", "rename", "ss", "ss2"))
    ok(corral(stack, conf, "remote", "remove", "ss2"))
    assert json.loads(ok(corral(stack, conf, "remote", "list", "--format",
                                "json")).stdout) == [{"name": "local", "url": "unix://",
                                                      "protocol": "lxd"}]
    r = corral(stack, conf, "remote", "remove", "local")
    assert r.returncode == 2 and "cannot be removed" in r.stderr


@pytest.mark.parametrize("answer", ["y", "n"])
def test_remote_add_asks_on_a_terminal(stack, conf, streams, answer):
    import shlex

    from services.cli.remotes import fingerprint

    cmd = shlex.join([str(BIN / "corral"), "remote", "add", "ss", streams.url,
                      "--protocol", "simplestreams"])
    r = subprocess.run(["script", "-qefc", cmd, "/dev/null"], input=f"{answer}\n",
                       capture_output=True, text=True, timeout=60,
                       env={**stack.env, "CORRAL_CONF": str(conf)})
    assert fingerprint(streams.cert_pem) in r.stdout and "ok (y/n)?" in r.stdout
    saved = (conf / "remotes.json").exists()
    if answer == "y":
        assert r.returncode == 0 and saved, r.stdout
    else:
        assert r.returncode == 2 and "NACKed" in r.stdout and not saved, r.stdout


def test_remote_add_bad_input(stack, conf):
    r = corral(stack, conf, "remote", "add", "x", "http://192.0.2.1", "--protocol",
               "simplestreams")
    assert r.returncode == 2 and "https" in r.stderr
    r = corral(stack, conf, "remote", "add", "x", "https://127.0.0.1:1", "--protocol",
               "docker")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = corral(stack, conf, "remote", "add", "x", "https://127.0.0.1:1", "--protocol",
               "simplestreams", "--accept-certificate")
    assert r.returncode == 1 and "Cannot reach" in r.stderr
    assert not (conf / "remotes.json").exists()


def test_image_list_of_a_simplestreams_remote(stack, conf, streams):
    add_remote(stack, conf, streams)
    images = json.loads(ok(corral(stack, conf, "image", "list", "ss:", "--format",
                                  "json")).stdout)
    by_fp = {i["fingerprint"]: i for i in images}
    served = {fp for fps in streams.fingerprints.values() for k, fp in fps.items()
              if k != "meta"}
    assert set(by_fp) == served
    fp = streams.fingerprints[V1]["squashfs"]
    assert "clibox/1.36" in {a["name"] for a in by_fp[fp]["aliases"]}
    rows = ok(corral(stack, conf, "image", "list", "ss:", "--format", "csv")).stdout
    assert streams.fingerprints[V1]["squashfs"][:12] in rows


def test_a_changed_certificate_is_refused(stack, conf, streams, tmp_path):
    add_remote(stack, conf, streams)
    f = conf / "remotes.json"
    doc = json.loads(f.read_text())
    doc["remotes"]["ss"]["certificate"] = make_cert(tmp_path / "other")[2]
    f.write_text(json.dumps(doc))
    r = corral(stack, conf, "image", "list", "ss:")
    assert r.returncode == 1 and "not the one pinned" in r.stderr


def test_oci_remote_cannot_list_and_unknown_remote_is_named(stack, conf):
    ok(corral(stack, conf, "remote", "add", "hub", "http://127.0.0.1:5999", "--protocol",
              "oci", "--user", "u", "--password", "p"))
    assert json.loads((conf / "remotes.json").read_text())["remotes"]["hub"][
        "credentials"] == "u:p"
    r = corral(stack, conf, "image", "list", "hub:")
    assert r.returncode == 1 and "no image listing" in r.stderr
    r = corral(stack, conf, "launch", "nowhere:busybox")
    assert r.returncode == 2 and "Unknown remote 'nowhere'" in r.stderr


# -- pulls (the image service's pull core) -----------------------------------------------


@pytest.fixture(scope="module")
def world(api, stack, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        yield w


def _images(api) -> dict[str, dict]:
    return {i["fingerprint"]: i for i in api.get("/1.0/images",
                                                 params={"recursion": 1}).json()["metadata"]}


def _delete_image(api, fp: str) -> None:
    r = api.delete(f"/1.0/images/{fp}")
    if r.status_code == 202:
        api.get(f"{r.json()['operation']}/wait", params={"timeout": 60})


def test_image_copy_with_alias_auto_update_and_progress(stack, conf, streams, api, uid):
    add_remote(stack, conf, streams)
    fp = streams.fingerprints[V1]["squashfs"]
    _delete_image(api, fp)
    try:
        r = ok(corral(stack, conf, "image", "copy", "ss:clibox/1.36", "local:", "--alias",
                      uid, "--auto-update"))
        assert fp in r.stdout
        # not a tty: plain progress lines from download_progress
        assert "Copying the image:" in r.stderr and "%" in r.stderr, r.stderr
        img = _images(api)[fp]
        assert img["auto_update"] is True and img["cached"] is False
        assert [a["name"] for a in img["aliases"]] == [uid]
        assert img["update_source"]["server"] == streams.url
        assert img["update_source"]["alias"] == "clibox/1.36"
        r = ok(corral(stack, conf, "image", "refresh", uid))
        assert "already up to date" in r.stdout
    finally:
        _delete_image(api, fp)


def test_image_refresh_takes_a_newer_version(stack, conf, streams, api, uid):
    add_remote(stack, conf, streams)
    old = streams.add_version(V1, variant="upd", rootfs=("squashfs",))["squashfs"]
    new = ""
    try:
        ok(corral(stack, conf, "image", "copy", "ss:clibox/1.36/upd", "--alias", uid,
                  "--auto-update"))
        new = streams.add_version(V2, variant="upd", rootfs=("squashfs",))["squashfs"]
        r = ok(corral(stack, conf, "image", "refresh", uid))
        assert "refreshed successfully" in r.stdout
        now = _images(api)
        assert old not in now and [a["name"] for a in now[new]["aliases"]] == [uid]
        r = corral(stack, conf, "image", "refresh", "nosuchimage")
        assert r.returncode == 1 and "not found" in r.stderr.lower()
    finally:
        for fp in (old, new):
            if fp:
                _delete_image(api, fp)


def test_progress_bar_on_a_terminal(stack, conf, streams, api, uid):
    """On a tty the download is a rich progress bar (a pty made by script(1))."""
    import shlex

    add_remote(stack, conf, streams)
    fp = streams.fingerprints[V1]["squashfs"]
    _delete_image(api, fp)
    cmd = shlex.join([str(BIN / "corral"), "image", "copy", "ss:clibox/1.36", "local:"])
    streams.throttle = 400 * 1024
    try:
        r = subprocess.run(["script", "-qefc", cmd, "/dev/null"], capture_output=True,
                           env={**stack.env, "CORRAL_CONF": str(conf), "COLUMNS": "100",
                                "TERM": "xterm"}, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        streams.throttle = 0
        _delete_image(api, fp)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out
    assert "Copying the image" in out and "\u2501" in out and "rootfs:" in out, out
    assert "Copying the image: rootfs" not in out  # not the plain lines of a pipe


def test_launch_from_a_remote_alias(stack, conf, streams, api, world):
    add_remote(stack, conf, streams)
    fp = streams.fingerprints[V1]["squashfs"]
    name = world.name("cli-pull")
    streams.throttle = 400 * 1024  # ~3 s: the CLI sees the download under way
    try:
        r = ok(corral(stack, conf, "launch", "ss:clibox/1.36", name, "-p", world.profile))
    finally:
        streams.throttle = 0
    assert "Retrieving image: rootfs:" in r.stderr and "%" in r.stderr, r.stderr
    inst = world.get(name)
    assert inst["status"] == "Running"
    assert inst["config"]["volatile.base_image"] == fp
    assert _images(api)[fp]["cached"] is True
    world.remove(name)
    _delete_image(api, fp)


def test_image_list_of_a_corral_over_lxd_and_its_simplestreams_tree(stack, conf, api,
                                                                    world):
    """This Corral's HTTPS listener as a remote (its self-signed leaf certificate pinned):
    over the lxd protocol an untrusted client sees public images only; its served
    simplestreams tree lists the same."""
    from .simplestreams import free_port

    before = api.get("/1.0").json()["metadata"]["config"].get("core.https_address", "")
    port = free_port()
    assert api.patch("/1.0", json={"config": {"core.https_address": f"127.0.0.1:{port}"}}
                     ).status_code == 200
    try:
        url = f"https://127.0.0.1:{port}"
        ok(corral(stack, conf, "remote", "add", "me", url, "--accept-certificate"))
        ok(corral(stack, conf, "remote", "add", "mess", url, "--protocol", "simplestreams",
                  "--accept-certificate"))

        def listed(remote: str) -> set[str]:
            out = ok(corral(stack, conf, "image", "list", f"{remote}:", "--format", "json"))
            return {i["fingerprint"] for i in json.loads(out.stdout)}

        assert world.fingerprint not in listed("me")  # private
        assert api.patch(f"/1.0/images/{world.fingerprint}", json={"public": True}
                         ).status_code == 200
        assert world.fingerprint in listed("me")
        assert world.fingerprint in listed("mess")
    finally:
        api.patch(f"/1.0/images/{world.fingerprint}", json={"public": False})
        api.patch("/1.0", json={"config": {"core.https_address": before}})


# -- oci remotes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    """Two TLS registries on loopback holding an echoing app: anonymous, basic auth."""
    for tool in ("skopeo", "umoci", "docker-registry", "lxc-execute"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    from .oci_registry import build_busybox_image, start_registry

    d = tmp_path_factory.mktemp("cli-oci")
    regs = []
    try:
        lay = build_busybox_image(d, "echo", entrypoint=["/bin/sh", "-c"],
                                  cmd=["echo hello-from-oci; exit 3"], env=["PATH=/bin"])
        for sub, user in (("anon", ""), ("auth", "corral")):
            reg = start_registry(d / sub, user, "pw-" + sub if user else "")
            regs.append(reg)
            reg.push(lay, "echo", "corral/echo:v1")
        yield regs
    finally:
        for reg in regs:
            reg.stop()


def test_launch_from_an_oci_remote(stack, conf, api, world, registries):
    anon = registries[0]
    ok(corral(stack, conf, "remote", "add", "hub", anon.server, "--protocol", "oci",
              "--accept-certificate"))
    name = world.name("oci")
    ok(corral(stack, conf, "launch", "hub:corral/echo:v1", name, "-p", world.profile))
    fp = anon.pushed["corral/echo:v1"].split(":")[1]
    try:
        assert world.get(name)["config"]["volatile.base_image"] == fp
        from .stack import wait_for

        wait_for(lambda: world.live(name)["status"] == "Stopped", 30,
                 what="the app to exit")
        assert world.live(name).get("exit_code") == 3
    finally:
        world.remove(name)
        _delete_image(api, fp)


def test_image_copy_from_an_oci_remote_with_basic_auth(stack, conf, api, registries):
    auth = registries[1]
    ok(corral(stack, conf, "remote", "add", "priv", auth.server, "--protocol", "oci",
              "--accept-certificate", "--user", auth.user, "--password", auth.password))
    fp = auth.pushed["corral/echo:v1"].split(":")[1]
    try:
        r = ok(corral(stack, conf, "image", "copy", "priv:corral/echo:v1"))
        assert fp in r.stdout
    finally:
        _delete_image(api, fp)
    ok(corral(stack, conf, "remote", "add", "nopw", auth.server, "--protocol", "oci",
              "--accept-certificate"))
    r = corral(stack, conf, "image", "copy", "nopw:corral/echo:v1")
    assert r.returncode == 1 and "credentials" in r.stderr.lower(), r.stderr
