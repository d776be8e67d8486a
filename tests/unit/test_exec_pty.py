"""Opening a container's ptmx from the host stays inside the container's root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.instance.drivers import lxc_exec


def test_absolute_links_resolve_inside_the_root(tmp_path: Path) -> None:
    assert Path("/dev/pts/ptmx").exists()
    (tmp_path / "pts").symlink_to("/dev/pts")  # the host's, if followed from here
    with pytest.raises(FileNotFoundError):
        lxc_exec._open_in_root(str(tmp_path), "pts/ptmx", os.O_PATH)
    (tmp_path / "up").symlink_to("../../../../../etc")
    with pytest.raises(FileNotFoundError):
        lxc_exec._open_in_root(str(tmp_path), "up/passwd", os.O_PATH)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("mine")
    fd = lxc_exec._open_in_root(str(tmp_path), "up/passwd", os.O_RDONLY)
    try:
        assert os.read(fd, 10) == b"mine"
    finally:
        os.close(fd)


def test_host_id_from_an_id_map(tmp_path: Path) -> None:
    m = tmp_path / "uid_map"
    m.write_text("         0    1000000      65536\n     70000      5000         10\n")
    assert lxc_exec._host_id(m, 0) == 1000000
    assert lxc_exec._host_id(m, 1000) == 1001000
    assert lxc_exec._host_id(m, 70003) == 5003
    assert lxc_exec._host_id(m, 65536) is None
