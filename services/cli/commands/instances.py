"""``corral list|launch|info|start|stop|restart|pause|delete``: instances and the server."""

from __future__ import annotations

import sys
from argparse import Namespace
from typing import Any
from urllib.parse import quote

from ..client import APIError, Client, from_args
from ..output import add_format, emit, print_yaml
from ..parsing import command

_ADJ = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucky",
        "merry", "noble", "proud", "quick", "sunny", "tidy", "witty", "bold", "crisp")
_NOUN = ("badger", "bison", "crane", "dingo", "eagle", "ferret", "gecko", "heron", "ibis",
         "koala", "lemur", "marten", "newt", "otter", "panda", "quail", "raven", "tapir")


def random_name() -> str:
    """An LXD-style petname such as ``witty-otter``."""
    import random

    return f"{random.choice(_ADJ)}-{random.choice(_NOUN)}"


def ipath(name: str, tail: str = "") -> str:
    return f"/1.0/instances/{quote(name, safe='')}{tail}"


def wait_op(c: Client, envelope: dict[str, Any], what: str) -> dict[str, Any]:
    """Wait for an async answer; a spinner on stderr when it takes over a second on a TTY."""
    op_url = envelope.get("operation") or ""
    if not op_url:
        return envelope.get("metadata") or {}
    op = c.get(f"{op_url}/wait", timeout=1)
    if op["status"] in ("Success", "Failure", "Cancelled"):
        return c.wait(op_url, timeout=0)
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(what):
            return c.wait(op_url)
    return c.wait(op_url)


def set_state(c: Client, name: str, action: str, what: str, **extra: Any) -> None:
    env = c.request("PUT", ipath(name, "/state"), {"action": action, **extra})
    wait_op(c, env, what)


