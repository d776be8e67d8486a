"""Build a busybox VM image (LXD split format: metadata tarball + qcow2 ``rootfs.img``).

What the VM driver needs to know (boot contract):

* **Disk**: ``rootfs.img`` is qcow2 holding a *partition-less* ext4 (label ``corral-root``),
  so the guest sees it as ``/dev/vda`` when attached with ``bus='virtio'``. No bootloader.
  To grow it: ``qemu-img resize`` then ``resize2fs`` on the host (busybox has no resize2fs).
* **Direct kernel boot**: the Debian cloud kernel and our initramfs travel in the metadata
  tarball as ``boot/vmlinuz``, ``boot/initrd.img`` and ``boot/cmdline``; after
  ``format.unpack`` they sit next to ``metadata.yaml`` (see :func:`boot_files`). Copies live
  in the ext4 at ``/boot`` too, for when only the disk is at hand (:func:`extract_boot`
  reads them with ``debugfs``, no mount). Use ``<kernel>``, ``<initrd>`` and
  ``<cmdline>`` = ``boot/cmdline`` plus ``corral.hostname=NAME`` (the guest's hostname).
* **initramfs**: busybox + the virtio modules of the same kernel (pci, blk, net, console,
  balloon, rng) and ACPI ``button``/``evdev``, signatures stripped (see
  :func:`strip_signature`), insmod'ed in dependency order; it mounts
  ``root=`` (default ``/dev/vda``, ext4, rw) and ``switch_root``s to ``/sbin/init``.
* **Guest**: busybox init mounts /proc, /sys, /dev, brings up lo and (if present) eth0 with
  ``udhcpc -x hostname:$(hostname)``, runs ``acpid`` (so an ACPI shutdown powers off),
  respawns ``/usr/sbin/corral-cpu-online`` (onlines hotplugged vCPUs) and
  ``/usr/bin/corral-agent`` on the virtio-serial port named ``org.corral.agent``
  (``<channel type='unix'><target type='virtio' name='org.corral.agent'/>``), and a root
  autologin getty on ttyS0 (the console is already admin-only).

Everything but the kernel comes from this machine (busybox-static, gcc); the kernel is
fetched with ``apt-get download`` into a cache dir and reused. Fixed mtimes, UUIDs and
member order keep the fingerprint (sha256 of metadata + rootfs bytes, as LXD) stable.

    python -m shared.image.build_vm OUT_DIR    # prints the two paths
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

import yaml

from shared.agent.build import compile_agent
from shared.errors import BadRequest, CorralError, Internal, NotFound
from shared.image import build
from shared.image.format import normalize_architecture

KERNEL_META = "linux-image-cloud-amd64"
AGENT_PORT = "org.corral.agent"
# Kernel command line, each option measured under TCG (every guest instruction emulated):
# ``quiet``: each serial byte of the kernel's console flood is a trapped I/O write (/init
# prints /proc/version so the console log still starts with "Linux version").
# ``cryptomgr.notests``: skips the crypto self-tests the kernel runs at boot (~0.4 s of
# initcalls under TCG, initcall_debug); they check the CPU's crypto code, which is not
# what a TCG guest needs checked (ignored if the guest is booted with fips=1).
# Not ``acpi=noirq`` (it saves ~0.5 s of ACPI link AML when virtio_pci probes, but the
# kernel then skips the MADT: one possible CPU, so ``limits.cpu`` hotplug breaks).
CMDLINE = "console=ttyS0 root=/dev/vda rw quiet cryptomgr.notests"
MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "virtio_balloon",
           "virtio_rng", "button", "evdev"]
INITRAMFS_APPLETS = ["sh", "mount", "umount", "insmod", "mkdir", "sleep", "cat",
                     "switch_root", "echo", "test", "["]

INIT = """#!/bin/sh
# initramfs: load the virtio drivers (modules in this kernel), mount the root disk, switch.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
cat /proc/version
for m in $(cat /modules.order); do
    insmod "/modules/$m.ko" || echo "initramfs: insmod $m failed"
done
root=/dev/vda fstype=ext4 opts=rw
for a in $(cat /proc/cmdline); do
    case "$a" in root=*) root="${a#root=}" ;; rootfstype=*) fstype="${a#rootfstype=}" ;;
    ro) opts=ro ;; esac
