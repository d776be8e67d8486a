"""Which ephemeral instances stopped without the API (services/instance/ephemeral.py)."""

from __future__ import annotations

from services.instance.ephemeral import left_running


def rec(ephemeral: bool = True, power: str | None = "RUNNING", status: str = "Running"):
    cfg = {"volatile.last_state.power": power} if power else {}
    return {"ephemeral": ephemeral, "status": status, "config": cfg}


def test_only_ephemeral_instances_we_started_and_did_not_stop():
    assert left_running(rec())
    assert left_running(rec(status="Stopped"))  # the reconcile rewrote the status
    assert not left_running(rec(ephemeral=False))
    assert not left_running(rec(power="STOPPED", status="Stopped"))  # lxc stop recorded it
    assert not left_running(rec(power=None, status="Stopped"))  # lxc init --ephemeral
    assert not left_running(rec(status="Deleting"))
    assert not left_running(rec(status="Creating"))
