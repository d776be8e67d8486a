"""Build a busybox system-container image (unified LXD tarball) from Debian's busybox-static.

This is the image tests and fresh installs boot, so it must need nothing but the static
busybox binary: the rootfs is written straight into the tarball (no staging directory, no
root needed to build), with fixed owners, mtimes and member order, so the same busybox
always yields the same fingerprint.

    python -m shared.image.build OUT_DIR    # prints the tarball path
"""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

from shared.errors import BadRequest, Internal
from shared.image.format import normalize_architecture

BUSYBOX = Path("/bin/busybox")
_SKIP_APPLETS = {"bin/busybox", "linuxrc"}

INITTAB = """\
::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
::restart:/sbin/init
"""

RCS = """\
#!/bin/sh
# Boot: kernel filesystems (unless the container manager mounted them), hostname, network.
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
# busybox-static has no `mountpoint` applet: look the target up in /proc/mounts instead.
mounted() { grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null; }
mnt() { mounted "$3" || { mkdir -p "$3"; mount -t "$1" -o "$4" "$2" "$3"; }; }
[ -e /proc/self/mounts ] || mount -t proc -o nosuid,nodev,noexec proc /proc
mnt sysfs sysfs /sys nosuid,nodev,noexec
mnt tmpfs tmpfs /run mode=0755,nosuid,nodev
mnt devpts devpts /dev/pts newinstance,ptmxmode=0666,mode=0620,gid=5
mnt tmpfs tmpfs /dev/shm mode=1777,nosuid,nodev
[ -s /etc/hostname ] && hostname -F /etc/hostname
ip link set lo up
if ip link show eth0 >/dev/null 2>&1; then
    ip link set eth0 up
    udhcpc -b -i eth0 -x hostname:"$(hostname)" -p /run/udhcpc.eth0.pid \\
        -s /usr/share/udhcpc/default.script
fi
for s in /etc/init.d/S*; do [ -x "$s" ] && "$s" start; done
exit 0
"""

RCK = """\
#!/bin/sh
# Shutdown: stop services in reverse order, release the lease, flush disks.
for s in $(ls -r /etc/init.d/S* 2>/dev/null); do [ -x "$s" ] && "$s" stop; done
[ -f /run/udhcpc.eth0.pid ] && kill "$(cat /run/udhcpc.eth0.pid)" 2>/dev/null
sync
exit 0
"""

UDHCPC_SCRIPT = """\
#!/bin/sh
# udhcpc lease hook: apply address, default routes and DNS from the lease.
RESOLV_CONF="${RESOLV_CONF:-/etc/resolv.conf}"
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
bound|renew)
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    prefix="${mask:-$subnet}"
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/"; then
        ip -4 addr flush dev "$interface"
        ip -4 addr add "$ip/${prefix:-24}" ${broadcast:+broadcast "$broadcast"} \\
            dev "$interface"
    fi
    if [ -n "$router" ]; then
        while ip -4 route del default dev "$interface" 2>/dev/null; do :; done
        metric=0
        for r in $router; do
            ip -4 route add default via "$r" dev "$interface" metric "$metric"
            metric=$((metric + 1))
        done
    fi
    tmp="$RESOLV_CONF.udhcpc"
    : > "$tmp"
    [ -n "${search:-$domain}" ] && echo "search ${search:-$domain}" >> "$tmp"
    for d in $dns; do echo "nameserver $d" >> "$tmp"; done
    cat "$tmp" > "$RESOLV_CONF" && rm -f "$tmp"
    ;;
esac
exit 0
"""

