"""The CLI's commands: which module serves each top-level command, and its one-line help.

This table lets ``corral`` build its parser lazily: ``corral --help`` lists the commands
from it without importing any command module, and ``corral list`` imports only the module
that serves ``list``. Each module defines ``register(subparsers)`` for the commands the
table gives it (tests/unit/test_cli_parser.py checks the two agree), imports only the
standard library at the top, and the rest inside the command that needs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# command -> (module in this package, the line `corral --help` shows for it)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("instances", "List instances."),
    "launch": ("instances", "Create an instance from an image and start it."),
    "info": ("instances", "Show the server, or one instance."),
    "start": ("instances", "Start instances (a paused one is resumed)."),
    "stop": ("instances", "Stop instances (cleanly, or killed with --force)."),
    "restart": ("instances", "Restart instances."),
    "pause": ("instances", "Freeze instances (start resumes them)."),
    "delete": ("instances", "Delete instances (a running one only with --force)."),
    "config": ("config", "Show and change instance configuration."),
    "exec": ("exec", "Run a command in an instance; its exit code is ours."),
    "console": ("console", "Attach to the console of an instance (ctrl-a q to detach), or "
                           "show its log."),
    "file": ("file", "Push, pull and delete files in instances."),
    "image": ("image", "Manage images and image aliases."),
    "profile": ("profile", "Manage profiles."),
    "network": ("network", "Manage networks (bridges with DHCP, DNS and NAT)."),
    "storage": ("storage", "Manage storage pools and volumes."),
    "operation": ("operation", "List, show, wait for and cancel operations."),
    "monitor": ("monitor", "Print events as they happen."),
    "warning": ("warning", "List, show, acknowledge and delete warnings about this host."),
    "init": ("init", "Create the default storage pool, bridge network and profile "
                     "(idempotent)."),
    "project": ("project", "Manage projects (--project NAME works with every command)."),
    "hook": ("hook", "Manage automation hooks (webhooks, NATS publishes, commands on events)."),
    "bus": ("bus", "Manage NATS credentials for integrations (root only)."),
    "snapshot": ("snapshot", "Snapshot an instance (its disk and config), or list, rename "
                             "and delete its snapshots."),
    "restore": ("snapshot", "Restore an instance from one of its snapshots."),
    "copy": ("copy", "Copy an instance or one of its snapshots (with its snapshots)."),
    "move": ("copy", "Rename an instance, or move it to another storage pool."),
    "publish": ("copy", "Make an image from an instance or one of its snapshots."),
    "export": ("backup", "Export an instance as a backup file (LXD's format)."),
    "import": ("backup", "Import an instance from a backup file (LXD's or Corral's)."),
    "remote": ("remote", "Manage image servers and remote servers (simplestreams, lxd, oci)."),
}


def summary(name: str) -> str:
    return COMMANDS[name][1]


def module_of(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")


def modules() -> list[ModuleType]:
    """Every command module (for tests and tools that want the whole tree)."""
    names = dict.fromkeys(module for module, _ in COMMANDS.values())
    return [importlib.import_module(f"{__name__}.{m}") for m in names]
