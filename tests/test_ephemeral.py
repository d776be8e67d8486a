"""Ephemeral instances through the stock client: deleted when they stop, however they stop.

Through the API (``lxc stop``), from inside (``poweroff``), or while the instance service
was down (the next start deletes them); a restart keeps them, and an ephemeral instance
that was never started is left alone.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .stack import wait_for
from .world import make_world

pytestmark = pytest.mark.root
if shutil.which("lxc") is None:
    pytest.skip("needs Debian's lxd-client", allow_module_level=True)


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="btrfs") as w:
        yield w


def lxc(stack, *args: str, check: bool = True, input_: str | None = None
        ) -> subprocess.CompletedProcess:
    r = subprocess.run(["lxc", *args], env={**stack.env, "LXD_DIR": str(stack.dir)},
                       input=input_, capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def gone(world, api, name: str) -> bool:
    return (api.get(f"/1.0/instances/{name}").status_code == 404
            and not world.lxc_dir(name).exists() and not world.volume(name).exists())


def test_stop_deletes_an_ephemeral_instance_restart_keeps_it(world, stack, api):
    name = world.name("eph")
    lxc(stack, "launch", world.image, name, "--ephemeral", "-p", world.profile)
    assert world.get(name)["ephemeral"] is True
    lxc(stack, "restart", "--force", name)
    assert world.live(name)["status"] == "Running"
    lxc(stack, "stop", name)
    assert gone(world, api, name)
    assert name not in lxc(stack, "list", "--format", "csv", "-c", "n").stdout.split()


def test_poweroff_from_inside_deletes_it(world, stack, api):
    name = world.name("ephin")
    lxc(stack, "launch", world.image, name, "--ephemeral", "-p", world.profile)
    lxc(stack, "exec", name, "--", "poweroff", check=False)  # the session ends with it
    wait_for(lambda: gone(world, api, name), 30, what="the ephemeral instance deleted")


def test_stopped_while_the_service_was_down(world, stack, api):
    ran = world.name("ephdown")
    kept = world.name("ephinit")
    plain = world.name("plain")
    lxc(stack, "launch", world.image, ran, "--ephemeral", "-p", world.profile)
    lxc(stack, "init", world.image, kept, "--ephemeral", "-p", world.profile)
    lxc(stack, "launch", world.image, plain, "-p", world.profile)
    stack.stop("instance")
    try:
        for name in (ran, plain):
            subprocess.run(["lxc-stop", "-n", name, "-P", str(stack.dir / "lxc"), "-k"],
                           check=True, capture_output=True, timeout=30)
    finally:
        stack.start("instance")
    wait_for(lambda: gone(world, api, ran), 30, what="the ephemeral instance deleted")
    assert world.get(kept)["ephemeral"] is True  # never started: not deleted
    assert world.get(plain)["status"] == "Stopped"  # not ephemeral: kept


def test_ephemeral_set_by_config_edit(world, stack, api):
    """``lxc config edit`` (a PUT of the whole instance) can make an instance ephemeral."""
    name = world.name("ephedit")
    lxc(stack, "launch", world.image, name, "-p", world.profile)
    shown = lxc(stack, "config", "show", name).stdout
    assert "ephemeral: false" in shown
    lxc(stack, "config", "edit", name, input_=shown.replace("ephemeral: false",
                                                            "ephemeral: true"))
    assert world.get(name)["ephemeral"] is True
    r = api.patch(f"/1.0/instances/{name}", json={"ephemeral": "yes"})
    assert r.status_code == 400 and "ephemeral" in r.json()["error"]
    lxc(stack, "stop", name)
    assert gone(world, api, name)
