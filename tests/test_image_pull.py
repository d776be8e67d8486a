"""Pulling images from image servers (simplestreams and lxd protocols) with the stock client
and the REST API: ``lxc image copy``, ``lxc launch``, progress, failure cases that leave
nothing behind, and a pull interrupted by a crash of the image service."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request

import pytest

from shared.image import simplestreams as ss

from .simplestreams import StreamServer, lxc_remote_env  # noqa: F401

# the stream_server fixture
pytest_plugins = ["tests.simplestreams"]

pytestmark = pytest.mark.root


def stock(env: dict[str, str], *args: str, check: bool = True, stack=None
          ) -> subprocess.CompletedProcess:
    """The stock client with a private LXD_CONF (and the test stack as ``local:``)."""
    full = {**os.environ, **env}
    if stack is not None:
        full.update({**stack.env, "LXD_DIR": str(stack.dir), **env})
    r = subprocess.run(["lxc", *args], env=full, capture_output=True, text=True, timeout=180)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_fixture_tree_reads_the_same_in_lxc_and_in_our_parser(stream_server, tmp_path):
    """The hand-written tree is what LXD's client reads, and shared/image/simplestreams.py
    reads it the same way: same images, same fingerprints, same aliases."""
    env = lxc_remote_env(tmp_path / "conf", "ss", stream_server)
    listed = json.loads(stock(env, "image", "list", "ss:", "--format", "json").stdout)
    ctx = ssl.create_default_context(cadata=stream_server.cert_pem)

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"{stream_server.url}/{path}", context=ctx) as r:
            return json.load(r)

    docs = [get(p) for p in ss.product_paths(get("streams/v1/index.json"))]
    arch = os.uname().machine
    cat = ss.Catalog.from_documents(docs, arch)
    ours = {i.fingerprint: i for i in cat.images}
    assert {i["fingerprint"] for i in listed} == set(ours)
    assert len(ours) == 5
    for img in listed:
        mine = ours[img["fingerprint"]]
        assert sorted(a["name"] for a in img["aliases"] or []) == sorted(mine.aliases)
        assert img["size"] == mine.size and img["type"] == mine.type
        assert img["properties"] == mine.properties
    fps = stream_server.fingerprints
    assert cat.by_alias("busybox/1.36").fingerprint == fps["20260102_0000"]["squashfs"]
    assert cat.by_alias("busybox/1.36/tarxz").fingerprint == \
        fps["tarxz/20260101_0000"]["root.tar.xz"]
    info = stock(env, "image", "info", "ss:busybox/1.36").stdout
    assert fps["20260102_0000"]["squashfs"] in info
    # without the pinned certificate the client refuses the self-signed server
    bare = lxc_remote_env(tmp_path / "bare", "ss", stream_server, pin=False)
    r = stock(bare, "image", "list", "ss:", check=False)
    assert r.returncode != 0 and "certificate" in r.stderr
