"""corral's remotes file and REMOTE:NAME parsing (services/cli/remotes.py), and the
progress text it reads from a pull operation."""

from __future__ import annotations

import stat

import pytest

from services.cli import remotes as rm
from services.cli.client import UsageError
from services.cli.progress import percent


@pytest.fixture
def conf(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_CONF", str(tmp_path / "conf"))
    return tmp_path / "conf"


def test_saved_privately_and_read_back(conf):
    rm.save({"x": rm.Remote("x", "https://127.0.0.1:8443", "simplestreams", "PEM", "")})
    f = conf / "remotes.json"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700
    assert rm.load()["x"] == rm.Remote("x", "https://127.0.0.1:8443", "simplestreams",
                                       "PEM", "")


def test_split_remote_and_name(conf):
    rm.save({"hub": rm.Remote("hub", "https://127.0.0.1:5000", "oci", "", "u:p")})
    assert rm.split("busybox") == (None, "busybox")
    assert rm.split("local:busybox") == (None, "busybox")
    remote, name = rm.split("hub:alpine:3.20")  # oci: everything after the first colon
    assert remote.name == "hub" and name == "alpine:3.20"
    with pytest.raises(UsageError, match="Unknown remote 'nope'.*known: hub, local"):
        rm.split("nope:x")


def test_pull_source_shape():
    r = rm.Remote("x", "https://h:1", "simplestreams", "PEM", "")
    assert r.source("busybox/1.36", "virtual-machine") == {
        "type": "image", "mode": "pull", "server": "https://h:1",
        "protocol": "simplestreams", "alias": "busybox/1.36", "certificate": "PEM",
        "image_type": "virtual-machine"}
    assert rm.Remote("o", "https://h:2", "oci", "", "u:p").source("a:1")["credentials"] \
        == "u:p"


@pytest.mark.parametrize("url,protocol,want", [
    ("127.0.0.1:8443", "lxd", "https://127.0.0.1:8443"),
    ("https://images.example/", "simplestreams", "https://images.example"),
    ("http://127.0.0.1:5000", "oci", "http://127.0.0.1:5000"),
])
def test_urls(url, protocol, want):
    assert rm.normalize_url(url, protocol) == want


@pytest.mark.parametrize("url,protocol", [("http://images.example", "simplestreams"),
                                          ("ftp://h", "lxd"), ("https://h", "docker")])
def test_bad_urls_and_protocols(url, protocol):
    with pytest.raises(UsageError):
        rm.normalize_url(url, protocol)


@pytest.mark.parametrize("name", ["local", "a b", "", "-x"])
def test_bad_names(name):
    with pytest.raises(UsageError):
        rm.check_name(name)


def test_download_progress_percent():
    assert percent("rootfs: 42% (3.10MB/s)") == 42
    assert percent("metadata: 100% (1.00kB/s)") == 100
    assert percent("") is None
