"""LXD's warnings through the stock client: ``lxc warning list/show/ack/delete``.

The host facts are real: this kernel has no AppArmor, and its cgroup v1 blkio controller
has no ``blkio.weight``; a btrfs pool whose loop file is gone cannot be mounted.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from .stack import BIN, wait_for
from .test_storage_service import force_remove, loop_file, pool_path

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)

APPARMOR = "AppArmor support has been disabled"
POOL = "Storage pool unavailable"


def lxc(stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["lxc", *args], env={**stack.env, "LXD_DIR": str(stack.dir)},
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def listed(stack, *flags: str) -> list[dict]:
    return yaml.safe_load(lxc(stack, "warning", "list", "--format", "yaml", *flags).stdout) \
        or []


def by_type(api, type_: str, entity_url: str = "") -> dict | None:
    found = [w for w in api.get("/1.0/warnings", params={"recursion": 1}).json()["metadata"]
             if w["type"] == type_ and w["entity_url"] == entity_url]
    return found[0] if found else None


def test_host_warnings_list_show_ack_delete(stack, api):
    wait_for(lambda: by_type(api, APPARMOR) is not None, 20, what="the AppArmor warning")
    rows = listed(stack)
    apparmor = next(r for r in rows if r["type"] == APPARMOR)
    assert apparmor["status"] == "new" and apparmor["severity"] == "low"
    assert apparmor["count"] >= 1 and "AppArmor" in apparmor["last_message"]
    uuid = apparmor["uuid"]
    assert any(r["type"].startswith("Couldn't find the CGroup blkio.weight") for r in rows)
    shown = yaml.safe_load(lxc(stack, "warning", "show", uuid).stdout)
    assert shown["uuid"] == uuid and shown["type"] == APPARMOR

    lxc(stack, "warning", "ack", uuid)
    assert api.get(f"/1.0/warnings/{uuid}").json()["metadata"]["status"] == "acknowledged"
    assert uuid not in [r["uuid"] for r in listed(stack)]  # acknowledged: only with --all
    assert uuid in [r["uuid"] for r in listed(stack, "--all")]

    lxc(stack, "warning", "delete", uuid)
    assert api.get(f"/1.0/warnings/{uuid}").status_code == 404
    r = lxc(stack, "warning", "show", uuid, check=False)
    assert r.returncode != 0 and "not found" in r.stderr.lower()
    # the host did not change: the instance service raises it again when it starts
    stack.stop("instance")
    stack.start("instance")
    wait_for(lambda: by_type(api, APPARMOR) is not None, 30, what="the warning raised again")
    assert by_type(api, APPARMOR)["count"] == 1


def test_warning_status_rules(api):
    wait_for(lambda: by_type(api, APPARMOR) is not None, 30)
    uuid = by_type(api, APPARMOR)["uuid"]
    r = api.put(f"/1.0/warnings/{uuid}", json={"status": "resolved"})
    assert r.status_code == 403
    r = api.put(f"/1.0/warnings/{uuid}", json={"status": "nonsense"})
    assert r.status_code == 400 and "acknowledged" in r.json()["error"]
    assert api.put(f"/1.0/warnings/{uuid}", json={"status": "new"}).status_code == 200
    assert api.get("/1.0/warnings/0000").status_code == 404
    assert api.delete("/1.0/warnings/0000").status_code == 404
    urls = api.get("/1.0/warnings").json()["metadata"]
    assert f"/1.0/warnings/{uuid}" in urls
    r = api.get("/1.0/warnings", params={"project": "nosuch"})  # 404 once projects exist
    assert r.status_code == 404 or r.json()["metadata"] == [], r.text


def test_unmountable_pool_is_a_warning(stack, api, uid):
    r = api.post("/1.0/storage-pools", json={"name": uid, "driver": "btrfs",
                                             "config": {"size": "256MiB"}})
    assert r.status_code == 200, r.text
    path, img = pool_path(stack, uid), loop_file(stack, uid)
    aside = img.with_name(img.name + ".aside")
    try:
        stack.stop("storage")
        subprocess.run(["umount", str(path)], check=True)
        img.rename(aside)
        stack.start("storage")
        wait_for(lambda: by_type(api, POOL, f"/1.0/storage-pools/{uid}") is not None, 30,
                 what="the pool warning")
        warning = by_type(api, POOL, f"/1.0/storage-pools/{uid}")
        assert warning["severity"] == "high" and uid in warning["last_message"]
        assert any(r["uuid"] == warning["uuid"] for r in listed(stack))
        aside.rename(img)
        stack.stop("storage")  # mounts again at start: the warning is resolved
        stack.start("storage")
        wait_for(lambda: by_type(api, POOL, f"/1.0/storage-pools/{uid}")["status"]
                 == "resolved", 30, what="the pool warning resolved")
        assert not any(r["uuid"] == warning["uuid"] for r in listed(stack))
        api.delete(f"/1.0/warnings/{warning['uuid']}")
    finally:
        if aside.exists():
            aside.rename(img)
        wait_for(lambda: api.get("/1.0/storage-pools").status_code == 200, 30)
        if api.delete(f"/1.0/storage-pools/{uid}").status_code not in (200, 404) \
                or pool_path(stack, uid).exists():
            force_remove(stack, uid)


def corral(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "corral"), *args], env=stack.env, capture_output=True,
                          text=True, timeout=60)


def test_corral_warning_cli(stack, api):
    wait_for(lambda: by_type(api, APPARMOR) is not None, 30)
    uuid = by_type(api, APPARMOR)["uuid"]
    api.put(f"/1.0/warnings/{uuid}", json={"status": "new"})
    r = corral(stack, "warning", "list", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert any(line.startswith(uuid + ",") and ",NEW," in line for line in r.stdout.splitlines())
    shown = yaml.safe_load(corral(stack, "warning", "show", uuid).stdout)
    assert shown["type"] == APPARMOR
    assert corral(stack, "warning", "ack", uuid).returncode == 0
    assert uuid not in corral(stack, "warning", "list", "--format", "csv").stdout
    assert uuid in corral(stack, "warning", "list", "--all", "--format", "csv").stdout
    r = corral(stack, "warning", "delete")
    assert r.returncode == 2 and "--all" in r.stderr
    assert corral(stack, "warning", "delete", uuid).returncode == 0
    assert api.get(f"/1.0/warnings/{uuid}").status_code == 404
    r = corral(stack, "warning", "show", uuid)
    assert r.returncode != 0 and "not found" in r.stderr.lower()
