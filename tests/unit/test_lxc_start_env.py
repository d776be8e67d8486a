"""lxc-start's environment: no id-map tools on PATH, everything else kept."""

from __future__ import annotations

import os
from pathlib import Path

from services.instance.drivers import lxc_config


def _tool(d: Path, name: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("#!/bin/sh\n")
    (d / name).chmod(0o4755)


def test_path_loses_only_the_directories_holding_the_id_map_tools(tmp_path):
    shadow, gid_only, other = tmp_path / "shadow", tmp_path / "gid", tmp_path / "other"
    _tool(shadow, "newuidmap")
    _tool(shadow, "newgidmap")
    _tool(gid_only, "newgidmap")
    _tool(other, "lxc-start")
    env = {"PATH": os.pathsep.join(map(str, (other, shadow, gid_only))), "LANG": "C"}
    out = lxc_config.start_environment(env)
    assert out == {"PATH": str(other), "LANG": "C"}
    assert env["PATH"].count(os.pathsep) == 2  # the caller's environment is not changed


def test_path_without_the_tools_is_kept_whole(tmp_path):
    env = {"PATH": f"{tmp_path}{os.pathsep}{tmp_path / 'none'}"}
    assert lxc_config.start_environment(env) == env