done
n=0
while [ ! -b "$root" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
mkdir -p /newroot
if ! mount -t "$fstype" -o "$opts" "$root" /newroot; then
    echo "initramfs: cannot mount $root; dropping to a shell"
    exec sh
fi
for d in dev proc sys; do mount --move "/$d" "/newroot/$d"; done
exec switch_root /newroot /sbin/init
"""

INITTAB = f"""\
::sysinit:/etc/init.d/rcS.vm
::respawn:/usr/bin/corral-agent --name {AGENT_PORT}
::respawn:/usr/sbin/corral-cpu-online
ttyS0::respawn:/sbin/getty -n -l /sbin/autologin -L 115200 ttyS0 vt100
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
::shutdown:/bin/umount -a -r
::restart:/sbin/init
"""

RCS_VM = """#!/bin/sh
# VM prelude to the common rcS: /dev, hostname from the kernel command line, ACPI button.
PATH=/sbin:/bin:/usr/sbin:/usr/bin
[ -e /proc/self/mounts ] || mount -t proc proc /proc
grep -q "^[^ ]* /dev " /proc/mounts || mount -t devtmpfs -o nosuid devtmpfs /dev
for a in $(cat /proc/cmdline); do
    case "$a" in corral.hostname=?*)
        h="${a#corral.hostname=}"
        echo "$h" > /etc/hostname
        printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\t%s\\n::1\\tlocalhost\\n' "$h" > /etc/hosts
        ;;
    esac
done
acpid
exec /etc/init.d/rcS
"""

# The kernel leaves hotplugged vCPUs offline; online them so `nproc` sees them (a builtin
# `read` per CPU each second: no fork, nothing for a TCG guest to notice).
CPU_ONLINE = """#!/bin/sh
while :; do
    for c in /sys/devices/system/cpu/cpu[0-9]*/online; do
        [ -e "$c" ] || continue  # one vCPU: cpu0 has no online file, the glob stays literal
        read v < "$c" 2>/dev/null && [ "$v" = 0 ] && echo 1 > "$c"
    done
    sleep 1
