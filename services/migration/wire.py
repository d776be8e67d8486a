"""LXD's migration control messages (lxd/migration/migrate.proto, proto2), by hand.

Why hand-written rather than generated: the venv has the protobuf runtime but no ``protoc``
(nor grpcio-tools) to generate ``migrate_pb2.py`` from the .proto, and the control channel
carries only three small messages (``MigrationHeader``, ``MigrationControl`` and, nested,
``Snapshot``/``Config``/``rsyncFeatures``/``btrfsFeatures``/``IDMapType``). The wire format
of those is a handful of varints and length-delimited fields; this module encodes the fields
Corral writes and decodes every field LXD 5.0 sends (unknown fields are skipped, as
protobuf does). Messages are dicts keyed by the .proto's field names.
"""

from __future__ import annotations

from typing import Any

# MigrationFSType
RSYNC, BTRFS, ZFS, RBD, BLOCK_AND_RSYNC = 0, 1, 2, 3, 4
FS_NAMES = {RSYNC: "RSYNC", BTRFS: "BTRFS", ZFS: "ZFS", RBD: "RBD",
            BLOCK_AND_RSYNC: "BLOCK_AND_RSYNC"}
# CRIUType
CRIU_RSYNC, PHAUL, CRIU_NONE, VM_QEMU = 0, 1, 2, 3

VARINT, LEN = 0, 2

# Schemas: field number -> (name, kind, repeated). kind: "bool", "int", "uint", "str", or
# a nested schema's name.
SCHEMAS: dict[str, dict[int, tuple[str, str, bool]]] = {
    "Config": {1: ("key", "str", False), 2: ("value", "str", False)},
    "Device": {1: ("name", "str", False), 2: ("config", "Config", True)},
    "IDMapType": {1: ("isuid", "bool", False), 2: ("isgid", "bool", False),
                  3: ("hostid", "int", False), 4: ("nsid", "int", False),
                  5: ("maprange", "int", False)},
    "Snapshot": {1: ("name", "str", False), 2: ("localConfig", "Config", True),
                 3: ("profiles", "str", True), 4: ("ephemeral", "bool", False),
                 5: ("localDevices", "Device", True), 6: ("architecture", "int", False),
                 7: ("stateful", "bool", False), 8: ("creation_date", "int", False),
                 9: ("last_used_date", "int", False), 10: ("expiry_date", "int", False)},
    "rsyncFeatures": {1: ("xattrs", "bool", False), 2: ("delete", "bool", False),
                      3: ("compress", "bool", False), 4: ("bidirectional", "bool", False)},
    "zfsFeatures": {1: ("compress", "bool", False), 2: ("migration_header", "bool", False),
                    3: ("header_zvols", "bool", False)},
    "btrfsFeatures": {1: ("migration_header", "bool", False),
                      2: ("header_subvolumes", "bool", False),
                      3: ("header_subvolume_uuids", "bool", False)},
    "MigrationHeader": {1: ("fs", "uint", False), 2: ("criu", "uint", False),
                        3: ("idmap", "IDMapType", True), 4: ("snapshotNames", "str", True),
                        5: ("snapshots", "Snapshot", True), 7: ("predump", "bool", False),
                        8: ("rsyncFeatures", "rsyncFeatures", False),
                        9: ("refresh", "bool", False),
                        10: ("zfsFeatures", "zfsFeatures", False),
                        11: ("volumeSize", "int", False),
                        12: ("btrfsFeatures", "btrfsFeatures", False),
                        13: ("indexHeaderVersion", "uint", False)},
    "MigrationControl": {1: ("success", "bool", False), 2: ("message", "str", False)},
    "MigrationSync": {1: ("finalPreDump", "bool", False)},
}


class WireError(ValueError):
    """A control message that is not the protobuf it should be."""


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int32/int64: negative numbers are ten-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise WireError("varint too long")


def encode(schema: str, msg: dict[str, Any]) -> bytes:
    """``msg`` (field name -> value; None and absent fields are left out) as protobuf."""
    out = bytearray()
    for num, (name, kind, repeated) in sorted(SCHEMAS[schema].items()):
        value = msg.get(name)
        if value is None:
            continue
        for v in (value if repeated else [value]):
            if kind in ("bool", "int", "uint"):
                out += _varint(num << 3 | VARINT) + _varint(int(v))
            elif kind == "str":
                raw = str(v).encode()
                out += _varint(num << 3 | LEN) + _varint(len(raw)) + raw
            else:
                raw = encode(kind, v)
                out += _varint(num << 3 | LEN) + _varint(len(raw)) + raw
    return bytes(out)


def decode(schema: str, data: bytes) -> dict[str, Any]:
    """The message's known fields (repeated ones as lists, always present)."""
    fields = SCHEMAS[schema]
    msg: dict[str, Any] = {name: [] for name, _k, rep in fields.values() if rep}
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        num, wtype = tag >> 3, tag & 7
        if wtype == VARINT:
            value, pos = _read_varint(data, pos)
        elif wtype == LEN:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise WireError("truncated field")
            value, pos = data[pos:pos + size], pos + size
        elif wtype == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wtype == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise WireError(f"unsupported wire type {wtype}")
        if num not in fields:
            continue
        name, kind, repeated = fields[num]
        if kind == "bool":
            value = bool(value)
        elif kind == "int":
            value = value - (1 << 64) if value >= 1 << 63 else value
        elif kind == "str":
            value = bytes(value).decode(errors="replace")
        elif kind != "uint":
            value = decode(kind, bytes(value))
        if repeated:
            msg[name].append(value)
        else:
            msg[name] = value
    return msg


def header(data: bytes) -> dict[str, Any]:
    return decode("MigrationHeader", data)


def control(success: bool, message: str = "") -> bytes:
    return encode("MigrationControl", {"success": success, "message": message})


def rsync_features(hdr: dict[str, Any]) -> list[str]:
    """LXD's GetRsyncFeaturesSlice: the feature names a header says yes to."""
    feats = hdr.get("rsyncFeatures") or {}
    return [f for f in ("xattrs", "delete", "compress", "bidirectional") if feats.get(f)]


def config_list(config: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in config.items()]


def device_list(devices: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    return [{"name": n, "config": config_list(d)} for n, d in devices.items()]


def config_dict(entries: list[dict[str, str]]) -> dict[str, str]:
    return {e.get("key", ""): e.get("value", "") for e in entries}


def device_dict(entries: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {e.get("name", ""): config_dict(e.get("config") or []) for e in entries}
