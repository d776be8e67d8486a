"""Projects' pure logic: limit arithmetic, restrictions, names, config keys, host names."""

from __future__ import annotations

import pytest

from services.instance import project_limits as pl
from services.instance import projects
from services.instance.names import check_host_name, host_name, host_of, split_host_name
from services.instance.project_limits import Instance
from shared.errors import BadRequest

ROOT = {"type": "disk", "path": "/", "pool": "p"}


def inst(name: str, kind: str = "container", root_size: str = "", **config: str) -> Instance:
    root = {**ROOT, **({"size": root_size} if root_size else {})}
    return Instance(name, kind, config, {"root": root})


def test_instance_counts_and_type_counts():
    cfg = {"limits.instances": "2", "limits.containers": "1"}
    pl.check_create("p1", cfg, inst("a"), [])
    with pytest.raises(BadRequest) as e:
        pl.check_create("p1", cfg, inst("b"), [inst("a")])
    assert e.value.message == 'Reached maximum number of instances of type "container" in ' \
        'project "p1"'
    pl.check_create("p1", cfg, inst("v", "virtual-machine"), [inst("a")])
    with pytest.raises(BadRequest) as e:
        pl.check_create("p1", cfg, inst("v2", "virtual-machine"),
                        [inst("a"), inst("v", "virtual-machine")])
    assert e.value.message == 'Reached maximum number of instances in project "p1"'
    with pytest.raises(BadRequest):
        pl.check_create("p1", {"limits.instances": "0"}, inst("a"), [])


def test_memory_is_summed_over_instances():
    cfg = {"limits.memory": "1GiB"}
    others = [inst("a", **{"limits.memory": "512MiB"}), inst("b", **{"limits.memory": "256MiB"})]
    pl.check_create("p", cfg, inst("c", **{"limits.memory": "256MiB"}), others)  # = 1 GiB
    with pytest.raises(BadRequest) as e:
        pl.check_create("p", cfg, inst("c", **{"limits.memory": "257MiB"}), others)
    assert e.value.message == ('Failed checking if instance creation allowed: Reached '
                               'maximum aggregate value "1GiB" for "limits.memory" in '
                               'project "p"')
    with pytest.raises(BadRequest) as e:  # an unlimited instance in a limited project
        pl.check_create("p", cfg, inst("c"), others)
    assert 'Instance "c" in project "p" has no "limits.memory" config' in e.value.message
    with pytest.raises(BadRequest) as e:
        pl.check_create("p", {"limits.memory": "50%"}, inst("c", **{"limits.memory": "1"}),
                        [])
    assert "can't be a percentage" in e.value.message


def test_cpu_processes_and_disk():
    pl.check_create("p", {"limits.cpu": "4"}, inst("c", **{"limits.cpu": "2"}),
                    [inst("a", **{"limits.cpu": "2"})])
    with pytest.raises(BadRequest, match='"limits.cpu"'):
        pl.check_create("p", {"limits.cpu": "4"}, inst("c", **{"limits.cpu": "3"}),
                        [inst("a", **{"limits.cpu": "2"})])
    with pytest.raises(BadRequest, match='Failed parsing "limits.cpu" for instance "c"'):
        pl.check_create("p", {"limits.cpu": "4"}, inst("c", **{"limits.cpu": "0-1"}), [])
    with pytest.raises(ValueError, match="pinned"):  # a pinned set cannot be summed
        pl.parse_aggregate("limits.cpu", "0-1")
    with pytest.raises(BadRequest, match='"limits.processes"'):
        pl.check_create("p", {"limits.processes": "100"},
                        inst("c", **{"limits.processes": "101"}), [])
    pl.check_create("p", {"limits.disk": "1GB"}, inst("c", root_size="500MB"),
                    [inst("a", root_size="500MB")])
    with pytest.raises(BadRequest, match='"limits.disk"'):
        pl.check_create("p", {"limits.disk": "1GB"}, inst("c", root_size="501MB"),
                        [inst("a", root_size="500MB")])
    with pytest.raises(BadRequest, match='no "size" config set on the root device'):
        pl.check_create("p", {"limits.disk": "1GB"}, inst("c"), [])


def test_update_replaces_the_old_self():
    cfg = {"limits.memory": "1GiB"}
    old = inst("a", **{"limits.memory": "1GiB"})
    pl.check_update("p", cfg, inst("a", **{"limits.memory": "512MiB"}), [old])
    with pytest.raises(BadRequest) as e:
        pl.check_update("p", cfg, inst("a", **{"limits.memory": "2GiB"}), [old])
    assert e.value.message.startswith("Failed checking if instance update allowed: ")


