"""The hand-written codec of LXD's migration messages (services/migration/wire.py) against
the protobuf runtime itself: the .proto's messages are built here as descriptors (no
protoc needed), and bytes go both ways between the runtime and the codec."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from services.migration import wire

F = descriptor_pb2.FieldDescriptorProto
KINDS = {"bool": F.TYPE_BOOL, "int": F.TYPE_INT64, "uint": F.TYPE_UINT32,
         "str": F.TYPE_STRING}
INT32 = {("IDMapType", "hostid"), ("IDMapType", "nsid"), ("IDMapType", "maprange"),
         ("Snapshot", "architecture")}
ENUMS = {("MigrationHeader", "fs"), ("MigrationHeader", "criu")}


def _classes() -> dict[str, type]:
    """migrate.proto (proto2) as descriptors, from wire.SCHEMAS, types as the .proto's."""
    fdp = descriptor_pb2.FileDescriptorProto(name="migrate_test.proto", package="migration",
                                             syntax="proto2")
    for ename, values in (("MigrationFSType", ["RSYNC", "BTRFS", "ZFS", "RBD",
                                               "BLOCK_AND_RSYNC", "RBD_AND_RSYNC"]),
                          ("CRIUType", ["CRIU_RSYNC", "PHAUL", "NONE", "VM_QEMU"])):
        enum = fdp.enum_type.add(name=ename)
        for i, v in enumerate(values):
            enum.value.add(name=v, number=i)
    for mname, fields in wire.SCHEMAS.items():
        msg = fdp.message_type.add(name=mname)
        for num, (fname, kind, repeated) in fields.items():
            f = msg.field.add(name=fname, number=num,
                              label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if (mname, fname) in ENUMS:
                f.type = F.TYPE_ENUM
                f.type_name = ".migration." + ("MigrationFSType" if fname == "fs"
                                               else "CRIUType")
            elif kind in KINDS:
                f.type = F.TYPE_INT32 if (mname, fname) in INT32 else KINDS[kind]
            else:
                f.type = F.TYPE_MESSAGE
                f.type_name = f".migration.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"migration.{name}")) for name in wire.SCHEMAS}


CLASSES = _classes()
HEADER = {"fs": wire.RSYNC, "predump": False,
          "rsyncFeatures": {"xattrs": True, "delete": True, "compress": True,
                            "bidirectional": True},
          "snapshotNames": ["s1", "s2"],
          "snapshots": [{"name": "s1", "localConfig": [{"key": "limits.cpu", "value": "1"}],
                         "profiles": ["default"], "ephemeral": False,
                         "localDevices": [{"name": "root", "config": [
                             {"key": "path", "value": "/"}]}],
                         "architecture": 2, "stateful": False,
                         "creation_date": 1764470000, "last_used_date": 0,
                         "expiry_date": -62135596800}],
          "idmap": [{"isuid": True, "isgid": False, "hostid": 1000000, "nsid": 0,
                     "maprange": 1000000000}],
          "indexHeaderVersion": 1}


def test_header_bytes_parse_in_the_protobuf_runtime():
    msg = CLASSES["MigrationHeader"].FromString(wire.encode("MigrationHeader", HEADER))
    assert msg.fs == 0 and list(msg.snapshotNames) == ["s1", "s2"]
    assert msg.rsyncFeatures.bidirectional and msg.indexHeaderVersion == 1
    snap = msg.snapshots[0]
    assert snap.name == "s1" and snap.localConfig[0].value == "1"
    assert snap.localDevices[0].config[0].key == "path"
    assert snap.expiry_date == -62135596800 and snap.architecture == 2
    assert msg.idmap[0].hostid == 1000000 and msg.idmap[0].isuid


def test_runtime_bytes_decode_here():
    cls = CLASSES["MigrationHeader"]
    msg = cls.FromString(wire.encode("MigrationHeader", HEADER))
    msg.criu = wire.CRIU_NONE
    back = wire.header(msg.SerializeToString())
    assert back["criu"] == wire.CRIU_NONE
    assert back["snapshots"][0]["expiry_date"] == -62135596800
    assert wire.rsync_features(back) == ["xattrs", "delete", "compress", "bidirectional"]
    assert {k: back[k] for k in HEADER} == HEADER


def test_control_both_ways():
    ctl = CLASSES["MigrationControl"].FromString(wire.control(False, "no space left"))
    assert ctl.success is False and ctl.message == "no space left"
    ctl = CLASSES["MigrationControl"](success=True)
    assert wire.decode("MigrationControl", ctl.SerializeToString()) == {"success": True}


def test_unknown_fields_are_skipped():
    data = wire.control(True) + bytes([0x98, 0x06, 0x01])  # field 99, varint 1
    assert wire.decode("MigrationControl", data)["success"] is True
