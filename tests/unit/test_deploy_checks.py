"""Checks `make up` makes on the host before it starts anything (deploy/lib.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "deploy" / "lib.sh"


def untraversable(path: Path) -> list[str]:
    out = subprocess.run(["bash", "-c", f'source "{LIB}"; untraversable_parents "$1"', "_",
                          str(path)], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_sticky_world_writable_parents_are_traversable(tmp_path):
    """/tmp and /var/tmp are drwxrwxrwt: the `t` includes o+x, so no warning."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert str(sticky) not in untraversable(sticky / "corral" / "var")


def test_parents_without_o_x_are_reported(tmp_path):
    closed = tmp_path / "closed"
    sticky_no_x = closed / "sticky-no-x"  # drwxrwxrwT: sticky bit, no o+x
    sticky_no_x.mkdir(parents=True)
    sticky_no_x.chmod(0o1776)
    closed.chmod(0o700)
    try:
        found = untraversable(sticky_no_x / "var")
    finally:
        closed.chmod(0o755)
    assert str(sticky_no_x) in found and str(closed) in found
