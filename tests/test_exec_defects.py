"""Defects of issue 16 that lost data or leaked host state, driven through the stock `lxc`.

Each test here failed before its fix: ``lxc restore`` of a missing snapshot wiped the
instance's own config, exec'd processes inherited host fds, ``lxc exec -t`` gave a pty
that ``tty`` could not name (a host pty), ``lxc file push`` over an existing file made it
0:0, and nothing could change an existing file's owner or mode on purpose.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from .stack import BIN, wait_for
from .world import lxc_conf, make_world

pytestmark = pytest.mark.root
if (os.geteuid() != 0 or shutil.which("lxc") is None or shutil.which("script") is None
        or not Path("/bin/busybox").exists()):
    pytest.skip("needs root, Debian's lxd-client, script (util-linux) and busybox-static",
                allow_module_level=True)


@pytest.fixture(scope="module")
def leaked_fd(stack):
    """The instance service restarted holding an fd it did not open, as `make up` starts
    it from a shell (bash's fd 10 and 255 leaked into instances that way)."""
    r, w = os.pipe()
    real_popen = subprocess.Popen

    def popen(*args, **kw):  # the stack's own way of starting it, plus the extra fd
        return real_popen(*args, **{**kw, "pass_fds": (w,)})

    stack.stop("instance")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", popen)
        stack.start("instance")
    try:
        wait_for(stack.ready, 60, what="the instance service")
        yield w
    finally:
        os.close(r)
        os.close(w)
        stack.stop("instance")
        stack.start("instance")
        wait_for(stack.ready, 60, what="the instance service")


@pytest.fixture(scope="module")
def world(stack, api, busybox_tarball, leaked_fd):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        w.run = w.create("run", start=True)
        yield w


@pytest.fixture(scope="module")
def lxc(stack, tmp_path_factory):
    conf = tmp_path_factory.mktemp("lxcconf")
    env = {**stack.env, "LXD_DIR": str(stack.dir), "LXD_CONF": lxc_conf(conf / "lxc")}

    def run(*args: str, check: bool = True, input: str | None = None
            ) -> subprocess.CompletedProcess:
        r = subprocess.run(["lxc", *args], env=env, capture_output=True, text=True,
                           input=input, timeout=60)
        if check:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r

    run.env = env
    run("list", "--format", "csv")  # the client's first-run greeting goes here
    return run


def _local(inst: dict) -> dict:
    """What a restore of a missing snapshot must leave exactly as it was."""
    return {k: inst[k] for k in ("config", "devices", "profiles", "description",
                                 "expanded_config", "expanded_devices")}


# -- restore -------------------------------------------------------------------------------

def test_restore_of_missing_snapshot_is_404_and_changes_nothing(world, api, lxc):
    name = world.run
    local_root = {"type": "disk", "path": "/", "pool": world.pool}
    r = api.patch(f"/1.0/instances/{name}", json={
        "config": {"user.keep": "me", "limits.processes": "500"},
        "devices": {"root": local_root}})
    world.wait(r)
    before = world.get(name)
    etag = api.get(f"/1.0/instances/{name}").headers.get("ETag")
    r = lxc("restore", name, "snap0", check=False)
    assert r.returncode != 0
    assert f"Snapshot {name}/snap0 does not exist" in r.stderr, r.stderr
    after = world.get(name)
    assert _local(after) == _local(before)
    assert after["config"]["user.keep"] == "me" and after["devices"]["root"] == local_root
    assert api.get(f"/1.0/instances/{name}").headers.get("ETag") == etag
    # the API answer itself: 404 before any operation starts, with LXD's message
    r = api.put(f"/1.0/instances/{name}", json={"restore": "snap0"})
    assert r.status_code == 404, r.text
    assert r.json()["error"] == f"Snapshot {name}/snap0 does not exist"
    r = api.put(f"/1.0/instances/{name}", json={"restore": f"{name}/snap1"})
    assert r.status_code == 404 and f"{name}/snap1 does not exist" in r.json()["error"]
    r = api.put(f"/1.0/instances/{name}", json={"restore": "other/snap1"})
    assert r.status_code == 400, r.text
    assert _local(world.get(name)) == _local(before)


# -- exec fds ------------------------------------------------------------------------------

# ls runs as a child of the shell, so it lists the shell's fds, not its own.
FD_LIST = "ls -l /proc/$$/fd; true"


def _fds(listing: str) -> dict[int, str]:
    return {int(m[1]): m[2].strip() for m in re.finditer(r"(\d+) -> (.*)$", listing, re.M)}


def test_exec_gets_only_its_own_fds(world, lxc):
    out = lxc("exec", world.run, "--", "sh", "-c", FD_LIST).stdout
    assert sorted(_fds(out)) == [0, 1, 2], out
    out = lxc("exec", world.run, "--", "sh", "-c", FD_LIST, input="").stdout
    assert sorted(_fds(out)) == [0, 1, 2], out


def test_interactive_exec_and_init_get_only_their_own_fds(world, lxc):
    out = _in_terminal(lxc, "exec", "-t", world.run, "--", "sh", "-c", FD_LIST)
    fds = _fds(out.replace("\r", ""))
    assert sorted(fds) == [0, 1, 2], out
    assert len(set(fds.values())) == 1 and fds[0].startswith("/dev/pts/"), out
    out = lxc("exec", world.run, "--", "ls", "-l", "/proc/1/fd").stdout
    assert sorted(_fds(out)) == [0, 1, 2], out


# -- exec -t: a pty of the instance's own devpts ----------------------------------------------

def _in_terminal(lxc, *args: str) -> str:
    """Run the stock client on a terminal (``script``), as a user at a shell would."""
    cmd = shlex.join(["lxc", *args])
    r = subprocess.run(["script", "-qec", cmd, "/dev/null"], env=lxc.env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout.replace("^@", "")  # the terminal's echo of a NUL the client sends


def test_exec_tty_names_a_pts_of_the_instance(world, lxc):
    out = _in_terminal(lxc, "exec", "-t", world.run, "--", "tty").strip()
    assert re.fullmatch(r"/dev/pts/\d+", out), out
    out = _in_terminal(lxc, "exec", "-t", world.run, "--", "sh", "-c", "ls -ln $(tty)")
    assert re.search(r"^crw\S+ +1 0 +0 +136, ", out, re.M), out  # the user's own pts
    out = _in_terminal(lxc, "exec", "-t", "--user", "1000", "--group", "1000", world.run,
                       "--", "sh", "-c", "tty; ls -ln $(tty)")
    assert re.search(r"^/dev/pts/\d+\s*$", out, re.M), out
    assert re.search(r"^crw\S+ +1 1000 +1000 +136, ", out, re.M), out


# -- file push keeps an existing file's owner and mode --------------------------------------

def _stat(lxc, name: str, path: str) -> str:
    return lxc("exec", name, "--", "stat", "-c", "%u:%g %a", path).stdout.strip()


def test_file_push_over_existing_file_keeps_owner_and_mode(world, lxc, tmp_path):
    name = world.run
    lxc("exec", name, "--", "sh", "-c", "echo old > /tmp/kept && chown 1000:1001 /tmp/kept"
        " && chmod 0640 /tmp/kept")
    src = tmp_path / "new"
    src.write_text("new\n")
    src.chmod(0o755)
    lxc("file", "push", str(src), f"{name}/tmp/kept")
    assert _stat(lxc, name, "/tmp/kept") == "1000:1001 640"
    assert lxc("exec", name, "--", "cat", "/tmp/kept").stdout == "new\n"
    # Debian's client (5.0) sends its flags or the local file's owner and mode on every
    # push, so LXD 5.0 applies them to new files only: an existing file keeps its own.
    lxc("file", "push", "--uid", "7", "--mode", "0600", str(src), f"{name}/tmp/kept")
    assert _stat(lxc, name, "/tmp/kept") == "1000:1001 640"
    lxc("file", "push", "--uid", "7", "--gid", "8", "--mode", "0600", str(src),
        f"{name}/tmp/fresh1")
    assert _stat(lxc, name, "/tmp/fresh1") == "7:8 600"
    lxc("file", "push", str(src), f"{name}/tmp/fresh2")
    assert _stat(lxc, name, "/tmp/fresh2") == "0:0 755"
    # lxc file edit (stdin not a terminal: it pushes stdin) keeps them too
    lxc("exec", name, "--", "sh", "-c", "chown 1000:1001 /tmp/kept && chmod 0640 /tmp/kept")
    lxc("file", "edit", f"{name}/tmp/kept", input="edited\n")
    assert _stat(lxc, name, "/tmp/kept") == "1000:1001 640"
    assert lxc("exec", name, "--", "cat", "/tmp/kept").stdout == "edited\n"


def test_modify_perm_changes_an_existing_file(world, lxc, api, stack, tmp_path):
    """What the client names in X-LXD-modify-perm applies to an existing file too; the
    corral CLI names its --uid/--gid/--mode flags there."""
    name = world.run
    lxc("exec", name, "--", "sh", "-c", "echo old > /tmp/perm && chown 1000:1001 /tmp/perm"
        " && chmod 0640 /tmp/perm")
    url = f"/1.0/instances/{name}/files"
    r = api.post(url, params={"path": "/tmp/perm"}, content=b"a\n", headers={
        "X-LXD-uid": "0", "X-LXD-gid": "0", "X-LXD-mode": "0600",
        "X-LXD-modify-perm": "mode"})
    assert r.status_code == 200, r.text
    assert _stat(lxc, name, "/tmp/perm") == "1000:1001 600"
    r = api.post(url, params={"path": "/tmp/perm"}, content=b"a\n",
                 headers={"X-LXD-modify-perm": "owner"})
    assert r.status_code == 400 and "X-LXD-modify-perm" in r.json()["error"], r.text
    src = tmp_path / "f"
    src.write_text("cli\n")
    corral = [str(BIN / "corral"), "file", "push"]
    r = subprocess.run([*corral, "--uid", "7", str(src), f"{name}/tmp/perm"], env=stack.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _stat(lxc, name, "/tmp/perm") == "7:1001 600"
    r = subprocess.run([*corral, str(src), f"{name}/tmp/perm"], env=stack.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _stat(lxc, name, "/tmp/perm") == "7:1001 600"