def parse_pairs(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise APIError(f"Bad key=value pair: {item!r}")
        out[k] = v
    return out


def list_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``corral list``'s columns from ``recursion=2`` instances (IPv4 one per line)."""
    rows = []
    for inst in items:
        state = inst.get("state") or {}
        ipv4 = []
        for nic, data in (state.get("network") or {}).items():
            if nic == "lo":
                continue
            ipv4 += [f"{a['address']} ({nic})" for a in data.get("addresses", [])
                     if a.get("family") == "inet"]
        rows.append({"name": inst["name"], "state": inst.get("status", "").upper(),
                     "ipv4": "\n".join(ipv4), "type": inst.get("type", "container").upper(),
                     "snapshots": len(inst.get("snapshots") or [])})
    return rows


def list_(args: Namespace) -> None:
    items = from_args(args).get("/1.0/instances", recursion=2)
    emit(list_rows(items), ["name", "state", "ipv4", "type", "snapshots"], args.fmt,
         raw=items)


def launch(args: Namespace) -> None:
    c = from_args(args)
    name = args.name or random_name()
    devices: dict[str, dict[str, str]] = {}
    if args.storage:
        devices["root"] = {"type": "disk", "path": "/", "pool": args.storage}
    if args.network:
        devices["eth0"] = {"type": "nic", "network": args.network, "name": "eth0"}
    kind = "virtual-machine" if args.vm else "container"
    source: dict[str, Any] = {"type": "image", "alias": args.image}
    remote = None
    if ":" in args.image:  # REMOTE:ALIAS (an oci REMOTE:name:tag), or local:ALIAS
        from .. import remotes

        remote, alias = remotes.split(args.image)
        source = remote.source(alias) if remote is not None else {"type": "image",
                                                                  "alias": alias}
    body = {"name": name, "source": source,
            "profiles": list(args.profile) if args.profile else ["default"],
            "config": parse_pairs(args.config), "devices": devices, "type": kind}
    print(f"Creating {name}", flush=True)
    env = c.request("POST", "/1.0/instances", body)
    if remote is not None:  # a pull: its download's progress
        from ..progress import wait_download

        wait_download(c, env, "Retrieving image")
    else:
        wait_op(c, env, f"Creating {name}")
    print(f"Starting {name}", flush=True)
    set_state(c, name, "start", f"Starting {name}")


def _resources(res: dict[str, Any]) -> dict[str, Any]:
    """The host's hardware as ``lxc info --resources`` summarises it."""
    cpu, mem = res["cpu"], res["memory"]
    return {
        "CPU": {"Architecture": cpu["architecture"], "Threads": cpu["total"],
                "Sockets": [{"Socket": s["socket"], "Vendor": s.get("vendor", ""),
                             "Name": s.get("name", ""), "Cores": len(s["cores"])}
                            for s in cpu["sockets"]]},
        "Memory": {"Free": mem["total"] - mem["used"], "Used": mem["used"],
                   "Total": mem["total"]},
        "Disks": {d["id"]: {"Type": d.get("type", ""), "Size": d["size"],
                            "Partitions": [p["id"] for p in d["partitions"]]}
                  for d in res["storage"]["disks"]},
        "NICs": {p["id"]: {"Driver": n.get("driver", ""), "MAC address": p.get("address", ""),
                           "Link detected": p["link_detected"]}
                 for n in res["network"]["cards"] for p in n.get("ports", [])},
        "PCI devices": res["pci"]["total"]}


def info(args: Namespace) -> None:
    c = from_args(args)
    if args.resources:
        print_yaml(_resources(c.get("/1.0/resources")))
        return
    if args.name is None:
        print_yaml(c.get("/1.0"))
        return
    inst = c.get(ipath(args.name))
    state = c.get(ipath(args.name, "/state"))
    doc: dict[str, Any] = {
        "Name": inst["name"], "Status": inst["status"].upper(), "Type": inst["type"],
        "Architecture": inst["architecture"], "Created": inst["created_at"],
        "Last Used": inst["last_used_at"], "Profiles": inst["profiles"]}
    if state.get("pid"):
        doc["PID"] = state["pid"]
        doc["Processes"] = state.get("processes", 0)
        doc["Resources"] = {
            "CPU usage (in seconds)": (state.get("cpu") or {}).get("usage", 0) // 10**9,
            "Memory usage (bytes)": (state.get("memory") or {}).get("usage", 0)}
        nets = {}
        for nic, data in (state.get("network") or {}).items():
            nets[nic] = {"Type": data.get("type"),
                         "State": (data.get("state") or "").upper(),
                         "Host interface": data.get("host_name", ""),
                         "MAC address": data.get("hwaddr", ""),
                         "IP addresses": [f"{a['family']} {a['address']}/{a['netmask']}"
                                          for a in data.get("addresses", [])]}
        doc["Network usage"] = nets
    doc.update(_snapshots_and_backups(c, args.name))
    print_yaml(doc)


def _when(value: str | None) -> str:
    """A date of the API, "" for LXD's zero date (no expiry)."""
    return "" if not value or value.startswith("0001-01-01") else value


def _snapshots_and_backups(c: Client, name: str) -> dict[str, Any]:
    """``Snapshots`` and ``Backups`` as ``lxc info`` shows them (each only when there is
    one; backups only where the server answers for them)."""
    out: dict[str, Any] = {}
    snaps = c.get(ipath(name, "/snapshots"), recursion=1)
    if snaps:
        out["Snapshots"] = [{"Name": s["name"], "Taken at": s.get("created_at", ""),
                             "Expires at": _when(s.get("expires_at")),
                             "Stateful": "YES" if s.get("stateful") else "NO"}
                            for s in snaps]
    try:
        backups = c.get(ipath(name, "/backups"), recursion=1)
    except APIError as exc:
        if exc.code not in (404, 501):
            raise
        backups = []
    if backups:
        out["Backups"] = [{"Name": b["name"], "Taken at": b.get("created_at", ""),
                           "Expires at": _when(b.get("expires_at")),
                           "Instance only": "YES" if b.get("instance_only") else "NO",
                           "Optimized storage": "YES" if b.get("optimized_storage") else "NO"}
                          for b in backups]
    return out


def start(args: Namespace) -> None:
    c = from_args(args)
    for n in args.names:
        frozen = c.get(ipath(n, "/state"))["status"] == "Frozen"
        set_state(c, n, "unfreeze" if frozen else "start", f"Starting {n}")


def stop(args: Namespace) -> None:
    c = from_args(args)
    for n in args.names:
        set_state(c, n, "stop", f"Stopping {n}", force=args.force, timeout=args.timeout)


def restart(args: Namespace) -> None:
    c = from_args(args)
    for n in args.names:
        set_state(c, n, "restart", f"Restarting {n}", force=args.force, timeout=args.timeout)


def pause(args: Namespace) -> None:
    c = from_args(args)
    for n in args.names:
        set_state(c, n, "freeze", f"Pausing {n}")


def delete(args: Namespace) -> None:
    c = from_args(args)
    for n in args.names:
        if args.force and c.get(ipath(n, "/state"))["status"] != "Stopped":
            set_state(c, n, "stop", f"Stopping {n}", force=True)
        wait_op(c, c.request("DELETE", ipath(n)), f"Deleting {n}")


def register(sub: Any) -> None:
    p = command(sub, "list", list_)
    add_format(p)

    p = command(sub, "launch", launch, description="Create an instance (a container, or "
                "with --vm a VM) from an image and start it.")
    p.add_argument("image", help="ALIAS or FINGERPRINT here, or REMOTE:ALIAS (corral "
                   "remote list; an oci remote: REMOTE:NAME:TAG)")
    p.add_argument("name", nargs="?")
    p.add_argument("--profile", "-p", action="append", help="may repeat (default: default)")
    p.add_argument("--config", "-c", action="append", metavar="KEY=VALUE", help="may repeat")
    p.add_argument("--storage", "-s", help="root disk pool")
    p.add_argument("--network", "-n", help="network for eth0")
    p.add_argument("--vm", action="store_true", help="a virtual machine")

    p = command(sub, "info", info, description="Show the server, or one instance: status, "
                "processes, memory, addresses, snapshots, backups.")
    p.add_argument("name", nargs="?")
    p.add_argument("--resources", action="store_true",
                   help="the host's hardware: CPUs, memory, disks, NICs")

    p = command(sub, "start", start)
    p.add_argument("names", nargs="+", metavar="NAME")

    p = command(sub, "stop", stop)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", "-f", action="store_true")
    p.add_argument("--timeout", type=float, default=-1, help="seconds for a clean shutdown")

    p = command(sub, "restart", restart)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", "-f", action="store_true")
    p.add_argument("--timeout", type=float, default=-1)

    p = command(sub, "pause", pause)
    p.add_argument("names", nargs="+", metavar="NAME")

    p = command(sub, "delete", delete)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", "-f", action="store_true", help="stop it first")
