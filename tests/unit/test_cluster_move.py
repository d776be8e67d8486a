"""Pure logic of moves between cluster members: the temporary name a moving instance has
on its target, which devices keep ``cluster.evacuate=auto`` from moving an instance, and
which instance POSTs are cluster moves."""

from __future__ import annotations

import re
from types import SimpleNamespace

from services.gateway.cluster_move import temp_name
from services.gateway.evacuate import mode_of, unmovable
from services.gateway.routes.migration import is_cluster_move, is_source

NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")


def test_temp_name_is_a_valid_distinct_instance_name():
    for name in ("c1", "a" * 63, "x-" * 31 + "y", "web-1"):
        tmp = temp_name(name)
        assert NAME.match(tmp) and not tmp.endswith("-"), tmp
        assert "-moving-" in tmp and tmp != name
    assert temp_name("c1") != temp_name("c1")  # two moves never share one


def test_auto_moves_only_what_can_move():
    root = {"root": {"type": "disk", "path": "/", "pool": "p"}}
    nic = {"eth0": {"type": "nic", "network": "br0"}}
    assert unmovable({"expanded_devices": {**root, **nic}}) is None
    host = {"data": {"type": "disk", "source": "/srv", "path": "/mnt"}}
    assert unmovable({"expanded_devices": {**root, **host}}) == "data"
    assert unmovable({"expanded_devices": {"tty": {"type": "unix-char",
                                                   "path": "/dev/ttyS0"}}}) == "tty"


def test_request_mode_wins_over_the_instance():
    rec = {"expanded_config": {"cluster.evacuate": "stop"}}
    assert mode_of(rec, "") == "stop"
    assert mode_of(rec, "migrate") == "migrate"
    assert mode_of({"config": {}}, "") == "auto"


def test_which_posts_are_cluster_moves():
    with_target = SimpleNamespace(query={"target": "node2"})
    without = SimpleNamespace(query={})
    body = {"migration": True, "live": True}
    assert is_cluster_move(body, with_target, cluster=True)
    assert not is_cluster_move(body, with_target, cluster=False)
    assert not is_cluster_move(body, without, cluster=True)
    assert not is_cluster_move({**body, "pool": "p2"}, with_target, cluster=True)
    assert not is_cluster_move({"name": "c2"}, with_target, cluster=True)  # a rename
    assert is_source(body, without) and not is_source(body, with_target)
