"""Wire format shared with ``corral-agent.c`` (its header comment is the full spec).

Why a tiny binary framing instead of JSON: the agent is a static C program in a busybox
guest, and one virtio-serial byte stream must carry many execs and file transfers at once.

    handshake   host: MAGIC + 8-byte nonce    agent: MAGIC + the same nonce
    frame       [u32 len][u8 type][u32 channel][payload]    big endian, len <= 1 MiB

Both sides skip bytes until MAGIC, so a host that reconnects mid-stream resyncs.
"""

from __future__ import annotations

import struct

MAGIC = b"\xc0\xffCORRAL-AGENT1\n"
NONCE_LEN = 8
HEADER = struct.Struct(">IBI")
MAX_PAYLOAD = 1 << 20
CHUNK = 65536
UNSET = 0xFFFFFFFF

# host -> agent
EXEC, STDIN, RESIZE, SIGNAL, FILE_GET, FILE_PUT, FILE_DEL, DATA, STATE, PING = range(1, 11)
# agent -> host
R_STDOUT, R_STDERR, R_EXIT, R_OK, R_ERROR, R_FINFO, R_DATA = range(0x81, 0x88)

FILE_TYPES = {"file": 0, "directory": 1, "symlink": 2}
FILE_TYPE_NAMES = {v: k for k, v in FILE_TYPES.items()}


def frame(kind: int, channel: int, payload: bytes = b"") -> bytes:
    """One frame as bytes."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(len(payload), kind, channel) + payload


def cstr(s: str) -> bytes:
    """A NUL-terminated string; NULs inside would split it, so they are refused."""
    b = s.encode()
    if b"\0" in b:
        raise ValueError(f"string {s!r} contains a NUL byte")
    return b + b"\0"


def exec_payload(argv: list[str], env: dict[str, str], cwd: str, uid: int, gid: int,
                 interactive: bool, width: int, height: int) -> bytes:
    """EXEC request body: fixed header, then cwd, argv and env as NUL-terminated strings."""
    head = struct.pack(">IIIHHII", 1 if interactive else 0, uid, gid, width, height,
                       len(argv), len(env))
    return head + b"".join(cstr(s) for s in [cwd, *argv, *(f"{k}={v}" for k, v in env.items())])


def file_put_payload(path: str, mode: int | None, uid: int | None, gid: int | None,
                     type_: str, append: bool, target: str = "") -> bytes:
    """FILE_PUT header: mode/uid/gid (UNSET keeps or defaults), type, append, path, target."""
    body = struct.pack(">IIIBB", UNSET if mode is None else mode,
                       UNSET if uid is None else uid, UNSET if gid is None else gid,
                       FILE_TYPES[type_], 1 if append else 0) + cstr(path)
    return body + (cstr(target) if type_ == "symlink" else b"")


FINFO = struct.Struct(">IIIBQ")  # mode uid gid type size