def test_project_limits_cannot_drop_below_use():
    insts = [inst("a", **{"limits.memory": "1GiB"}), inst("b", **{"limits.memory": "1GiB"})]
    pl.check_project_change("p", {"limits.instances": "2"}, insts)
    with pytest.raises(BadRequest) as e:
        pl.check_project_change("p", {"limits.instances": "1"}, insts)
    assert e.value.message == ('"limits.instances" is too low: there currently are 2 total '
                               'instances in project "p"')
    with pytest.raises(BadRequest, match='"limits.memory" is too low'):
        pl.check_project_change("p", {"limits.memory": "1GiB"}, insts)


def test_restrictions():
    r = {"restricted": "true"}
    pl.check_restrictions("p", {}, inst("a", **{"security.privileged": "true"}))  # off
    with pytest.raises(BadRequest) as e:
        pl.check_restrictions("p", r, inst("a", **{"security.privileged": "true"}))
    assert e.value.message == ('Invalid value "true" for config "security.privileged" on '
                               'container "a" of project "p": Privileged containers are '
                               'forbidden')
    pl.check_restrictions("p", {**r, "restricted.containers.privilege": "allow"},
                          inst("a", **{"security.privileged": "true"}))
    with pytest.raises(BadRequest, match="Container nesting is forbidden"):
        pl.check_restrictions("p", r, inst("a", **{"security.nesting": "true"}))
    with pytest.raises(BadRequest, match='Use of low-level config "raw.lxc" on container'):
        pl.check_restrictions("p", r, inst("a", **{"raw.lxc": "lxc.x=1"}))
    pl.check_restrictions("p", {**r, "restricted.containers.lowlevel": "allow"},
                          inst("a", **{"raw.lxc": "lxc.x=1"}))
    with pytest.raises(BadRequest, match='"raw.qemu" on virtual-machine'):
        pl.check_restrictions("p", r, inst("v", "virtual-machine", **{"raw.qemu": "-x"}))
    host = Instance("a", "container", {}, {"root": ROOT, "d": {
        "type": "disk", "source": "/srv/data", "path": "/mnt"}})
    with pytest.raises(BadRequest) as e:
        pl.check_restrictions("p", r, host)
    assert e.value.message == ('Invalid device "d" on container "a" of project "p": '
                               'Attaching disks not backed by a pool is forbidden')
    with pytest.raises(BadRequest, match="Disk devices are forbidden"):
        pl.check_restrictions("p", {**r, "restricted.devices.disk": "block"}, host)
    allow = {**r, "restricted.devices.disk": "allow"}
    with pytest.raises(BadRequest, match='Disk source path "/srv/data" not allowed'):
        pl.check_restrictions("p", allow, host)
    pl.check_restrictions("p", {**allow, "restricted.devices.disk.paths": "/srv"}, host)
    with pytest.raises(BadRequest, match="/srv/data"):  # /srv is not a prefix of /srvx
        pl.check_restrictions("p", {**allow, "restricted.devices.disk.paths": "/srv/d"},
                              host)
    pl.check_restrictions("p", r, inst("a"))  # the root disk is always allowed


def test_sizes():
    assert pl.parse_size("512MiB") == 512 * 2**20
    assert pl.parse_size("1GB") == 10**9
    assert pl.parse_size("100") == 100
    with pytest.raises(ValueError):
        pl.parse_size("lots")


def test_project_names_and_config():
    for bad, msg in (("", "No name provided"), ("a/b", "slashes"), ("a b", "spaces"),
                     ("a_b", "underscores"), ("a'b", "quotes"), ("*", "Reserved"),
                     ("..", "Invalid project name"), ("-x", "Invalid project name")):
        with pytest.raises(BadRequest, match=msg):
            projects.check_name(bad)
    assert projects.check_name("team-a.dev") == "team-a.dev"
    with pytest.raises(BadRequest, match='Invalid project configuration key "limits.nope"'):
        projects.check_config({"limits.nope": "1"})
    with pytest.raises(BadRequest, match='"limits.memory" value'):
        projects.check_config({"limits.memory": "much"})
    with pytest.raises(BadRequest, match="without their own profiles cannot be restricted"):
        projects.check_config({"restricted": "true", "features.profiles": "false"})
    assert projects.check_config({"user.x": "y", "limits.cpu": "2"})


def test_effective_project():
    p = {"name": "p1", "config": {"features.images": "false", "features.profiles": "true"}}
    assert projects.effective(p, "images") == "default"
    assert projects.effective(p, "profiles") == "p1"
    assert projects.effective(projects.default_record(), "images") == "default"


