"""Pure rules of issue 9: raw.lxc parsing and its deny list (LXD's lxcValidConfig plus the
keys Corral manages), and file access that refuses FIFOs and devices without blocking."""

from __future__ import annotations

import os
import threading

import pytest

from services.instance import validate
from services.instance.drivers import files
from services.instance.drivers.lxc_config import parse_raw_lxc
from shared.errors import BadRequest


def test_raw_lxc_parsed_as_lxd_does():
    raw = "# comment\n\n\t LXC.Environment = A=b \nlxc.cap.drop=sys_time\r\n"
    assert parse_raw_lxc(raw) == [("lxc.environment", "A=b"), ("lxc.cap.drop", "sys_time")]
    assert parse_raw_lxc("") == []


@pytest.mark.parametrize("line", [
    "lxc.log.file = /x", "lxc.logfile = /x", "lxc.log.syslog = daemon", "lxc.syslog = d",
    "lxc.ephemeral = 1", "lxc.prlimit.nofile = 5", "lxc.net.0.type = veth",
    "lxc.net.1.link = br0", "lxc.network.0.type = veth", "lxc.rootfs.path = dir:/",
    "lxc.rootfs.options = idmap=container", "lxc.idmap = u 0 0 1", "lxc.id_map = u 0 0 1",
    "lxc.hook.pre-start = /bin/sh -c id", "lxc.hook.mount = /x", "lxc.include = /etc/x",
    "lxc.console.logfile = /x", "LXC.HOOK.START = /x", "foo = bar", "no equals sign",
])
def test_refused_raw_lxc_lines_name_the_key(line):
    with pytest.raises(BadRequest) as err:
        parse_raw_lxc(line)
    assert line.split("=")[0].strip().lower() in err.value.message.lower() or \
        "key = value" in err.value.message


@pytest.mark.parametrize("line", [
    "lxc.net.0.ipv4.address = 10.0.0.2/24", "lxc.net.3.ipv6.gateway = auto",
    "lxc.apparmor.profile = unconfined", "lxc.mount.entry = /a b none bind 0 0",
    "lxc.cgroup2.memory.high = 64M", "lxc.environment = X=1",
])
def test_allowed_raw_lxc_lines(line):
    assert len(parse_raw_lxc(line)) == 1


def test_config_check_covers_raw_keys():
    validate.check_config({"raw.lxc": "lxc.environment = X=1"})
    for key in ("raw.idmap", "raw.apparmor", "raw.seccomp", "raw.qemu"):
        with pytest.raises(BadRequest, match=key):
            validate.check_config({key: "x"})
    with pytest.raises(BadRequest, match="hooks"):
        validate.check_config({"raw.lxc": "lxc.hook.start = /bin/true"})


def _in_time(fn, seconds: float = 5.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked: a FIFO was opened without O_NONBLOCK"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_fifo_push_and_pull_are_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "f")
    view = files.FsView(tmp_path)
    with pytest.raises(BadRequest, match="named pipe"):
        _in_time(lambda: files.file_put(view, "/f", b"x"))
    with pytest.raises(BadRequest, match="named pipe"):
        _in_time(lambda: files.file_put(view, "/f", b"x", write="append"))
    with pytest.raises(BadRequest, match="named pipe"):
        _in_time(lambda: files.file_get(view, "/f"))
    (tmp_path / "ok").write_bytes(b"1")
    _in_time(lambda: files.file_put(view, "/ok", b"2"))
    assert _in_time(lambda: files.file_get(view, "/ok"))[0] == b"2"


def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path):
    """open_regular alone (the race: a FIFO put where a file was stat'ed)."""
    os.mkfifo(tmp_path / "f")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for flags in (os.O_WRONLY | os.O_TRUNC, os.O_RDONLY):
            with pytest.raises(BadRequest):
                _in_time(lambda flags=flags: files.open_regular("f", flags, dfd, "/f"))
    finally:
        os.close(dfd)


def test_character_devices_are_refused():
    with pytest.raises(BadRequest, match="character device"):
        files.refuse_special("/dev/null", os.stat("/dev/null").st_mode)


def test_disk_devices_corral_cannot_apply_are_refused_by_name():
    ok = {"root": {"type": "disk", "path": "/", "pool": "p", "size": "1GiB"}}
    assert validate.check_devices(ok) == ok
    for dev, words in [
        ({"type": "disk", "source": "/srv", "path": "/mnt", "size": "1GiB"},
         "'data': only the root disk may have a size"),
        ({"type": "disk", "path": "/", "pool": "p", "source": "/srv"}, "may not have a source"),
        ({"type": "disk", "path": "/", "pool": "p", "limits.read": "10MB"},
         "limits.read is not supported yet"),
        ({"type": "disk", "path": "/", "pool": "p", "readonly": "true", "shift": "true"},
         "readonly, shift are not supported yet"),
    ]:
        with pytest.raises(BadRequest, match=words):
            validate.check_devices({"data": dev})
