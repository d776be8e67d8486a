"""Pure parts of VM live migration (services/instance/vm_migrate.py,
services/gateway/vm_live_move.py): the destination XML's paths, the root volume found in
a running domain's XML, LXD's refusals before any operation."""

from __future__ import annotations

import pytest

from services.gateway import vm_live_move
from services.instance import vm_migrate
from shared.errors import BadRequest

XML = """<domain type='qemu'><name>v1</name>
<metadata><corral:instance xmlns:corral="https://corral.dev/xmlns/instance/1" name="v1"
 vmdir="/n1/virtual-machines/v1"/></metadata>
<os><kernel>/n1/pool/virtual-machines/v1/boot/vmlinuz</kernel></os>
<devices>
<disk type='file' device='disk'><source file='/n1/pool/virtual-machines/v1/root.qcow2'/>
<target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><source file='/n1/pool/virtual-machines/v10/root.qcow2'/>
<target dev='vdb' bus='virtio'/></disk>
<serial type='pty'><log file='/n1/virtual-machines/v1/console.log' append='on'/></serial>
<channel type='unix'><source mode='bind' path='/run/corral/vm-abc.sock'/></channel>
</devices></domain>"""


def test_dest_xml_moves_whole_path_components_only() -> None:
    out = vm_migrate.dest_xml(XML, [
        ("/run/corral/vm-abc.sock", "/n2/virtual-machines/v1/agent.sock"),
        ("/n1/pool/virtual-machines/v1", "/n2/virtual-machines/v1/volume"),
        ("/n1/virtual-machines/v1", "/n2/virtual-machines/v1")])
    assert "/n2/virtual-machines/v1/volume/root.qcow2" in out
    assert "/n2/virtual-machines/v1/volume/boot/vmlinuz" in out
    assert 'vmdir="/n2/virtual-machines/v1"' in out
    assert "/n2/virtual-machines/v1/console.log" in out
    assert "/n2/virtual-machines/v1/agent.sock" in out
    assert "/n1/pool/virtual-machines/v10/root.qcow2" in out  # another volume: untouched
    assert "/n1/pool/virtual-machines/v1/" not in out


def test_root_volume_is_the_directory_of_vda() -> None:
    assert vm_migrate.root_volume(XML) == "/n1/pool/virtual-machines/v1"
    assert vm_migrate.root_volume("<domain><devices/></domain>") is None


def test_live_move_needs_migration_stateful_and_no_extra_disk() -> None:
    inst = {"name": "v1", "expanded_config": {}, "expanded_devices": {
        "root": {"type": "disk", "path": "/", "pool": "default"}}}
    with pytest.raises(BadRequest, match="migration.stateful=true"):
        vm_live_move.check(inst, "node2")
    inst["expanded_config"]["migration.stateful"] = "true"
    vm_live_move.check(inst, "node2")
    inst["expanded_devices"]["data"] = {"type": "disk", "source": "vol", "path": "/data"}
    with pytest.raises(BadRequest, match="attached custom volume"):
        vm_live_move.check(inst, "node2")