done
"""

VM_FILES: dict[str, tuple[int, str]] = {
    "usr/sbin/corral-cpu-online": (0o755, CPU_ONLINE),
    "etc/inittab": (0o644, INITTAB),
    "etc/init.d/rcS.vm": (0o755, RCS_VM),
    "sbin/autologin": (0o755, "#!/bin/sh\nexec /bin/login -f root\n"),
    "etc/acpi/PWRF/00000080": (0o755, "#!/bin/sh\nexec /sbin/poweroff\n"),
}
VM_DIRS = ["boot", "etc/acpi", "etc/acpi/PWRF", "lib"]


# ---------------------------------------------------------------- kernel


def default_cache_dir(out_dir: Path) -> Path:
    """``$CORRAL_DIR/cache/vm-kernel`` when set, else ``OUT_DIR/.cache``."""
    base = os.environ.get("CORRAL_DIR")
    return Path(base) / "cache" / "vm-kernel" if base else Path(out_dir) / ".cache"


def _apt_download(spec: str, cache: Path) -> None:
    res = subprocess.run(["apt-get", "download", spec], cwd=cache, capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise Internal(f"`apt-get download {spec}` failed: {res.stderr.strip()[-1000:]}; "
                       "run apt-get update or check the Debian mirror")


def fetch_kernel(cache: Path) -> tuple[Path, Path]:
    """(vmlinuz, modules dir) of the cloud kernel, downloaded once into ``cache``.

    The real package is read from the metapackage's Depends, so a kernel ABI bump in the
    archive is followed without code changes.
    """
    cache.mkdir(parents=True, exist_ok=True)
    metas = sorted(cache.glob(f"{KERNEL_META}_*.deb"))
    if not metas:
        _apt_download(KERNEL_META, cache)
        metas = sorted(cache.glob(f"{KERNEL_META}_*.deb"))
    if not metas:
        raise Internal(f"apt-get download {KERNEL_META} produced no .deb")
    dep = subprocess.run(["dpkg-deb", "-f", str(metas[-1]), "Depends"], capture_output=True,
                         text=True).stdout
    m = re.search(r"(linux-image-[\w.+-]+)(?:\s*\(=\s*([^)\s]+)\))?", dep)
    if not m:
        raise Internal(f"{metas[-1].name} names no linux-image package in Depends: {dep!r}")
    pkg, version = m.group(1), m.group(2)
    tree = cache / pkg
    if not (tree / "boot").is_dir():
        debs = sorted(cache.glob(f"{pkg}_*.deb"))
        if not debs:
            _apt_download(f"{pkg}={version}" if version else pkg, cache)
            debs = sorted(cache.glob(f"{pkg}_*.deb"))
        part = cache / f"{pkg}.part"
        shutil.rmtree(part, ignore_errors=True)
        res = subprocess.run(["dpkg", "-x", str(debs[-1]), str(part)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            shutil.rmtree(part, ignore_errors=True)
            raise Internal(f"Cannot unpack {debs[-1].name}: {res.stderr.strip()}")
        part.replace(tree)
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    mods = sorted((tree / "lib/modules").glob("*")) or sorted((tree / "usr/lib/modules").glob("*"))
    if not kernels or not mods:
        raise Internal(f"{pkg} holds no boot/vmlinuz-* or lib/modules/*")
    return kernels[-1], mods[-1]


SIG_MAGIC = b"~Module signature appended~\n"


def strip_signature(ko: bytes) -> bytes:
    """The module without its appended signature (``struct module_signature`` + PKCS#7).

    Why: the kernel (CONFIG_MODULE_SIG without _FORCE) loads unsigned modules, and skipping
    the SHA-256 + RSA check of every module is measurable when the CPU is emulated (TCG).
    """
    if not ko.endswith(SIG_MAGIC):
        return ko
    trailer = len(SIG_MAGIC) + 12  # module_signature: 5 u8, 3 pad, __be32 sig_len
    if len(ko) < trailer:
        raise Internal("Truncated module signature")
    sig_len = int.from_bytes(ko[-len(SIG_MAGIC) - 4:-len(SIG_MAGIC)], "big")
    if sig_len + trailer > len(ko):
        raise Internal(f"Module signature length {sig_len} exceeds the module")
    return ko[:-(trailer + sig_len)]


def module_order(mod_dir: Path, wanted: list[str]) -> list[tuple[str, Path]]:
    """``wanted`` modules and their dependencies, dependencies first.

    The package ships no modules.dep (depmod runs at install), so each ``.ko``'s own
    ``depends=`` modinfo field is read instead.
    """
    files = {p.name.split(".ko")[0].replace("-", "_"): p for p in mod_dir.rglob("*.ko*")}
    order: list[tuple[str, Path]] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if any(n == name for n, _ in order):
            return
        if name in path:
            raise Internal(f"Module dependency loop: {' -> '.join(path + (name,))}")
        ko = files.get(name)
        if ko is None:
            raise NotFound(f"Kernel module {name!r} is not in {mod_dir} (built in?)")
        data = ko.read_bytes()
        if ko.suffix != ".ko":
            raise Internal(f"Compressed module {ko.name} is not supported")
        m = re.search(rb"(?:^|\x00)depends=([^\x00]*)", data)
        for dep in (m.group(1).decode().split(",") if m and m.group(1) else []):
            visit(dep.replace("-", "_"), path + (name,))
        order.append((name, ko))

    for w in wanted:
        visit(w, ())
    return order


# ---------------------------------------------------------------- initramfs


def cpio_newc(entries: list[tuple[str, int, bytes]], mtime: int) -> bytes:
    """A newc cpio archive of (name, st_mode, data), all root-owned: no root needed."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        rdev = (5, 1) if name == "dev/console" else (0, 0)
        fields = [ino, mode, 0, 0, 1, mtime, len(data), 0, 0, *rdev, len(name) + 1, 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(name.encode() + b"\0")
        pad()
        out.write(data)
        pad()
    return out.getvalue()


def build_initramfs(busybox: Path, mod_dir: Path, mtime: int) -> bytes:
    """Uncompressed initramfs: busybox, the ordered modules and the /init script.

    Not compressed: the guest would inflate it with emulated instructions, while QEMU
    loads the 2.7 MB raw from the host for free; the image tarball is gzip'ed anyway.
    """
    mods = module_order(mod_dir, MODULES)
    d, f, lnk = 0o040755, 0o100755, 0o120777
    entries: list[tuple[str, int, bytes]] = [
        (n, d, b"") for n in ("bin", "dev", "proc", "sys", "modules", "newroot")]
    entries.append(("dev/console", 0o020600, b""))
    entries.append(("bin/busybox", f, busybox.read_bytes()))
    entries += [(f"bin/{a}", lnk, b"busybox") for a in INITRAMFS_APPLETS]
    entries += [(f"modules/{n}.ko", 0o100644, strip_signature(p.read_bytes()))
                for n, p in mods]
    entries.append(("modules.order", 0o100644, "".join(f"{n}\n" for n, _ in mods).encode()))
    entries.append(("init", f, INIT.encode()))
    return cpio_newc(entries, mtime)


# ---------------------------------------------------------------- rootfs disk


def _stage_rootfs(root: Path, busybox: Path, applets: list[str], agent: Path,
                  boot: dict[str, bytes], mtime: int) -> None:
    """Lay the guest filesystem out in ``root`` (the container layout plus VM parts)."""
    for rel, mode in sorted(build.DIRS.items()) + [(x, 0o755) for x in VM_DIRS]:
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel).chmod(mode)
    files = dict(build.FILES) | VM_FILES
    for rel, (mode, text) in files.items():
        (root / rel).write_text(text)
        (root / rel).chmod(mode)
    shutil.copyfile(busybox, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    shutil.copyfile(agent, root / "usr/bin/corral-agent")
    (root / "usr/bin/corral-agent").chmod(0o755)
    for name, data in boot.items():
        (root / "boot" / name).write_bytes(data)
    for rel, target in [(a, "/bin/busybox") for a in applets] + list(build.LINKS.items()):
        p = root / rel
        if not p.exists() and not p.is_symlink():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.symlink_to(target)
    for p in sorted(root.rglob("*"), reverse=True) + [root]:
        os.utime(p, (mtime, mtime), follow_symlinks=False)


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise Internal(f"{what}: {cmd[0]} is not installed (e2fsprogs / qemu-utils)") from None
    if res.returncode != 0:
        raise Internal(f"{what} failed: {(res.stderr or res.stdout).strip()[-1500:]}")
    return res.stdout


def make_disk(root: Path, raw: Path, qcow2: Path, size_mib: int, mtime: int, seed: str) -> None:
    """ext4 filled from ``root`` (``mkfs.ext4 -d``, no loop mount), then qcow2."""
    fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"corral-vm-root:{seed}"))
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(mtime))
    with open(raw, "wb") as f:
        f.truncate(size_mib << 20)
    _run(["mkfs.ext4", "-q", "-F", "-L", "corral-root", "-U", fs_uuid,
          "-E", f"hash_seed={fs_uuid},root_owner=0:0", "-d", str(root), str(raw)],
         "mkfs.ext4", env)
    # mkfs copies each file's ctime (which utime cannot set) and, unless we are root, our
    # uid: pin both with debugfs so the same inputs give the same disk bytes.
    fix = ["uid", "gid"] if os.geteuid() != 0 else []
    script = raw.with_suffix(".debugfs")
    script.write_text("".join(
        f"sif /{p.relative_to(root)} {k} {v}\n" for p in [root, *sorted(root.rglob("*"))]
        for k, v in [("ctime", f"@{mtime}"), ("ctime_extra", "0"), *((k, "0") for k in fix)]))
    _run(["debugfs", "-w", "-f", str(script), str(raw)], "debugfs (fix inodes)", env)
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
         "qemu-img convert")


