"""LXC system containers through python-lxc (the shape of LXD's driver_lxc.go, short).

Why these choices: the container's definition lives in ``lxcpath/<name>/config`` (what
LXC reads) plus ``corral.json`` (our inputs, so ``start`` can render limits and the
file API knows the idmap). Limits are written as ``lxc.cgroup[2].*`` items just before
start, for whichever cgroup version the host uses for each controller. State is read
from cgroup files and a netlink socket in the container's netns: nothing is spawned.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import lxc

from shared.errors import BadRequest, Conflict, CorralError, Internal, NotFound

from .. import idmap as idmaps
from .. import limits
from . import cgroups, disk_mounts, files, lxc_config, lxc_exec, netstate, oci_app
from .base import (
    PRIVATE_FILE,
    SPEC_FILE,
    Capabilities,
    DiskMount,
    ExecProcess,
    InstanceDriver,
    InstanceSpec,
    Nic,
    SpecDir,
    check_command,
    make_private,
    write_private,
)

ROOTFS = "rootfs"  # the container's files inside its root volume (LXD's layout)
DISKS_LISTING = "disks.json"  # what the start hook mounts (disk_mounts.hook_command)
START_TIMEOUT = 60  # seconds lxc-start may take (start hooks, a slow disk)
# seconds between list_host's checks of every spec file (changes made behind the driver)
SPEC_RECHECK = 5.0
_STATUS = {"RUNNING": ("Running", 103), "STOPPED": ("Stopped", 102),
           "FROZEN": ("Frozen", 110), "STARTING": ("Starting", 106),
           "STOPPING": ("Stopping", 107), "FREEZING": ("Freezing", 109),
           "THAWED": ("Running", 103), "ABORTING": ("Aborting", 108)}


class LXCDriver(SpecDir, InstanceDriver):
    """Containers under one lxcpath. ``idmapped_mounts=None`` detects on first start."""

    capabilities = Capabilities(instance_type="container",
                                live_limits=frozenset(limits.LIMIT_KEYS), exec=True,
                                exec_pty=True, files=True, freeze=True, console=True,
                                rename=True, templates=True, hotplug_disks=True)

    def __init__(self, lxcpath: Path, idmapped_mounts: bool | None = None) -> None:
        self.lxcpath = Path(lxcpath)
        self.lxcpath.mkdir(parents=True, exist_ok=True)
        make_private(self.lxcpath)
        self._idmapped = idmapped_mounts  # None: try idmapped, fall back to chown once
        # read-only handles for state reads, keyed by the config file's stat (_reader)
        self._readers: dict[str, tuple[tuple[int, int, int], lxc.Container | None]] = {}
        self._inits: dict[str, tuple[int, bytes]] = {}  # name -> (init pid, its start time)
        self._readers_lock = threading.Lock()
        # name -> inode of its directory when its spec file was seen there (list_host)
        self._specs: dict[str, int] = {}
        self._specs_gen = 0  # bumped by _forget: a list that raced it keeps nothing
        self._specs_checked = 0.0  # monotonic time of the last list that checked every one

    # ---- definition -------------------------------------------------------------------

    @property
    def spec_root(self) -> Path:
        return self.lxcpath

    def _container(self, name: str) -> lxc.Container:
        self._load(name)
        return self._lxc(name)

    def _lxc(self, name: str) -> lxc.Container:
        """liblxc's handle; a config LXC cannot load is an error of this instance only.

        python-lxc raises RuntimeError when the config file does not parse (an unknown
        key from an old raw.lxc): every caller that serves more than one instance (lists,
        states) catches this one error and reports that instance as "Error".
        """
        try:
            return lxc.Container(name, str(self.lxcpath))
        except RuntimeError:
            raise Internal(f"LXC cannot load the configuration of {name!r} "
                           f"({self._dir(name) / 'config'}): fix or remove its raw.lxc "
                           "and set it again") from None

    def create(self, spec: InstanceSpec) -> dict[str, str]:
        name, config = spec.name, spec.config
        d = self._dir(name)
        rootfs_path = Path(spec.volume) / ROOTFS
        if not rootfs_path.is_dir():
            raise BadRequest(f"Root volume {spec.volume} has no {ROOTFS}/ directory: is it "
                             "a container image?")
        limits.validate_limits(config)
        priv = lxc_config.privileged(config)
        lxc_config.nesting(config)
        if not priv:
            _check_traversable(rootfs_path)
        try:
            self._make_dir(name)
        except FileExistsError:
            raise Conflict(f"Instance {name!r} already exists in {self.lxcpath}") from None
        try:
            self._private_logs(name)
            imap = None if priv else idmaps.host_idmap()
            data = {"spec": {"name": name, "config": dict(config),
                             "devices": dict(spec.devices), "rootfs_path": str(rootfs_path),
                             "nics": [n.model_dump() for n in spec.nics]},
                    "idmap": imap.to_json() if imap else None, "shifted": False}
            if imap is not None and self._idmapped is False:
                lxc_config.shift_rootfs(rootfs_path, imap)
                data["shifted"] = True
            self._save(name, data)
            self._write_config(name, data)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            self._forget(name)  # a list may have seen its spec file (list_host)
            raise
        return {"volatile.idmap.base": "0", "volatile.idmap.current": data["idmap"] or "[]",
                "volatile.idmap.next": data["idmap"] or "[]"}

    def _write_config(self, name: str, data: dict) -> None:
        spec = _spec(data)
        imap = idmaps.IdMap.from_json(data["idmap"]) if data["idmap"] else None
        rootfs = Path(data["spec"]["rootfs_path"])
        text = lxc_config.render(spec, self.lxcpath, rootfs, imap, idmapped=not data["shifted"])
        if oci_app.is_app(rootfs):  # an application container (see oci_app)
            text += "\n".join(oci_app.config_lines(oci_app.process(rootfs, spec.config),
                                                   spec.nics, spec.devices, rootfs.parent,
                                                   spec.name)) + "\n"
        else:
            oci_app.refuse_on_system(spec.config)
        if _disks(data["spec"]):  # mounted before init runs (see disk_mounts)
            text += "lxc.hook.start-host = " + disk_mounts.hook_command(
                self._dir(name) / DISKS_LISTING) + "\n"
        write_private(self._dir(name) / "config", text)

    def delete(self, name: str) -> None:
        data = self._load(name)  # NotFound first; read once (the root check below)
        try:
            # The kept reader (the caller's status check made it): a new handle would parse
            # the config again only to be thrown away with the definition.
            state = self._reader(name).state  # type: ignore[union-attr]  # keep=True
        except Internal:  # a config LXC cannot load must not make it undeletable
            active = lxc.list_containers(active=True, defined=False,
                                         config_path=str(self.lxcpath))
            state = "RUNNING" if name in active else "STOPPED"
        if state != "STOPPED":
            raise Conflict(f"Instance {name!r} is {state.lower()}; stop it first")
        d = self._dir(name)
        root = Path(data["spec"]["rootfs_path"]).resolve()
        if root.is_relative_to(d.resolve()):
            raise Internal(f"Refusing to delete {d}: it contains the root volume {root}")
        shutil.rmtree(d)
        self._forget(name)
        cgroups.remove_leftovers(name, wait=2.0)

    def update(self, name: str, config: dict[str, str], devices: dict[str, dict[str, str]],
               nics: list[Nic] | None = None, disks: list[DiskMount] | None = None) -> None:
        """Store new expanded config/devices; takes effect at next start (limits: live)."""
        limits.validate_limits(config)
        data = self._load(name)
        if not oci_app.is_app(Path(data["spec"]["rootfs_path"])):
            oci_app.refuse_on_system(config)  # before anything is stored
        data["spec"].update(config=dict(config), devices=dict(devices))
        if nics is not None:
            data["spec"]["nics"] = [n.model_dump() for n in nics]
            data["spec"].pop("nic_config_lines", None)  # the form before neutral NICs
        if disks is not None:
            data["spec"]["disks"] = [d.model_dump() for d in disks]
        self._save(name, data)
        self._write_config(name, data)

    def rename(self, name: str, new_name: str, volume: Path | None = None) -> None:
        """Move a stopped container's definition to ``new_name`` (and a moved volume)."""
        c = self._container(name)
        if c.state != "STOPPED":
            raise Conflict(f"Instance {name!r} is {c.state.lower()}; stop it first")
        new_dir = self._dir(new_name)
        if new_dir.exists():
            raise Conflict(f"Instance {new_name!r} already exists in {self.lxcpath}")
        os.rename(self._dir(name), new_dir)
        self._forget(name)
        self._forget(new_name)
        data = self._load(new_name)
        data["spec"]["name"] = new_name
        if volume:
            data["spec"]["rootfs_path"] = str(Path(volume) / ROOTFS)
        self._save(new_name, data)
        self._write_config(new_name, data)
        cgroups.remove_leftovers(name)

    def names_on_host(self) -> list[str]:
        try:
            return sorted(p.name for p in self.lxcpath.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def purge(self, name: str) -> None:
        """Stop and destroy a container of ours, even one without ``corral.json``."""
        d = self._dir(name)
        try:
            c = lxc.Container(name, str(self.lxcpath))
        except RuntimeError:  # a config LXC cannot load: nothing it could have started
            c = None
        if c is not None and c.defined and c.running:
            c.stop()
            _wait_for(c, "STOPPED", 10)
        if (d / SPEC_FILE).exists():
            try:
                self.delete(name)
                return
            except CorralError:
                pass
        shutil.rmtree(d, ignore_errors=True)
        self._forget(name)
        cgroups.remove_leftovers(name)

    # ---- lifecycle --------------------------------------------------------------------

    def start(self, name: str) -> None:
        c = self._container(name)
        if c.state != "STOPPED":
            raise Conflict(f"Instance {name!r} is already {c.state.lower()}")
        data = self._load(name)
        try:
            self._start(c, name, data)
        except CorralError:
            if not (data["idmap"] and not data["shifted"] and self._idmapped is None):
                raise
            if not _idmap_error(self._log_since(name, 0, lines=80)):
                raise
            # Idmapped mounts do not work for this root: shift the files once, remember.
            self._idmapped = False
            lxc_config.shift_rootfs(Path(data["spec"]["rootfs_path"]),
                                    idmaps.IdMap.from_json(data["idmap"]))
            data["shifted"] = True
            self._save(name, data)
            self._write_config(name, data)
            self._start(self._lxc(name), name, data)

    def _private_logs(self, name: str) -> None:
        """liblxc creates its logs 0640 (as soon as a config naming them is loaded); made
        first, or tightened, they stay root's only (0600)."""
        for f in ("lxc.log", "console.log"):
            fd = os.open(self._dir(name) / f, os.O_WRONLY | os.O_CREAT | os.O_APPEND |
                         os.O_CLOEXEC, PRIVATE_FILE)
            try:
                os.fchmod(fd, PRIVATE_FILE)
            finally:
                os.close(fd)

    def _start(self, c: lxc.Container, name: str, data: dict) -> None:
        log = self._dir(name) / "lxc.log"
        self._private_logs(name)
        offset = log.stat().st_size if log.exists() else 0
        items = _limit_config_items(data["spec"]["config"]) + \
            _disk_limit_items(_disks(data["spec"]))
        for key, value in items:
            if not c.set_config_item(key, value):
                raise BadRequest(f"LXC rejected {key} = {value} for {name!r}")
        listing = self._dir(name) / DISKS_LISTING
        imap = idmaps.IdMap.from_json(data["idmap"]) if data["idmap"] else None
        disks = _disks(data["spec"])
        if disks or listing.exists():  # no disk, no hook: nothing to list (a rename saved)
            disk_mounts.write_hook_listing(
                listing, disks, imap is not None,
                (imap.uid_to_host(0), imap.gid_to_host(0)) if imap else (0, 0))
        rootfs = Path(data["spec"]["rootfs_path"])
        said = ""  # what lxc-start printed, when the log says nothing
        if oci_app.is_app(rootfs):
            oci_app.start(self.lxcpath, name, oci_app.process(rootfs, data["spec"]["config"]),
                          items, rootfs)
            ok = oci_app.wait_started(c, self.lxcpath, name, 10)
            if ok:
                return  # running, or already exited (its status is kept)
        else:
            ok, said = _lxc_start(self.lxcpath, name, items)
            if ok:
                ok = _wait_for(c, "RUNNING", 10)
        if not ok or c.init_pid <= 0:
            why = disk_mounts.hook_error(listing)
            if why:
                raise BadRequest(f"Failed to start instance {name!r}: a disk device could "
                                 f"not be mounted: {why}")
            tail = self._log_since(name, offset) or said
            raise Internal(f"Failed to start instance {name!r}: {tail or 'no log output'}")

    def _log_since(self, name: str, offset: int, lines: int = 15) -> str:
        try:
            with open(self._dir(name) / "lxc.log", "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str, timeout: float = 30, force: bool = False) -> None:
        """Why the kept reader, one state read and the cgroups read from /proc: the status
        check before this asked the monitor already; each further ask (state, FROZEN,
        init_pid) is a round trip to it, a new handle parses the config, and sweeping the
        cgroup roots for leftovers lists every hierarchy's top directory (~6 ms on a
        loaded host with many containers) where init and its monitor say where they are."""
        self._load(name)  # NotFound
        c = self._reader(name)
        assert c is not None  # keep=True
        state = c.state
        if state == "STOPPED":
            raise Conflict(f"Instance {name!r} is already stopped")
        pid = self._init_pid(name, c)
        left = _lxc_cgroups(name, pid, _parent_pid_or(pid)) if pid > 0 else None
        if force or state == "FROZEN" or not _shutdown(c, max(0.0, timeout)):
            if state == "FROZEN" or (not force and c.state == "FROZEN"):
                c.unfreeze()
            if not _kill(c, pid) and not c.stop() and c.state != "STOPPED":
                raise Internal(f"Failed to stop instance {name!r}: "
                               f"{self._log_since(name, 0, 5)}")
            _wait_for(c, "STOPPED", 10)
        with self._readers_lock:
            self._inits.pop(name, None)
        if left is None or not _rmdir_all(left):
            cgroups.remove_leftovers(name)  # not found that way: the full sweep

    def freeze(self, name: str) -> None:
        c = self._container(name)
        if c.state != "RUNNING":
            raise Conflict(f"Instance {name!r} is {c.state.lower()}, not running")
        if not c.freeze():
            raise Internal(f"Failed to freeze instance {name!r}")

    def unfreeze(self, name: str) -> None:
        c = self._container(name)
        if c.state != "FROZEN":
            raise Conflict(f"Instance {name!r} is {c.state.lower()}, not frozen")
        if not c.unfreeze():
            raise Internal(f"Failed to unfreeze instance {name!r}")

    # ---- state ------------------------------------------------------------------------

    def _forget(self, name: str) -> None:
        """Drop the cached state handle and init pid of a deleted or renamed container."""
        with self._readers_lock:
            self._readers.pop(name, None)
            self._inits.pop(name, None)
            self._specs.pop(name, None)
            self._specs_gen += 1

    def _reader(self, name: str, keep: bool = True) -> lxc.Container | None:
        """liblxc's handle for state reads only, kept while ``config`` is unchanged.

        Why: building one parses the config (~0.33 ms) and a list asks for every
        container. Only state and init_pid are asked of it (answered by the monitor, never
        from the parsed config), so a handle may serve any number of reads, and stop's
        monitor commands; start builds its own (it sets items on its handle).
        ``keep=False`` (a stopped container) only remembers that the config loads, not the
        handle (its memory).
        Raises Internal as ``_lxc`` when the config does not load; None when not kept.
        """
        try:
            st = os.stat(self._dir(name) / "config")
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        with self._readers_lock:
            hit = self._readers.get(name)
        if hit is not None and hit[0] == stamp and (hit[1] is not None or not keep):
            if hit[1] is _BROKEN:
                raise Internal(f"LXC cannot load the configuration of {name!r} "
                               f"({self._dir(name) / 'config'}): fix or remove its raw.lxc "
                               "and set it again")
            return hit[1] if keep else None
        try:
            c = self._lxc(name)
        except Internal:
            with self._readers_lock:
                self._readers[name] = (stamp, _BROKEN)
            raise
        with self._readers_lock:
            self._readers[name] = (stamp, c if keep else None)
        return c if keep else None

    def _init_pid(self, name: str, c: lxc.Container) -> int:
        """The container's init pid: the monitor is asked once per boot, not per read.

        The cached pid stands while /proc/<pid>/stat shows the same start time (a pid
        reused by another process starts later), and only for a container found active.
        """
        with self._readers_lock:
            hit = self._inits.get(name)
        if hit is not None and _start_time(hit[0]) == hit[1]:
            return hit[0]
        pid = c.init_pid
        started = _start_time(pid) if pid > 0 else None
        with self._readers_lock:
            if started is not None:
                self._inits[name] = (pid, started)
            else:
                self._inits.pop(name, None)
        return pid

    def host_status(self, name: str) -> str:
        """From LXC's monitor (no process is spawned); "Stopped" when not defined."""
        try:
            c = self._reader(name)
        except Internal:  # its config does not load (see _lxc): this one only
            return "Error"
        if c is None or not c.defined:
            return "Stopped"
        return _STATUS.get(c.state, ("Error", 112))[0]

    def state(self, name: str) -> dict:
        return self._state(name, None)

    def state_many(self, names: list[str]) -> dict[str, dict]:
        """States for a list (``recursion=2``): one pass for every status, as list_host.

        The active containers come from one ``list_containers`` (no monitor asked), the
        frozen ones from their freezer cgroup, the init pid from a cache checked against
        /proc: a list of running containers asks no monitor in the steady state.
        """
        active = set(lxc.list_containers(active=True, defined=False,
                                         config_path=str(self.lxcpath)))
        out = {}
        for n in names:
            try:
                out[n] = self._state(n, active)
            except NotFound:
                continue
        return out

    def _status_of(self, name: str, active: set[str] | None
                   ) -> tuple[lxc.Container | None, str, int]:
        """(handle, status, code): from the monitor, or from ``active`` + the freezer."""
        try:
            if active is None:
                c = self._reader(name)
                assert c is not None
                return (c, *_STATUS.get(c.state, ("Error", 112)))
            if name not in active:
                self._reader(name, keep=False)  # a config that does not load: "Error"
                return (None, "Stopped", 102)
            c = self._reader(name)
            assert c is not None
            frozen = cgroups.is_frozen(name)
            if frozen is None:  # no freezer to read: the monitor knows
                return (c, *_STATUS.get(c.state, ("Error", 112)))
            return (c, *(_STATUS["FROZEN"] if frozen else _STATUS["RUNNING"]))
        except Internal:  # its config does not load (see _lxc): "Error", not a failed list
            return (None, "Error", 112)

    def _state(self, name: str, active: set[str] | None) -> dict:
        data = self._load(name)  # NotFound when it is gone
        c, status, code = self._status_of(name, active)
        out = {"status": status, "status_code": code, "pid": 0, "processes": 0,
               "cpu": {"usage": 0},
               "memory": {"usage": 0, "usage_peak": 0, "swap_usage": 0, "swap_usage_peak": 0},
               "network": None, "disk": {}}
        if code == 102:  # an application that ended: its status
            last = oci_app.exit_code(self.lxcpath, name, settle=2.0)
            if last is not None:
                out["exit_code"] = last
        pid = self._init_pid(name, c) if c is not None and code not in (102, 112) else -1
        if pid > 0:
            out["pid"] = pid
            try:
                out.update(cgroups.CgroupPaths(pid, name).usage())
                net = netstate.network_state(pid)
            except (FileNotFoundError, ProcessLookupError):
                return out  # it stopped while we looked
            for nic in _nics(data["spec"]):
                if nic.name in net and nic.host_name:
                    net[nic.name]["host_name"] = nic.host_name
            out["network"] = net
        return out

    def list_host(self) -> dict[str, str]:
        """Every container of ours with its status, cheaply enough for 100s per list.

        Asking each container's monitor costs ~0.5 ms apiece; liblxc's list of active
        containers reads one file for all of them, and the freezer cgroup tells running
        from frozen. Only a container whose freezer state cannot be read is asked.

        A directory is ours once its spec file is there; that is checked once per
        directory (by name and inode, which the directory scan gives without a stat),
        not at every list: 1000 stats were ~3.5 ms of a 1000-instance list. A delete,
        rename or failed create here forgets the name (``_forget``); a directory removed
        and made again behind the driver's back (ext4 gives it the same inode) is seen
        at the next full check, every ``SPEC_RECHECK`` seconds. Statuses are read live
        every time.
        """
        active = set(lxc.list_containers(active=True, defined=False,
                                         config_path=str(self.lxcpath)))
        out: dict[str, str] = {}
        root = str(self.lxcpath)
        now = time.monotonic()
        with self._readers_lock:
            known, gen = self._specs, self._specs_gen
        if now - self._specs_checked >= SPEC_RECHECK:
            known = {}
        seen: dict[str, int] = {}
        try:
            entries = os.scandir(root)
        except FileNotFoundError:
            return out
        with entries:
            for entry in entries:
                n = entry.name
                ino = entry.inode()
                if known.get(n) != ino:
                    if not os.path.exists(f"{root}/{n}/{SPEC_FILE}"):  # os.path: no Path
                        continue
                seen[n] = ino
                if n not in active:
                    out[n] = "Stopped"
                    continue
                frozen = cgroups.is_frozen(n)
                if frozen is None:
                    try:
                        c = self._reader(n)
                        frozen_state = c.state if c is not None else "ERROR"
                    except Internal:  # its config does not load (see _lxc)
                        frozen_state = "ERROR"
                    out[n] = _STATUS.get(frozen_state, ("Error", 112))[0]
                else:
                    out[n] = "Frozen" if frozen else "Running"
        with self._readers_lock:
            if self._specs_gen == gen:
                self._specs = seen
                if not known:
                    self._specs_checked = now
        return out

    def idmap(self, name: str) -> idmaps.IdMap | None:
        """The container's map (None when privileged); ``volatile.idmap.current``."""
        text = self._load(name)["idmap"]
        return idmaps.IdMap.from_json(text) if text else None

    # ---- limits -----------------------------------------------------------------------

    def apply_limits_live(self, name: str, changed_config: dict[str, str]) -> None:
        """Validate, store and (when running) apply changed ``limits.*`` all-or-nothing."""
        data = self._load(name)
        new = {**data["spec"]["config"], **changed_config}
        new = {k: v for k, v in new.items() if v != ""}
        keys = tuple(k for k in limits.LIMIT_KEYS if k in changed_config)
        limits.validate_limits(new)
        c = self._container(name)
        if c.state in ("RUNNING", "FROZEN") and keys:
            self._apply_live(c, name, new, keys)
        data["spec"]["config"] = new
        self._save(name, data)

    def _apply_live(self, c: lxc.Container, name: str, config: dict[str, str],
                    keys: tuple[str, ...]) -> None:
        pairs = []
        for key in keys:
            ver = cgroups.version_of(limits.CONTROLLER_OF[key])
            pairs += [p for p in limits.cgroup_settings(config, ver, (key,)) if p not in pairs]
        cur_mem = c.get_cgroup_item("memory.limit_in_bytes")
        new_mem = dict(pairs).get("memory.limit_in_bytes")
        lowering = bool(new_mem and cur_mem and _num(new_mem) < _num(cur_mem))
        pairs = limits.memory_order(pairs, lowering)
        done: list[tuple[str, str]] = []
        for key, value in pairs:
            old = c.get_cgroup_item(key)
            if not c.set_cgroup_item(key, value):
                for k, v in reversed(done):  # undo so nothing is half-applied
                    c.set_cgroup_item(k, v)
                hint = " (is memory usage above the new limit?)" if "memory" in key else ""
                raise Conflict(f"Failed to set {key} = {value} on {name!r}{hint}; "
                               "no limit was changed")
            done.append((key, old.strip() if isinstance(old, str) else str(old)))

    # ---- extra disks -----------------------------------------------------------------

    def disks_of(self, name: str) -> list[DiskMount]:
        return _disks(self._load(name)["spec"])

    def _running_pid(self, name: str) -> int:
        c = self._container(name)
        if c.state not in ("RUNNING", "FROZEN") or c.init_pid <= 0:
            raise Conflict(f"Instance {name!r} is {c.state.lower()}, not running")
        return c.init_pid

    def disk_attach(self, name: str, disk: DiskMount) -> None:
        """Bind-mount the disk into the running container now (see disk_mounts)."""
        pid = self._running_pid(name)
        data = self._load(name)
        imap = idmaps.IdMap.from_json(data["idmap"]) if data["idmap"] else None
        idmapped = imap is not None
        # A mount point made by us belongs to the container's root as it sees it.
        ids = (imap.uid_to_host(0), imap.gid_to_host(0)) if imap else (0, 0)
        disk_mounts.inject(pid, disk, idmapped, ids)

    def disk_detach(self, name: str, disk: DiskMount) -> None:
        disk_mounts.eject(self._running_pid(name), disk.path)

    def disk_limits(self, name: str, disks: list[DiskMount]) -> None:
        """Set the blkio/io throttles of the running container to exactly ``disks``'
        (devices no longer limited are reset to no limit)."""
        c = self._container(name)
        old = _disk_limit_items(self.disks_of(name))
        new = _disk_limit_items(disks)
        reset = []
        for key, value in old:
            dev = value.split()[0]
            if not any(k == key and v.split()[0] == dev for k, v in new):
                reset.append((key, f"{dev} 0" if key.startswith("lxc.cgroup.") else
                              f"{dev} rbps=max wbps=max riops=max wiops=max"))
        for key, value in reset + new:
            item = key.removeprefix("lxc.cgroup2.").removeprefix("lxc.cgroup.")
            if not c.set_cgroup_item(item, value):
                raise BadRequest(f"Failed to set {item} = {value} on {name!r}: the kernel "
                                 "refused the disk limit")

    # ---- exec -------------------------------------------------------------------------

    def exec_start(self, name: str, command: list[str], env: dict[str, str] | None = None,
                   cwd: str | None = None, uid: int = 0, gid: int = 0,
                   interactive: bool = False, width: int = 80,
                   height: int = 24) -> ExecProcess:
        check_command(command)
        # The kept reader and the init pid known for this boot (a stat of /proc/<pid>/stat),
        # not a new lxc.Container and a monitor round trip for its state: the caller's
        # status check has just asked the monitor, and a new handle parses the config with
        # the GIL held (~0.33 ms quiet, ~5 ms under load). Exec only needs the name, the
        # lxcpath and a live init.
        c = self._reader(name)
        if c is None or self._init_pid(name, c) <= 0:
            self._load(name)  # NotFound when there is no such instance
            state = c.state.lower() if c is not None else "stopped"
            raise Conflict(f"Instance {name!r} is {state}, not running")
        home = "/root" if uid == 0 else "/"
        full = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": home, "USER": "root" if uid == 0 else "", "LANG": "C.UTF-8"}
        if interactive:
            full["TERM"] = "xterm"
        full.update(env or {})
        for k in full:
            if not k or "=" in k or "\0" in k + full[k]:
                raise BadRequest(f"Invalid environment variable name {k!r}")
        return lxc_exec.attach(c, list(command), full, cwd or home, uid, gid, interactive,
                               width, height)

    # ---- files ------------------------------------------------------------------------

    def _view(self, name: str) -> files.FsView:
        data = self._load(name)
        c = self._lxc(name)
        running = c.state in ("RUNNING", "FROZEN") and c.init_pid > 0
        root = Path(f"/proc/{c.init_pid}/root") if running else Path(data["spec"]["rootfs_path"])
        if not data["idmap"]:
            return files.FsView(root)
        m = idmaps.IdMap.from_json(data["idmap"])
        if not data["shifted"] and not running:
            return files.FsView(root)  # idmapped mount not active: on-disk ids are as-is
        view = files.FsView(
            root,
            to_host=lambda u, g: (m.uid_to_host(u), m.gid_to_host(g)),
            from_host=lambda u, g: (m.uid_from_host(u), m.gid_from_host(g)))
        if not data["shifted"]:
            view.create_as = (m.uid_to_host(0), m.gid_to_host(0))
        return view

    def file_get(self, name: str, path: str) -> tuple[bytes | list[str], int, int, int, str]:
        return files.file_get(self._view(name), path)

    def file_put(self, name: str, path: str, data: bytes, uid: int = 0, gid: int = 0,
                 mode: int | None = None, type: str = "file",
                 write: str = "overwrite", modify: frozenset[str] = frozenset()) -> None:
        files.file_put(self._view(name), path, data, uid, gid, mode, type, write,
                       modify=modify)

    def file_delete(self, name: str, path: str) -> None:
        files.file_delete(self._view(name), path)

    def root_owner(self, name: str) -> tuple[int, int]:
        """Host ids of the root user's files: non-zero only on a shifted rootfs."""
        data = self._load(name)
        if data.get("idmap") and data.get("shifted"):
            m = idmaps.IdMap.from_json(data["idmap"])
            return m.uid_to_host(0), m.gid_to_host(0)
        return 0, 0

    # ---- console ----------------------------------------------------------------------

    def log_dir(self, name: str) -> Path:
        self._load(name)
        return self._dir(name)

    def console_open(self, name: str) -> int:
        """A read/write fd on the container's console (tty 0), dup'ed so we own it."""
        c = self._container(name)
        if not c.running:
            raise Conflict(f"Instance {name!r} is stopped; start it to attach its console")
        fd = c.console_getfd(0)
        if isinstance(fd, tuple):
            fd = fd[0]
        if fd is None or fd < 0:
            raise Conflict(f"The console of {name!r} is busy or unavailable (is another "
                           "client attached?)")
        return fd


def _lxc_start(lxcpath: Path, name: str, items: list[tuple[str, str]]) -> tuple[bool, str]:
    """Start the container with the ``lxc-start`` binary; (started, what it printed).

    Why not python-lxc's ``Container.start``: liblxc forks the container's monitor from
    the calling process, so each running container kept a copy of the whole instance
    service (~56 MiB RSS, the Python heap and every import) for its lifetime, and moved
    the service into the container's monitor cgroup. ``lxc-start`` is a small C program:
    its monitor costs what it costs under LXD (a few MiB), it is daemonized (setsid, init
    reparents it), so it outlives a kill -9 of this service like before, and it returns
    once liblxc reported the container RUNNING (or failed). ``items`` (limits) are
    defined for this start only, as ``set_config_item`` did. The wait releases the GIL.
    Its PATH lacks newuidmap/newgidmap, so liblxc writes the id map itself (see
    ``lxc_config.start_environment``).
    """
    defines = [a for k, v in items for a in ("-s", f"{k}={v}")]
    binary = shutil.which("lxc-start") or "lxc-start"  # by the service's own PATH
    with tempfile.TemporaryFile() as out:
        try:
            res = subprocess.run([binary, "-n", name, "-P", str(lxcpath), *defines],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 env=lxc_config.start_environment(dict(os.environ)),
                                 close_fds=True, timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            return False, f"lxc-start did not return within {START_TIMEOUT} s"
        except OSError as exc:
            return False, f"cannot run lxc-start: {exc}"
        out.seek(0)
        said = out.read(8192).decode(errors="replace").strip()
    return res.returncode == 0, said


def _idmap_error(log: str) -> bool:
    """Whether LXC's log reports an error about the id map (idmapped mounts not working
    for this root). Errors only: a start logs warnings naming the id-map tools (left off
    its PATH on purpose), which say nothing about the mount."""
    return any("idmap" in line.lower() for line in log.splitlines()
               if " ERROR " in line)


_BROKEN: lxc.Container | None = object()  # type: ignore[assignment]  # config won't load


def _start_time(pid: int) -> bytes | None:
    """Field 22 of /proc/<pid>/stat (start time in ticks); None when the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2:].split(b" ", 20)[19]


def _wait_for(c: lxc.Container, state: str, timeout: float) -> bool:
    """``c.wait(state, timeout)`` without holding the GIL.

    python-lxc's ``wait`` and ``shutdown`` keep the GIL for as long as they wait, which
    froze the whole instance service (its event loop, every list and exec) for the length
    of a clean stop: 30 s by default. Asking the state is one short command to the
    container's monitor; between asks we sleep, which lets every other thread run.
    """
    deadline = time.monotonic() + timeout
    pause = 0.002  # a forced stop ends in a few ms: short first sleeps, then 50 ms
    while True:
        if c.state == state:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _kill(c: lxc.Container, pid: int = 0, timeout: float = 10) -> bool:
    """A forced stop that never holds the GIL: True once the container is gone.

    python-lxc's ``stop`` keeps the GIL until the monitor has torn the container down
    (veth, cgroups: 50-100 ms), freezing the whole instance service meanwhile. It asks
    the monitor to SIGKILL init; we send init that SIGKILL ourselves through a pidfd
    (no pid reuse race) and wait, in ``select``, for its monitor (init's parent) to
    exit, which is when ``stop`` returns. False (the caller uses ``stop``) when init or
    its monitor cannot be found this way. ``pid``: init's, when the caller knows it.
    """
    pid = pid if pid > 0 else c.init_pid
    if pid <= 0:
        return False
    try:
        init_fd = os.pidfd_open(pid)
    except OSError:
        return False
    mon_fd = -1
    try:
        mon = _parent_pid(pid)
        if not Path(f"/proc/{mon}/cmdline").read_bytes().startswith(b"[lxc monitor]"):
            return False
        mon_fd = os.pidfd_open(mon)
        if _parent_pid(pid) != mon:  # init (hence its pid) changed meanwhile
            return False
        signal.pidfd_send_signal(init_fd, signal.SIGKILL)
        select.select([mon_fd], [], [], timeout)
    except (OSError, ValueError, IndexError):
        return False
    finally:
        os.close(init_fd)
        if mon_fd >= 0:
            os.close(mon_fd)
    return _wait_for(c, "STOPPED", 1.0)


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _parent_pid_or(pid: int) -> int:
    try:
        return _parent_pid(pid)
    except (OSError, ValueError, IndexError):
        return 0


_hierarchies: tuple[dict[str, Path], Path | None] | None = None


def _lxc_cgroups(name: str, init: int, monitor: int) -> list[Path] | None:
    """The ``lxc.payload.<name>[-N]`` / ``lxc.monitor.<name>[-N]`` directories that init
    and its monitor sit in, from /proc/<pid>/cgroup; None when they cannot all be read
    (the caller then sweeps). Read before the stop: after it the processes are gone."""
    global _hierarchies
    if _hierarchies is None:
        _hierarchies = cgroups.hierarchies()  # cgroup mounts do not move
    v1, v2 = _hierarchies
    found: list[Path] = []
    for pid, kind in ((init, "payload"), (monitor, "monitor")):
        prefix = f"lxc.{kind}.{name}"
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, controllers, path = line.split(":", 2)
            mnt = v2 if not controllers else v1.get(controllers.split(",")[0])
            parts = path.strip("/").split("/")
            at = next((i for i, part in enumerate(parts) if part == prefix or (
                part.startswith(prefix + "-") and part[len(prefix) + 1:].isdigit())), None)
            if mnt is not None and at is not None:
                found.append(mnt.joinpath(*parts[:at + 1]))
    return found or None


def _rmdir_all(dirs: list[Path]) -> bool:
    """rmdir each (an empty cgroup only: a live one is never touched); False when one
    is still there."""
    ok = True
    for d in dict.fromkeys(dirs):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            ok = False
    return ok


def _shutdown(c: lxc.Container, timeout: float) -> bool:
    """A clean stop (the halt signal, then up to ``timeout`` seconds) that never holds
    the GIL while it waits (see ``_wait_for``): liblxc only sends the signal when asked
    with a timeout of 0."""
    if not c.shutdown(0):
        return False
    return _wait_for(c, "STOPPED", timeout)


def _nics(spec: dict) -> list[Nic]:
    return [Nic.model_validate(n) for n in spec.get("nics", [])]


def _disks(spec: dict) -> list[DiskMount]:
    return [DiskMount.model_validate(d) for d in spec.get("disks", [])]


def _disk_limit_items(disks: list[DiskMount]) -> list[tuple[str, str]]:
    """``lxc.cgroup[2].*`` items for the disks' I/O limits (v1 blkio here, v2 io.max)."""
    if not any(d.limited() for d in disks):
        return []
    if "blkio" in cgroups.hierarchies()[0]:
        return [("lxc.cgroup." + k, v) for k, v in disk_mounts.blkio_v1_items(disks)]
    return [("lxc.cgroup2." + k, v) for k, v in disk_mounts.io_v2_items(disks)]


def _spec(data: dict) -> InstanceSpec:
    s = data["spec"]
    return InstanceSpec(s["name"], s["config"], s["devices"],
                        Path(s["rootfs_path"]).parent, _nics(s))


def _check_traversable(path: Path) -> None:
    """An unprivileged root needs o+x on every parent of its rootfs (LXC fails late)."""
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise BadRequest(f"{parent} is not searchable by others (mode "
                             f"{parent.stat().st_mode & 0o777:o}); an unprivileged container "
                             f"cannot reach its root volume {path}: chmod o+x {parent}")


def _num(value: str) -> int:
    """A cgroup limit as a number; "-1" and "max" (no limit) compare as largest."""
    try:
        n = int(str(value).strip())
    except ValueError:
        return 2**63
    return 2**63 if n < 0 else n


def _limit_config_items(config: dict[str, str]) -> list[tuple[str, str]]:
    """``lxc.cgroup.*`` / ``lxc.cgroup2.*`` items for the limits set in ``config``."""
    out = []
    for key in limits.LIMIT_KEYS:
        if key not in config:
            continue
        ver = cgroups.version_of(limits.CONTROLLER_OF[key])
        prefix = "lxc.cgroup." if ver == 1 else "lxc.cgroup2."
        for k, v in limits.cgroup_settings(config, ver, (key,)):
            item = (prefix + k, v)
            if item not in out:
                out.append(item)
    return out  # memory before memsw: memsw starts unlimited, so this order is valid
