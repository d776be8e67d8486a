"""Unit tests of the release commands built from dnsmasq's lease file (no dnsmasq run):
one ``dhcp_release`` per IPv4 lease of the MACs (with the client-id dnsmasq keyed it by),
one ``dhcp_release6`` per DHCPv6 lease (client DUID, IAID, the server's DUID), and
None (fall back to a restart) when a tool is missing or the server DUID unknown."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.network.drivers import dhcp_release, dnsmasq

MAC_A, MAC_B = "00:16:3e:00:00:0a", "00:16:3e:00:00:0b"
LEASES = f"""\
1796010505 {MAC_A} 10.0.3.10 a 01:{MAC_A}
1796010505 {MAC_B} 10.0.3.11 b *
duid 00:01:00:01:2e:aa:bb:cc:00:16:3e:ff:ff:ff
1796010505 1234567 fd42::10 a 00:03:00:01:{MAC_A}
"""


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / dnsmasq.LEASES_FILE).write_text(LEASES)
    monkeypatch.setattr(dhcp_release.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    return tmp_path


def test_commands_for_ipv4_and_dhcpv6_leases(state_dir: Path) -> None:
    commands, others = dhcp_release._commands(state_dir, "br0", {MAC_A})
    assert commands == [
        ["/usr/bin/dhcp_release", "br0", "10.0.3.10", MAC_A, f"01:{MAC_A}"],
        ["/usr/bin/dhcp_release6", "--iface", "br0", "--ip", "fd42::10", "--iaid", "1234567",
         "--client-id", f"00:03:00:01:{MAC_A}",
         "--server-id", "00:01:00:01:2e:aa:bb:cc:00:16:3e:ff:ff:ff"]]
    assert others == {MAC_B}


def test_no_client_id_and_other_macs_untouched(state_dir: Path) -> None:
    commands, others = dhcp_release._commands(state_dir, "br0", {MAC_B})
    assert commands == [["/usr/bin/dhcp_release", "br0", "10.0.3.11", MAC_B]]
    assert others == {MAC_A}


def test_missing_tool_or_server_duid_means_fallback(state_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dhcp_release.shutil, "which",
                        lambda tool: None if tool == "dhcp_release6" else f"/usr/bin/{tool}")
    assert dhcp_release._commands(state_dir, "br0", {MAC_A})[0] is None
    assert dhcp_release._commands(state_dir, "br0", {MAC_B})[0] is not None
    monkeypatch.setattr(dhcp_release.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    (state_dir / dnsmasq.LEASES_FILE).write_text(
        "\n".join(ln for ln in LEASES.splitlines() if not ln.startswith("duid")))
    assert dhcp_release._commands(state_dir, "br0", {MAC_A})[0] is None


def test_release_of_nothing_held(state_dir: Path) -> None:
    """No lease of the MAC (also after looking again): nothing sent, 0 released."""
    assert dhcp_release.release(state_dir, "br0", {"00:16:3e:00:00:0c"}) == 0