# ---------------------------------------------------------------- metadata


def metadata_yaml(arch: str, created: int, version: str, kernel: str) -> bytes:
    """metadata.yaml of the VM image; no templates (the hostname comes via the cmdline)."""
    doc = {
        "architecture": arch, "creation_date": created,
        "properties": {"os": "busybox", "release": version, "variant": "default",
                       "architecture": arch, "type": "virtual-machine", "kernel": kernel,
                       "description": f"BusyBox {version} {arch} (VM, kernel {kernel})"},
        "templates": {},
        "requirements": {"secureboot": "false"},
    }
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False).encode()


def _write_meta_tarball(path: Path, meta: bytes, boot: dict[str, bytes], mtime: int) -> None:
    members: list[tuple[str, bytes | None, int]] = [
        ("metadata.yaml", meta, 0o644), ("templates", None, 0o755), ("boot", None, 0o755)]
    members += [(f"boot/{n}", data, 0o644) for n, data in sorted(boot.items())]
    with open(path, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        for name, data, mode in members:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.mtime, ti.uname, ti.gname = mode, mtime, "root", "root"
            if data is None:
                ti.type = tarfile.DIRTYPE
            else:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)


# ---------------------------------------------------------------- entry points


def build_busybox_vm(out_dir: str | Path, *, cache_dir: str | Path | None = None,
                     busybox: Path | None = None, size_mib: int = 512,
                     alias_hint: str = "busybox-vm") -> tuple[Path, Path]:
    """Build the split VM image in ``out_dir``; returns (metadata tarball, rootfs.img)."""
    if not 64 <= size_mib <= 1 << 20:
        raise BadRequest(f"Invalid disk size {size_mib} MiB: use 64 MiB or more")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", alias_hint):
        raise BadRequest(f"Invalid alias hint {alias_hint!r}: use letters, digits, . _ -")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = normalize_architecture(os.uname().machine)
    if arch != "x86_64":
        raise BadRequest(f"VM images are built for x86_64 only (this host is {arch})")
    vmlinuz, mod_dir = fetch_kernel(Path(cache_dir) if cache_dir else default_cache_dir(out_dir))
    kernel = mod_dir.name
    with tempfile.TemporaryDirectory(prefix="corral-vm-", dir=out_dir) as tmp:
        work = Path(tmp)
        bb = Path(busybox) if busybox else build.find_busybox(work)
        applets, version = build._busybox_facts(bb)
        mtime = int(bb.stat().st_mtime)
        boot = {"vmlinuz": vmlinuz.read_bytes(),
                "initrd.img": build_initramfs(bb, mod_dir, mtime),
                "cmdline": (CMDLINE + "\n").encode()}
        agent = compile_agent(work / "corral-agent")
        _stage_rootfs(work / "root", bb, applets, agent, boot, mtime)
        stem = f"{alias_hint}-{version}-{arch}"
        meta_path, disk_path = out_dir / f"{stem}.tar.gz", out_dir / f"{stem}.rootfs.img"
        make_disk(work / "root", work / "disk.raw", work / "disk.qcow2", size_mib, mtime,
                  f"{stem}:{kernel}")
        _write_meta_tarball(work / "meta.tar.gz",
                            metadata_yaml(arch, mtime, version, kernel), boot, mtime)
        (work / "meta.tar.gz").replace(meta_path)
        (work / "disk.qcow2").replace(disk_path)
    return meta_path, disk_path