def test_host_names():
    assert host_name("default", "web") == "web"
    assert host_name("p1", "web") == "p1_web"
    assert host_of({"project": "p1", "name": "web"}) == "p1_web"
    assert split_host_name("p1_web") == ("p1", "web")
    assert split_host_name("web") == ("default", "web")
    assert check_host_name("p1_web") == "p1_web"
    for bad in ("../x", "p/1_web", "p1_", "p1_we_b"):
        with pytest.raises(BadRequest):
            check_host_name(bad)


def test_state_counts_and_sums():
    cfg = {"limits.instances": "3", "limits.memory": "1GiB", "limits.disk": "10GB"}
    insts = [inst("a", root_size="1GB", **{"limits.memory": "256MiB"}),
             inst("b", **{"limits.memory": "lots"}), inst("v", "virtual-machine")]
    res = pl.state(cfg, insts)["resources"]
    assert res["instances"] == {"Limit": 3, "Usage": 3}
    assert res["containers"] == {"Limit": -1, "Usage": 2}
    assert res["virtual-machines"] == {"Limit": -1, "Usage": 1}
    assert res["memory"] == {"Limit": 2**30, "Usage": 256 * 2**20}  # "lots" counts 0
    assert res["disk"] == {"Limit": 10**10, "Usage": 10**9}
    assert res["cpu"] == {"Limit": -1, "Usage": 0}


def test_restricted_certificates_cannot_change_projects():
    from services.gateway.trust import Identity, check_access
    from shared.errors import Forbidden

    who = Identity(protocol="tls", trusted=True, restricted=True, projects=("p1",),
                   name="c")
    check_access(who, "GET", "/1.0/projects/{name}", "p1", False)
    for method, route in (("POST", "/1.0/projects"), ("PUT", "/1.0/projects/{name}"),
                          ("DELETE", "/1.0/projects/{name}")):
        with pytest.raises(Forbidden, match="cannot change projects"):
            check_access(who, method, route, "p1", False)
    with pytest.raises(Forbidden):
        check_access(who, "GET", "/1.0/instances", "default", False)


def test_project_limited_credentials_and_claims():
    from shared import auth, subjects
    from shared.errors import Forbidden
    from shared.models import ListRequest, ObjectRequest
    from shared.service import check_project_claim

    op = auth.permissions_of("o", {"role": "operator", "project": "p1"})
    assert op.publish == ("$JS.API.INFO", "corral.project.p1.*.*")
    assert op.subscribe == ("corral.events.*.p1.>", "_INBOX_o.>")
    reader = auth.permissions_of("r", {"role": "reader", "project": "p1"})
    assert "corral.project.p1.*.list" in reader.publish
    assert not any(s.startswith("corral.instance") or "create" in s for s in reader.publish)
    assert "corral.project.*.instance.*" in auth.service_permissions("instance").subscribe
    subject = subjects.project_service("p1", "instance", "list")
    check_project_claim(subject, "list", ListRequest(project="p1"))
    for body in (ListRequest(project="default"), ListRequest(project="p1", all_projects=True)):
        with pytest.raises(Forbidden):
            check_project_claim(subject, "list", body)
    check_project_claim(subject, "project_get", ObjectRequest(project="p1", name="p1"))
    for verb, name in (("project_get", "default"), ("project_update", "p1")):
        with pytest.raises(Forbidden):
            check_project_claim(subject, verb, ObjectRequest(project="p1", name=name))


async def test_restricted_certificates_see_only_their_projects():
    import json

    from aiohttp.test_utils import make_mocked_request

    from services.gateway.routes import projects as routes
    from services.gateway.trust import Identity
    from shared.errors import Forbidden
    from shared.models import Reply

    who = Identity(protocol="tls", trusted=True, restricted=True, projects=("p1",), name="c")
    req = make_mocked_request("GET", "/1.0/projects?project=p1")
    req["corral.identity"] = who
    urls = ["/1.0/projects/default", "/1.0/projects/p1", "/1.0/projects/p2"]
    resp = await routes.listed(None, req, Reply(metadata=list(urls)))
    assert json.loads(resp.body)["metadata"] == ["/1.0/projects/p1"]
    objs = [{"name": "default"}, {"name": "p1"}]
    resp = await routes.listed(None, req, Reply(metadata=objs))
    assert json.loads(resp.body)["metadata"] == [{"name": "p1"}]
    req = make_mocked_request("GET", "/1.0/projects/p2", match_info={"name": "p2"})
    req["corral.identity"] = who
    with pytest.raises(Forbidden):
        await routes.shown(None, req, Reply(metadata={"name": "p2"}))
    root = make_mocked_request("GET", "/1.0/projects", match_info={"name": "p2"})
    resp = await routes.listed(None, root, Reply(metadata=list(urls)))  # unrestricted
    assert json.loads(resp.body)["metadata"] == urls