HOSTS_TPL = """\
127.0.0.1\tlocalhost
127.0.1.1\t{{ instance.name }}
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""

FILES: dict[str, tuple[int, str]] = {
    "etc/inittab": (0o644, INITTAB),
    "etc/init.d/rcS": (0o755, RCS),
    "etc/init.d/rcK": (0o755, RCK),
    "usr/share/udhcpc/default.script": (0o755, UDHCPC_SCRIPT),
    "etc/passwd": (0o644, "root:x:0:0:root:/root:/bin/sh\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
    "etc/shadow": (0o640, "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"),
    "etc/group": (0o644, "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"),
    "etc/hostname": (0o644, "busybox\n"),
    "etc/hosts": (0o644, "127.0.0.1\tlocalhost\n"),
    "etc/resolv.conf": (0o644, ""),
    "etc/fstab": (0o644, ""),
    "etc/profile": (0o644, "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\n"
                   "export PS1='\\h:\\w\\$ '\n"),
    "etc/shells": (0o644, "/bin/sh\n/bin/ash\n"),
}
DIRS: dict[str, int] = {
    d: 0o755 for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "usr/share",
                       "usr/share/udhcpc", "etc", "etc/init.d", "dev", "proc", "sys", "run",
                       "mnt", "home", "var", "var/log", "var/lib")
} | {"root": 0o700, "tmp": 0o1777, "var/tmp": 0o1777}
LINKS = {"var/run": "/run", "etc/mtab": "/proc/mounts"}
TEMPLATES = {"hostname.tpl": "{{ container.name }}\n", "hosts.tpl": HOSTS_TPL}


def busybox_from_deb(deb: Path, work: Path) -> Path:
    """Unpack a busybox-static .deb with ``dpkg -x`` and return its /bin/busybox."""
    root = work / "deb"
    root.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["dpkg", "-x", str(deb), str(root)], capture_output=True, text=True)
    if res.returncode != 0:
        raise BadRequest(f"Cannot unpack {deb.name!r}: {res.stderr.strip()}")
    binary = root / "bin" / "busybox"
    if not binary.is_file():
        raise BadRequest(f"{deb.name!r} holds no bin/busybox: is it busybox-static?")
    return binary


def find_busybox(work: Path) -> Path:
    """Use the installed busybox-static, else fetch the package from the Debian archive."""
    st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "busybox-static"],
                        capture_output=True, text=True)
    if st.returncode == 0 and "ok installed" in st.stdout and BUSYBOX.is_file():
        return BUSYBOX
    res = subprocess.run(["apt-get", "download", "busybox-static"], cwd=work,
                         capture_output=True, text=True)
    debs = sorted(work.glob("busybox-static_*.deb"))
    if res.returncode != 0 or not debs:
        raise Internal("busybox-static is not installed and `apt-get download busybox-static` "
                       f"failed: {res.stderr.strip() or 'no .deb'}; install it with apt-get")
    return busybox_from_deb(debs[-1], work)


def _busybox_facts(busybox: Path) -> tuple[list[str], str]:
    """Applet paths (``bin/sh`` ...) and the version, asked from the binary itself."""
    try:
        applets = subprocess.run([str(busybox), "--list-full"], capture_output=True,
                                 text=True, check=True).stdout.split()
        banner = subprocess.run([str(busybox)], capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise BadRequest(f"{str(busybox)!r} does not run as busybox: {e}") from None
    m = re.search(r"BusyBox v(\S+)", banner)
    return sorted(set(applets) - _SKIP_APPLETS), m.group(1) if m else "unknown"


def _info(name: str, mtime: int, kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
          size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.linkname, ti.mtime = kind, mode, size, link, mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def _members(busybox: Path, applets: list[str], meta: bytes, mtime: int
             ) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Every member of the image, in a fixed order: metadata, templates, then rootfs."""
    out: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("metadata.yaml", mtime, size=len(meta)), meta),
        (_info("templates", mtime, tarfile.DIRTYPE, 0o755), None)]
    for name, text in sorted(TEMPLATES.items()):
        out.append((_info(f"templates/{name}", mtime, size=len(text.encode())), text.encode()))
    rootfs: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    for d, mode in DIRS.items():
        rootfs[d] = (_info(f"rootfs/{d}", mtime, tarfile.DIRTYPE, mode), None)
    for path, (mode, text) in FILES.items():
        rootfs[path] = (_info(f"rootfs/{path}", mtime, mode=mode, size=len(text.encode())),
                        text.encode())
    data = busybox.read_bytes()
    rootfs["bin/busybox"] = (_info("rootfs/bin/busybox", mtime, mode=0o755, size=len(data)),
                             data)
    for path, target in [(a, "/bin/busybox") for a in applets] + list(LINKS.items()):
        rootfs.setdefault(path, (_info(f"rootfs/{path}", mtime, tarfile.SYMTYPE, 0o777,
                                       link=target), None))
    out.append((_info("rootfs", mtime, tarfile.DIRTYPE, 0o755), None))
    return out + [rootfs[k] for k in sorted(rootfs)]


def metadata_yaml(arch: str, created: int, version: str) -> bytes:
    """metadata.yaml for the busybox image, with hostname/hosts templates.

    Nothing here depends on where busybox came from (installed or downloaded .deb), so both
    paths produce the same fingerprint.
    """
    when = ["create", "copy", "start"]
    doc = {
        "architecture": arch, "creation_date": created,
        "properties": {"os": "busybox", "release": version, "variant": "default",
                       "architecture": arch,
                       "description": f"BusyBox {version} {arch}"},
        "templates": {"/etc/hostname": {"when": when, "template": "hostname.tpl"},
                      "/etc/hosts": {"when": when, "template": "hosts.tpl"}},
    }
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False).encode()


def build_busybox(out_dir: Path, *, alias_hint: str = "busybox", busybox: Path | None = None,
                  compression: str = "xz") -> Path:
    """Build the image tarball in ``out_dir`` and return its path.

    ``alias_hint`` names the file (``<hint>-<version>-<arch>.tar.xz``). The busybox binary's
    own mtime (set by dpkg from the package) is the creation date, so output is reproducible.
    """
    if compression not in ("xz", "gz"):
        raise BadRequest(f"Unknown compression {compression!r}: use xz or gz")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", alias_hint):
        raise BadRequest(f"Invalid alias hint {alias_hint!r}: use letters, digits, . _ -")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="corral-bb-") as work:
        bb = Path(busybox) if busybox else find_busybox(Path(work))
        applets, version = _busybox_facts(bb)
        arch = normalize_architecture(subprocess.run(
            ["uname", "-m"], capture_output=True, text=True).stdout.strip())
        mtime = int(bb.stat().st_mtime)
        meta = metadata_yaml(arch, mtime, version)
        members = _members(bb, applets, meta, mtime)
    out = out_dir / f"{alias_hint}-{version}-{arch}.tar.{compression}"
    tmp = out.with_name(out.name + ".part")
    try:
        with open(tmp, "wb") as raw:
            comp = (gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime)
                    if compression == "gz" else None)
            mode = "w|" if comp else "w|xz"
            with tarfile.open(fileobj=comp or raw, mode=mode, format=tarfile.GNU_FORMAT) as tf:
                for ti, data in members:
                    tf.addfile(ti, io.BytesIO(data) if data is not None else None)
            if comp:
                comp.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: build into OUT_DIR (default: current directory) and print the tarball path."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m shared.image.build [OUT_DIR]", file=sys.stderr)
        return 2
    try:
        print(build_busybox(Path(args[0] if args else ".")))
    except (BadRequest, Internal) as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