def boot_files(image_dir: str | Path) -> tuple[Path, Path, str]:
    """(kernel, initrd, cmdline) of an unpacked image volume (``format.unpack`` output)."""
    d = Path(image_dir) / "boot"
    kernel, initrd, cmd = d / "vmlinuz", d / "initrd.img", d / "cmdline"
    if not kernel.is_file() or not initrd.is_file():
        raise NotFound(f"{image_dir} has no boot/vmlinuz and boot/initrd.img: not a Corral "
                       "VM image (extract them from the disk with extract_boot)")
    return kernel, initrd, cmd.read_text().strip() if cmd.is_file() else CMDLINE


def extract_boot(disk: str | Path, dest: str | Path) -> tuple[Path, Path]:
    """Copy /boot/vmlinuz and /boot/initrd.img out of a raw or qcow2 disk, no mount."""
    disk, dest = Path(disk), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="corral-boot-", dir=dest) as tmp:
        src = disk
        if _magic(disk) == b"QFI\xfb":
            src = Path(tmp) / "disk.raw"
            _run(["qemu-img", "convert", "-O", "raw", str(disk), str(src)], "qemu-img convert")
        out = []
        for name in ("vmlinuz", "initrd.img"):
            target = dest / name
            _run(["debugfs", "-R", f"dump /boot/{name} {target}", str(src)], "debugfs dump")
            if not target.is_file() or target.stat().st_size == 0:
                raise NotFound(f"{disk.name} has no /boot/{name}")
            out.append(target)
    return out[0], out[1]


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def main(argv: list[str] | None = None) -> int:
    """CLI: build into OUT_DIR and print the metadata tarball and rootfs.img paths."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m shared.image.build_vm OUT_DIR", file=sys.stderr)
        return 2
    try:
        meta, disk = build_busybox_vm(Path(args[0]))
    except CorralError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    print(meta)
    print(disk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
