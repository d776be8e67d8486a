"""The unit tests need no root: run them as `nobody`, as a contributor without root would.

Why a test: a unit test that quietly starts using a service, a bridge or a root-only
file would still pass when the suite runs as root, and then fail for everyone else.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _readable_by_others(path: Path) -> bool:
    """Every directory from / to ``path`` must be o+x, ``path`` itself o+r."""
    for d in [*reversed(path.parents), path]:
        if not os.stat(d).st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o004)


def _interpreter_for_others() -> tuple[str, dict[str, str]]:
    """The venv's Python when others may run it, else the system's Python of the same
    version reading the venv's packages (a venv made from a Python under /root, as
    pyenv installs it, cannot be run by anyone else)."""
    exe = Path(sys.executable).resolve()
    if _readable_by_others(exe):
        return sys.executable, {}
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"{exe} cannot be run by other users and {system} does not exist")
    return str(system), {"PYTHONPATH": sysconfig.get_paths()["purelib"]}


def test_unit_tests_pass_as_nobody(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("already unprivileged: `make unit` is this test")
    if not _readable_by_others(REPO):
        pytest.skip(f"{REPO} is not readable by other users")
    python, extra_env = _interpreter_for_others()
    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o777)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1",
           "CORRAL_DIR": str(tmp_path / "var"), "TMPDIR": str(tmp_path), **extra_env}
    proc = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
         python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
