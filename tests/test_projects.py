"""Projects through the stock ``lxc`` client and HTTP: limits, same names side by side,
restrictions, 404 for an unknown project, what an empty project may do."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from .stack import BIN, wait_for
from .world import lxc, make_world, wait_op

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        yield w


@pytest.fixture
def project(stack, api):
    """A fresh project name; the project and its instances are removed afterwards."""
    made: list[str] = []

    def make(*config: str) -> str:
        name = "p" + uuid.uuid4().hex[:6]
        args = [a for c in config for a in ("-c", c)]
        lxc(stack, "project", "create", name, *args)
        made.append(name)
        return name

    yield make
    for name in made:
        for u in api.get("/1.0/instances", params={"project": name}).json()["metadata"]:
            inst = u.split("?")[0].rsplit("/", 1)[-1]
            r = api.put(f"/1.0/instances/{inst}/state", params={"project": name},
                        json={"action": "stop", "force": True})
            if r.status_code == 202:
                wait_op(api, r, ok=False)
            wait_op(api, api.delete(f"/1.0/instances/{inst}", params={"project": name}))
        assert api.delete(f"/1.0/projects/{name}").status_code == 200


def test_limit_and_same_name_side_by_side(world, stack, api, project):
    p1 = project("limits.instances=1", "features.images=false", "features.profiles=false")
    name = world.name("same")
    lxc(stack, "launch", world.image, name, "-p", world.profile)
    lxc(stack, "launch", world.image, name, "-p", world.profile, "--project", p1)
    # Two instances of one name, one per project, both running, each its own container.
    rows = json.loads(lxc(stack, "list", "--project", p1, "--format", "json").stdout)
    assert [(r["name"], r["status"], r["project"]) for r in rows] == [
        (name, "Running", p1)]
    assert world.live(name)["status"] == "Running"
    assert world.lxc_dir(name).exists() and world.lxc_dir(f"{p1}_{name}").exists()
    out = lxc(stack, "exec", name, "--project", p1, "--", "hostname").stdout
    assert out.strip() == name  # the host's p1_<name> is <name> inside
    state = api.get(f"/1.0/projects/{p1}/state").json()["metadata"]["resources"]
    assert state["instances"] == {"Limit": 1, "Usage": 1}
    assert state["containers"] == {"Limit": -1, "Usage": 1}
    info = lxc(stack, "project", "info", p1).stdout
    assert "INSTANCES" in info and "CONTAINERS" in info, info
    # A restarted instance service (its reconcile) keeps both: p1_<name> has a record.
    stack.stop("instance")
    stack.start("instance")
    wait_for(stack.ready, 60, what="the instance service back")
    assert world.lxc_dir(f"{p1}_{name}").exists()
    got = api.get(f"/1.0/instances/{name}", params={"project": p1}).json()["metadata"]
    assert got["status"] == "Running" and world.live(name)["status"] == "Running"
    # p1 uses the default project's profiles: it shows among their users, and a change
    # of one reaches it.
    shown = api.get(f"/1.0/profiles/{world.profile}").json()["metadata"]["used_by"]
    assert f"/1.0/instances/{name}?project={p1}" in shown
    lxc(stack, "profile", "set", world.profile, "user.marker", "seen")
    got = api.get(f"/1.0/instances/{name}", params={"project": p1}).json()["metadata"]
    assert got["expanded_config"].get("user.marker") == "seen"
    lxc(stack, "profile", "unset", world.profile, "user.marker")
    # The project allows one instance: LXD's message.
    r = lxc(stack, "init", world.image, world.name("second"), "-p", world.profile,
            "--project", p1, check=False)
    assert r.returncode != 0
    assert f'Reached maximum number of instances in project "{p1}"' in r.stderr
    listed = lxc(stack, "project", "list", "--format", "csv").stdout
    assert any(line.startswith(f"{p1},") for line in listed.splitlines()), listed
    r = lxc(stack, "project", "delete", p1, check=False)
    assert r.returncode != 0 and "Only empty projects can be removed" in r.stderr
    rows = json.loads(lxc(stack, "list", "--all-projects", "--format", "json").stdout)
    assert {(r["project"], r["name"]) for r in rows} >= {(p1, name), ("default", name)}
    # Rename inside the project: its host objects follow, the default's stay.
    lxc(stack, "stop", "--force", name, "--project", p1)
    renamed = name + "r"
    lxc(stack, "rename", name, renamed, "--project", p1)
    assert world.lxc_dir(f"{p1}_{renamed}").exists()
    assert not world.lxc_dir(f"{p1}_{name}").exists() and world.lxc_dir(name).exists()
    lxc(stack, "start", renamed, "--project", p1)
    out = lxc(stack, "exec", renamed, "--project", p1, "--", "hostname").stdout
    assert out.strip() == renamed
    lxc(stack, "delete", "--force", renamed, "--project", p1)
    assert not world.lxc_dir(f"{p1}_{renamed}").exists()
    assert world.live(name)["status"] == "Running"  # the default project's is untouched
    # The limit can go down to what the project holds, not below.
    lxc(stack, "project", "set", p1, "limits.instances", "0")
    r = lxc(stack, "launch", world.image, name, "-p", world.profile, "--project", p1,
            check=False)
    assert f'Reached maximum number of instances in project "{p1}"' in r.stderr


def test_restricted_project_refuses_privileged_and_host_disks(world, stack, api, project):
    p2 = project("restricted=true", "features.images=false")
    base = {"source": {"type": "image", "alias": world.image}, "profiles": ["default"],
            "devices": {"root": {"type": "disk", "path": "/", "pool": world.pool}}}
    r = api.post("/1.0/instances", params={"project": p2}, json={
        **base, "name": "priv", "config": {"security.privileged": "true"}})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == (
        'Failed checking if instance creation allowed: Invalid value "true" for config '
        f'"security.privileged" on container "priv" of project "{p2}": Privileged '
        "containers are forbidden")
    r = api.post("/1.0/instances", params={"project": p2}, json={
        **base, "name": "hostdisk", "devices": {
            **base["devices"], "host": {"type": "disk", "source": "/etc", "path": "/mnt"}}})
    assert r.status_code == 400, r.text
    assert 'Invalid device "host"' in r.json()["error"]
    assert "Attaching disks not backed by a pool is forbidden" in r.json()["error"]
    r = api.post("/1.0/instances", params={"project": p2}, json={
        **base, "name": "lowlevel", "config": {"raw.lxc": "lxc.init.cmd = /bin/sh"}})
    assert r.status_code == 400 and 'Use of low-level config "raw.lxc"' in r.json()["error"]
    # The project has its own (empty) default profile, as LXD makes it.
    prof = api.get("/1.0/profiles/default", params={"project": p2}).json()["metadata"]
    assert prof["devices"] == {} and p2 in prof["description"]
    # The same request in the default project's terms passes the project checks and runs.
    r = api.post("/1.0/instances", params={"project": p2}, json={**base, "name": "ok"})
    wait_op(api, r)
    r = api.patch("/1.0/instances/ok", params={"project": p2},
                  json={"config": {"security.nesting": "true"}})
    assert r.status_code == 400 and "Container nesting is forbidden" in r.json()["error"]


def test_unknown_project_is_404(api):
    for path in ("/1.0/instances", "/1.0/profiles", "/1.0/images", "/1.0/instances/x"):
        r = api.get(path, params={"project": "nosuchproject"})
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"] == "Project not found"
    assert api.get("/1.0/projects/nosuchproject").status_code == 404


def test_project_crud_rules(stack, api, project):
    p = project()
    shown = api.get(f"/1.0/projects/{p}").json()["metadata"]
    assert shown["config"] == {"features.images": "true", "features.profiles": "true",
                               "features.storage.volumes": "true"}
    assert shown["used_by"] == [f"/1.0/profiles/default?project={p}"]
    r = api.post("/1.0/projects", json={"name": "a_b"})
    assert r.status_code == 400 and r.json()["error"] == \
        "Project names may not contain underscores"
    r = api.post("/1.0/projects", json={"name": p})
    assert r.status_code == 409
    r = api.post("/1.0/projects", json={"name": "px" + p, "config": {"limits.cpu": "x"}})
    assert r.status_code == 400 and 'Invalid project configuration key "limits.cpu"' in \
        r.json()["error"]
    assert api.delete("/1.0/projects/default").status_code == 403
    r = api.patch("/1.0/projects/default", json={"config": {"features.images": "false"}})
    assert r.status_code == 400 and "features of the default project" in r.json()["error"]
    lxc(stack, "project", "rename", p, p + "r")
    assert api.get(f"/1.0/projects/{p + 'r'}").status_code == 200
    lxc(stack, "project", "rename", p + "r", p)
    assert "name: default" in lxc(stack, "project", "show", "default").stdout


def corral(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "corral"), *args],
                          env=stack.env, capture_output=True, text=True, timeout=120)


def test_corral_cli_and_lxc_switch(world, stack, api, project, tmp_path):
    """`corral project ...`, `--project` anywhere on a corral command line, and `lxc
    project switch` (client-side: later commands send ?project=)."""
    p = "c" + uuid.uuid4().hex[:6]
    r = corral(stack, "project", "create", p, "-c", "features.images=false",
               "-c", "features.profiles=false", "-c", "limits.containers=1")
    assert r.returncode == 0, r.stderr
    try:
        name = world.name("cli")
        r = corral(stack, "launch", world.image, name, "-p", world.profile, "--project", p)
        assert r.returncode == 0, r.stderr
        r = corral(stack, "--project", p, "list", "--format", "csv")
        assert r.returncode == 0 and name in r.stdout, (r.stdout, r.stderr)
        assert name not in corral(stack, "list", "--format", "csv").stdout
        r = corral(stack, "exec", name, "--project", p, "--", "hostname")
        assert r.returncode == 0 and r.stdout.strip() == name, (r.stdout, r.stderr)
        r = corral(stack, "launch", world.image, world.name("cli2"), "-p", world.profile,
                   "--project", p)
        assert r.returncode != 0
        assert f'Reached maximum number of instances of type "container" in project "{p}"' \
            in r.stderr
        rows = corral(stack, "project", "list", "--format", "csv").stdout.splitlines()
        assert any(row.startswith(f"{p},NO,NO,YES,NO,") and row.endswith(",1")
                   for row in rows), rows
        assert corral(stack, "project", "get", p, "limits.containers").stdout.strip() == "1"
        r = corral(stack, "project", "set", p, "limits.containers=0")
        assert r.returncode != 0 and '"limits.containers" is too low' in r.stderr
        # lxc project switch: the client remembers the project.
        env = {**stack.env, "LXD_DIR": str(stack.dir), "LXD_CONF": str(tmp_path)}
        sw = subprocess.run(["lxc", "project", "switch", p], env=env, capture_output=True,
                            text=True, timeout=60)
        assert sw.returncode == 0, sw.stderr
        out = subprocess.run(["lxc", "list", "--format", "csv", "-c", "n"], env=env,
                             capture_output=True, text=True, timeout=60).stdout
        assert out.split() == [name]
        r = corral(stack, "delete", "--force", name, "--project", p)
        assert r.returncode == 0, r.stderr
    finally:
        for u in api.get("/1.0/instances", params={"project": p}).json()["metadata"] or []:
            inst = u.split("?")[0].rsplit("/", 1)[-1]
            r = api.delete(f"/1.0/instances/{inst}", params={"project": p})
            if r.status_code == 202:
                wait_op(api, r, ok=False)
        r = corral(stack, "project", "delete", p)
    assert r.returncode == 0, r.stderr


def test_project_with_its_own_images(stack, api, project, busybox_tarball):
    """features.images (a new project's default): images imported into the project are
    its own, count as its use (it cannot be deleted), and are not the default project's."""
    p = project()
    r = lxc(stack, "image", "import", str(busybox_tarball), "--alias", "own", "--project", p)
    fp = api.get("/1.0/images/aliases/own", params={"project": p}).json()["metadata"][
        "target"]
    try:
        assert api.get("/1.0/images/aliases/own").status_code == 404  # not default's
        used = api.get(f"/1.0/projects/{p}").json()["metadata"]["used_by"]
        assert f"/1.0/images/{fp}?project={p}" in used, used
        r = lxc(stack, "project", "delete", p, check=False)
        assert r.returncode != 0 and "Only empty projects can be removed" in r.stderr
        r = api.patch(f"/1.0/projects/{p}", json={"config": {"features.images": "false"}})
        assert r.status_code == 400 and 'Project feature "features.images" cannot be ' \
            "disabled on non-empty projects" in r.json()["error"]
    finally:
        wait_op(api, api.delete(f"/1.0/images/{fp}", params={"project": p}))


async def test_operator_credential_limited_to_a_project(stack, nats_server, project, uid):
    """`corral bus credentials create X --role operator --project p1`: nats-server lets it
    publish only under corral.project.p1.>, and the service refuses a body naming another
    project: it can list and change p1, never default."""
    import nats

    from shared import codec, subjects

    from .test_bus_auth import connect_new, creds_of
    from .test_bus_auth import corral as corral_bus

    p = project("features.images=false", "features.profiles=false")
    name = f"{uid}-op"
    out = corral_bus(stack, "bus", "credentials", "create", name, "--role", "operator",
                     "--project", p)
    assert out.returncode == 0, out.stderr
    conn = await connect_new(nats_server.url, creds_of(Path(out.stdout.strip()
                                                            .splitlines()[-1])))
    try:
        mine = subjects.project_service(p, "instance", "list")
        reply = await conn.nc.request(mine, codec.encode({"project": p}), timeout=5)
        assert codec.decode(reply.data)["metadata"] == []
        for body in ({"project": "default"}, {}, {"project": p, "all_projects": True}):
            reply = await conn.nc.request(mine, codec.encode(body), timeout=5)
            assert reply.headers["Nats-Service-Error-Code"] == "403", body
            assert f"limited to project '{p}'" in reply.headers["Nats-Service-Error"]
        get = subjects.project_service(p, "instance", "project_update")
        reply = await conn.nc.request(get, codec.encode({"project": p, "name": "default",
                                                         "body": {"config": {}}}), timeout=5)
        assert reply.headers["Nats-Service-Error-Code"] == "403"
        for other in (subjects.project_service("default", "instance", "delete"),
                      subjects.service("instance", "delete")):
            with pytest.raises(nats.errors.TimeoutError):
                await conn.nc.request(other, codec.encode({"name": "x"}), timeout=1)
            assert await conn.violation("publish", other)
    finally:
        await conn.close()
        corral_bus(stack, "bus", "credentials", "revoke", name)


async def test_events_of_one_project(stack, aapi, project, uid):
    """`/1.0/events?project=p` carries p's events, each naming its project, not default's."""
    import asyncio

    import aiohttp

    p = project()
    connector = aiohttp.UnixConnector(path=str(stack.socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.ws_connect(
                f"http://corral/1.0/events?type=lifecycle&project={p}") as ws:
            assert (await aapi.post("/1.0/profiles", json={"name": uid})).status_code == 200
            r = await aapi.post("/1.0/profiles", params={"project": p}, json={"name": uid})
            assert r.status_code == 200
            seen = []
            while not seen or seen[-1]["metadata"]["source"] != \
                    f"/1.0/profiles/{uid}?project={p}":
                seen.append(json.loads((await asyncio.wait_for(ws.receive(), 10)).data))
    assert all(e["project"] == p for e in seen), seen
    assert seen[-1]["metadata"]["action"] == "profile-created"
    await aapi.delete(f"/1.0/profiles/{uid}")
    await aapi.delete(f"/1.0/profiles/{uid}", params={"project": p})
