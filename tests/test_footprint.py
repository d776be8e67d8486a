"""Each service maps only the native libraries it uses (issue 12's memory goal).

Why: every Corral process pays its imports in private memory, and `make bench` sums them;
libvirt (~11 MiB in the instance service) and aiohttp (~8 MiB in the hooks service) were
loaded at start by every stack, also where no VM and no webhook ever exists. They are now
loaded at first use. The test reads ``/proc/PID/maps`` of a private stack's processes, so
it sees what the process really holds, and then checks a first use still loads them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stack import Stack, private_stack, socket_client, wait_for


def maps(stack: Stack, service: str) -> str:
    return Path(f"/proc/{stack.procs[service].pid}/maps").read_text()


@pytest.fixture(scope="module")
def lean_stack(request):
    # CORRAL_VM=0: VMs are off, as on a host without libvirtd (another test's libvirtd,
    # if one runs, must not decide what the instance service loads)
    with private_stack(request, "footprint", CORRAL_VM="0") as s:
        yield s


def test_instance_service_does_not_load_libvirt_without_vms(lean_stack):
    with socket_client(lean_stack) as api:
        r = api.get("/1.0")  # the server's environment asks the drivers
        assert r.status_code == 200, r.text
        assert "qemu" not in r.json()["metadata"]["environment"]["driver"]
        r = api.get("/1.0/instances?recursion=2")
        assert r.status_code == 200, r.text
    assert "libvirtmod" not in maps(lean_stack, "instance")
    assert "liblxc" in maps(lean_stack, "instance")  # the check can see a library


def test_hooks_service_loads_aiohttp_at_its_first_webhook(lean_stack):
    assert "aiohttp" not in maps(lean_stack, "hooks")
    with socket_client(lean_stack) as api:
        r = api.post("/1.0/hooks", json={
            "name": "fp1", "type": "lifecycle", "action": "profile-created",
            "webhook": {"url": "http://127.0.0.1:9/none", "timeout": 1}})
        assert r.status_code == 200, r.text
        try:
            r = api.post("/1.0/profiles", json={"name": "fpprofile"})
            assert r.status_code == 200, r.text
            wait_for(lambda: "aiohttp" in maps(lean_stack, "hooks"), 20,
                     what="the hooks service to deliver its first webhook")
        finally:
            api.delete("/1.0/profiles/fpprofile")
            api.delete("/1.0/hooks/fp1")
