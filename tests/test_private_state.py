"""State files are private (issue 9): instance configs, LXC configs, logs and exec output
under ``$CORRAL_DIR`` are root's only, while an unprivileged container still starts and
runs (its root volume stays reachable through the 0711 directories, as in LXD).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from .world import make_world

pytestmark = pytest.mark.root
if os.geteuid() != 0 or not Path("/bin/busybox").exists():
    pytest.skip("needs root and busybox-static", allow_module_level=True)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_instance_state_is_root_only_and_the_container_runs(stack, api, busybox_tarball):
    with make_world(api, stack, busybox_tarball, network=False, pool_driver="dir") as w:
        name = w.create("priv", start=True, config={"environment.SECRET": "s3cret"})
        live = w.live(name)
        assert live["status"] == "Running" and live["pid"] > 0
        idmap = w.get(name)["config"]["volatile.idmap.current"]
        assert idmap not in ("", "[]"), "expected an unprivileged container"
        lxcpath = stack.dir / "lxc"
        d = w.lxc_dir(name)
        assert _mode(lxcpath) == 0o711
        assert _mode(d) == 0o700
        for f in ("config", "corral.json", "lxc.log", "console.log"):
            if (d / f).exists():
                assert _mode(d / f) & 0o077 == 0, f"{f}: {oct(_mode(d / f))}"
        assert _mode(d / "config") == 0o600 and _mode(d / "corral.json") == 0o600
        # Edits rewrite them 0600 too, and the container keeps running and answering.
        r = api.patch(f"/1.0/instances/{name}", json={"config": {"user.x": "1"}})
        assert r.status_code in (200, 202), r.text
        assert _mode(d / "config") == 0o600 and _mode(d / "corral.json") == 0o600
        r = api.get(f"/1.0/instances/{name}/files", params={"path": "/etc/hostname"})
        assert r.status_code == 200, r.text
        w.state(name, "restart", force=True)
        assert w.live(name)["status"] == "Running"


def test_older_readable_state_is_tightened_at_start(tmp_path):
    """What an older version left 0755/0644 becomes 0700/0600 when the driver opens."""
    from services.instance.drivers.lxc import LXCDriver

    root = tmp_path / "lxc"
    (root / "c1").mkdir(parents=True, mode=0o755)
    for f in ("config", "corral.json", "lxc.log"):
        (root / "c1" / f).write_text("x")
        (root / "c1" / f).chmod(0o644)
    LXCDriver(root)
    assert _mode(root) == 0o711 and _mode(root / "c1") == 0o700
    assert all(_mode(root / "c1" / f) == 0o600 for f in ("config", "corral.json", "lxc.log"))


@pytest.mark.timeout(90)
def test_up_makes_corral_dir_logs_and_pids_private(tmp_path):
    """deploy/up.sh: CORRAL_DIR 0711 (traversable, not listable, as /var/lib/lxd), logs
    and PID files in 0700 directories, an older readable log tightened to 0600."""
    from .test_deploy import Deployment, ok

    d = Deployment(tmp_path)
    d.dir.parent.mkdir()
    (d.dir / "logs").mkdir(parents=True, mode=0o755)
    (d.dir / "logs" / "old.log").write_text("x")
    (d.dir / "logs" / "old.log").chmod(0o644)
    try:
        ok(d.run("up.sh", CORRAL_MODE="single"))
        assert _mode(d.dir) == 0o711
        assert _mode(d.dir / "logs") == 0o700 and _mode(d.dir / "run") == 0o700
        assert _mode(d.dir / "logs" / "old.log") == 0o600
        ok(d.run("down.sh"))
    finally:
        d.kill_leftovers()
