"""``corral launch|info|start|stop|restart|pause|delete``: instance lifecycle commands."""


import random
import sys
from typing import Any, List, Optional
from urllib.parse import quote

import typer
import yaml

_ADJ = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucky",
        "merry", "noble", "proud", "quick", "sunny", "tidy", "witty", "bold", "crisp")
_NOUN = ("badger", "bison", "crane", "dingo", "eagle", "ferret", "gecko", "heron", "ibis",
         "koala", "lemur", "marten", "newt", "otter", "panda", "quail", "raven", "tapir")


def random_name() -> str:
    """An LXD-style petname such as ``witty-otter``."""
    return f"{random.choice(_ADJ)}-{random.choice(_NOUN)}"


def ipath(name: str, tail: str = "") -> str:
    return f"/1.0/instances/{quote(name, safe='')}{tail}"


def wait_op(envelope: dict[str, Any], what: str) -> dict[str, Any]:
    """Wait for an async answer; a spinner on stderr when it takes over a second on a TTY."""
    from ..cli import client

    op_url = envelope.get("operation") or ""
    if not op_url:
        return envelope.get("metadata") or {}
    c = client()
    op = c.get(f"{op_url}/wait", timeout=1)
    if op["status"] in ("Success", "Failure", "Cancelled"):
        return c.wait(op_url, timeout=0)
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(what):
            return c.wait(op_url)
    return c.wait(op_url)


def set_state(name: str, action: str, what: str, **extra: Any) -> None:
    from ..cli import client

    env = client().request("PUT", ipath(name, "/state"), {"action": action, **extra})
    wait_op(env, what)


def parse_pairs(items: list[str] | None) -> dict[str, str]:
    from ..client import APIError

    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise APIError(f"Bad key=value pair: {item!r}")
        out[k] = v
    return out


def register(app: typer.Typer) -> None:
    from ..cli import client

    @app.command("launch")
    def launch(image: str, name: Optional[str] = typer.Argument(None),
               profile: Optional[List[str]] = typer.Option(None, "--profile", "-p"),
               config: Optional[List[str]] = typer.Option(None, "--config", "-c",
                                                          help="KEY=VALUE"),
               storage: Optional[str] = typer.Option(None, "--storage", "-s",
                                                     help="root disk pool"),
               network: Optional[str] = typer.Option(None, "--network", "-n",
                                                     help="network for eth0"),
               vm: bool = typer.Option(False, "--vm", help="a virtual machine")) -> None:
        """Create an instance (a container, or with --vm a VM) from an image and start it."""
        name = name or random_name()
        devices: dict[str, dict[str, str]] = {}
        if storage:
            devices["root"] = {"type": "disk", "path": "/", "pool": storage}
        if network:
            devices["eth0"] = {"type": "nic", "network": network, "name": "eth0"}
        body = {"name": name, "source": {"type": "image", "alias": image},
                "profiles": list(profile) if profile else ["default"],
                "config": parse_pairs(config), "devices": devices,
                "type": "virtual-machine" if vm else "container"}
        print(f"Creating {name}")
        wait_op(client().request("POST", "/1.0/instances", body), f"Creating {name}")
        print(f"Starting {name}")
        set_state(name, "start", f"Starting {name}")

    @app.command("info")
    def info(name: Optional[str] = typer.Argument(None)) -> None:
        """Show the server, or one instance: status, processes, memory, addresses."""
        c = client()
        if name is None:
            print(yaml.safe_dump(c.get("/1.0"), sort_keys=False), end="")
            return
        inst = c.get(ipath(name))
        state = c.get(ipath(name, "/state"))
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
                nets[nic] = {"Type": data.get("type"), "State": (data.get("state") or
                                                                 "").upper(),
                             "Host interface": data.get("host_name", ""),
                             "MAC address": data.get("hwaddr", ""),
                             "IP addresses": [f"{a['family']} {a['address']}/{a['netmask']}"
                                              for a in data.get("addresses", [])]}
            doc["Network usage"] = nets
        print(yaml.safe_dump(doc, sort_keys=False), end="")

    @app.command("start")
    def start(names: List[str]) -> None:
        """Start instances (a paused one is resumed)."""
        c = client()
        for n in names:
            frozen = c.get(ipath(n, "/state"))["status"] == "Frozen"
            set_state(n, "unfreeze" if frozen else "start", f"Starting {n}")

    @app.command("stop")
    def stop(names: List[str], force: bool = typer.Option(False, "--force", "-f"),
             timeout: float = typer.Option(-1, "--timeout",
                                           help="seconds for a clean shutdown")) -> None:
        """Stop instances (cleanly, or killed with --force)."""
        for n in names:
            set_state(n, "stop", f"Stopping {n}", force=force, timeout=timeout)

    @app.command("restart")
    def restart(names: List[str], force: bool = typer.Option(False, "--force", "-f"),
                timeout: float = typer.Option(-1, "--timeout")) -> None:
        """Restart instances."""
        for n in names:
            set_state(n, "restart", f"Restarting {n}", force=force, timeout=timeout)

    @app.command("pause")
    def pause(names: List[str]) -> None:
        """Freeze instances (start resumes them)."""
        for n in names:
            set_state(n, "freeze", f"Pausing {n}")

    @app.command("delete")
    def delete(names: List[str], force: bool = typer.Option(False, "--force", "-f",
                                                            help="stop it first")) -> None:
        """Delete instances (a running one only with --force)."""
        c = client()
        for n in names:
            if force and c.get(ipath(n, "/state"))["status"] != "Stopped":
                set_state(n, "stop", f"Stopping {n}", force=True)
            wait_op(c.request("DELETE", ipath(n)), f"Deleting {n}")
