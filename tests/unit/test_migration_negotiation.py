"""The header negotiation of a migration (pure logic): what each side offers and answers
for btrfs pools, VMs and --refresh, as LXD 5.0's sink and source decide it."""

from __future__ import annotations

from services.migration import refresh, sink, source, wire


def _snap(name: str) -> dict:
    return {"name": name, "localConfig": [], "profiles": ["default"], "localDevices": []}


def test_offer_carries_the_chosen_fs_and_rsync_features_for_the_fallback():
    inst = {"name": "c1", "status": "Stopped"}
    hdr = source.offer(inst, [], wire.BTRFS)
    assert hdr["fs"] == wire.BTRFS and hdr["criu"] is None
    assert set(hdr["rsyncFeatures"]) == {"xattrs", "delete", "compress", "bidirectional"}
    # round trip through the codec: an LXD target reads the same header
    assert wire.header(wire.encode("MigrationHeader", hdr))["fs"] == wire.BTRFS


def test_answer_says_btrfs_without_subvolume_features():
    offer = {"fs": wire.BTRFS, "rsyncFeatures": {"xattrs": True, "delete": True},
             "snapshotNames": ["s1"], "snapshots": [_snap("s1")],
             "btrfsFeatures": {"migration_header": True, "header_subvolumes": True}}
    resp = sink.answer(offer, False, wire.BTRFS)
    assert resp["fs"] == wire.BTRFS and "btrfsFeatures" not in resp  # no JSON header frame
    assert resp["snapshotNames"] == ["s1"] and resp["refresh"] is False
    assert sink.answer(offer, True, wire.RSYNC)["snapshotNames"] == []


def test_index_of_a_btrfs_transfer_is_an_optimized_backup():
    body = {"name": "c1", "type": "container"}
    resp = sink.answer({"fs": wire.BTRFS, "snapshotNames": [], "snapshots": []}, False,
                       wire.BTRFS)
    info = sink.index(body, resp)
    assert info["optimized"] is True and info["backend"] == "btrfs"
    vm = sink.index({"name": "v1", "type": "virtual-machine"},
                    sink.answer({"fs": wire.BLOCK_AND_RSYNC}, False, wire.BLOCK_AND_RSYNC))
    assert vm["type"] == "virtual-machine" and vm["optimized"] is False


def test_refresh_asks_only_for_missing_snapshots_and_drops_extra_ones():
    offer = {"fs": wire.RSYNC, "snapshotNames": ["a", "b", "c"],
             "snapshots": [_snap("a"), _snap("b"), _snap("c")]}
    resp = refresh.answer(offer, {"a", "old"}, False)
    assert resp["refresh"] is True and resp["snapshotNames"] == ["b", "c"]
    assert [s["name"] for s in resp["snapshots"]] == ["b", "c"]
    assert refresh.extra(offer, {"a", "old"}, False) == ["old"]
    assert refresh.extra(offer, {"a", "old"}, True) == []  # instance only: keep them all
    assert refresh.answer(offer, set(), True)["snapshotNames"] == []
