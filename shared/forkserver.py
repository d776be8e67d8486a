"""A fork server for separate mode: the imports every service pays, made once and shared.

Why: each of the seven Python processes of a separate-mode stack (six services and the
gateway) imports the same ~20 MiB of modules (asyncio and ssl, nats, msgpack, pydantic and
the shared models, structlog, opentelemetry, prometheus_client, ``shared.*``) into its own
private heap before doing any work. Here one process imports them, freezes them out of the
garbage collector's reach (``gc.freeze()``: a collection would otherwise write to every
object's header and copy every page), and forks each service from that state: the
imported pages stay shared copy-on-write between the services; each one then imports its
own modules (its ``services.<name>.main``) and runs exactly as when started standalone.

What the children keep of the fork server: nothing live. The server opens no event loop,
starts no thread (checked before each fork) and its only descriptors, the listening socket
and the accepted connection, are closed in the child before the service's code runs. A
service is forked twice (the middle process exits at once), in a session of its own, so
its parent is init as with ``setsid nohup`` in deploy/up.sh, and a ``kill -9`` of the
fork server leaves every service running. Each service keeps its own PID file, log, bus
user and restart: the fork server only answers "start <name>" with the new PID, and the
caller (deploy/up.sh, tests.stack) does the bookkeeping as for a standalone start. It is an
optimisation, never a dependency: when it is not running (or refuses, e.g. because a file
it preloaded changed since: :func:`changed`), the caller starts the service's own program
as before.

Protocol (a root-only unix socket, ``$CORRAL_DIR/run/forkserver.sock``): one JSON line in,
``{"name", "env", "cwd", "log", "argv0"}``, one JSON line out, ``{"pid": N}`` or
``{"error": "..."}``. ``env`` replaces the environment of the child (the caller's own, so a
service restarted through the fork server sees what a standalone start would); only the
names of :data:`PROGRAMS` may be started.

Run: ``python -m shared.forkserver serve --socket PATH`` (deploy/up.sh does) and
``python -m shared.forkserver spawn --socket PATH NAME --log FILE --argv0 PROG``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

# What every service imports, then what several do: importing these in the fork server is
# what the services share. Nothing that loads a library a service loads only when used
# (libvirt, aiohttp, jinja2, pyroute2, liblxc, httpx: shared/lean.py and
# tests/test_fast_paths.py) belongs here (tests/test_footprint.py checks).
PRELOAD = (
    "asyncio", "ssl", "concurrent.futures.thread", "msgpack", "yaml", "nats.aio.client",
    "nats.js", "nats.micro", "structlog", "pydantic", "prometheus_client",
    "opentelemetry.trace", "opentelemetry.sdk.trace",
    "shared.codec", "shared.config", "shared.errors", "shared.events", "shared.faults",
    "shared.log", "shared.messages", "shared.metrics", "shared.models", "shared.operations",
    "shared.presence", "shared.state", "shared.subjects", "shared.tracing", "shared.bus",
    "shared.service",
    # used by several services (pure Python, no native library of their own): their pages
    # are then one copy for the stack, not one per service that imports them
    "shlex", "grp", "pwd", "tarfile", "idna", "dateutil.relativedelta", "shared.api",
    "shared.streams", "shared.filters", "shared.blobs", "shared.warnings", "shared.cluster",
    "shared.image.format", "shared.image.settings", "shared.restrictions",
    "shared.member_config", "shared.messages.backup", "shared.messages.custom_volumes",
    "shared.messages.exec", "shared.messages.hooks", "shared.messages.image",
    "shared.messages.instance", "shared.messages.lxd", "shared.messages.metadata",
    "shared.messages.network", "shared.messages.publish", "shared.messages.storage",
    "shared.backup.layout", "shared.backup.reader", "shared.backup.writer",
    "shared.backup.staged", "shared.backup.optimized", "shared.backup.btrfs",
    "shared.backup.nbd", "shared.backup.vmdisk",
)

# Who may be started, and the module whose ``main()`` runs it (as pyproject's scripts).
PROGRAMS = {
    "image": "services.image.main",
    "instance": "services.instance.main",
    "storage": "services.storage.main",
    "network": "services.network.main",
    "migration": "services.migration.main",
    "hooks": "services.hooks.main",
    "gateway": "services.gateway.main",
}

REQUEST_LIMIT = 1 << 20  # an environment is a few KiB
_PR_SET_NAME = 15


class Refused(Exception):
    """A request the fork server will not run (the caller then starts the program itself)."""


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    """Import what the services share, then keep the collector off those objects.

    ``lean.prepare()`` first, as every service's entry point does, so the shared state is
    the one a standalone service would have (aiohttp and rich hidden from nats and structlog
    while they import, two malloc arenas).
    """
    from shared import lean

    gc.disable()  # no collection while importing: the holes it frees would be refilled,
    lean.prepare()  # so written, by the children (Python's gc.freeze documentation)
    for name in modules:
        importlib.import_module(name)
    _SOURCES.update(_sources())
    gc.freeze()  # the objects above are never scanned again, so their pages stay shared


# The source files of what was preloaded, with their mtimes then (see changed()).
_SOURCES: dict[str, int] = {}


def _sources() -> dict[str, int]:
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path:
            try:
                out[path] = os.stat(path).st_mtime_ns
            except OSError:
                pass
    return out


def changed() -> str | None:
    """A preloaded module's file that changed since the preload (an update of the checkout
    or of a package), or None. A service forked then would run old shared code beside its
    new own modules; started standalone it runs the new code throughout."""
    for path, mtime in _SOURCES.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return path
        except OSError:
            return path
    return None


def threads() -> int:
    """Kernel threads of this process (a library could start one that `threading` misses)."""
    return len(os.listdir("/proc/self/task"))


# ----------------------------------------------------------------------------- the child

def _set_title(argv0: str, name: str) -> None:
    """Make ``/proc/PID/cmdline`` read ``argv0`` (e.g. ``.../bin/corral-image``) and the
    process name ``corral-<name>``, so `ps`, deploy/lib.sh's ``pid_matches`` and anyone
    looking see the service, as for a standalone start.

    The argument area of the fork server (``arg_start``..``arg_end`` in ``/proc/self/stat``)
    is overwritten in place: no new dependency (setproctitle would move the environment,
    which ``pid_matches`` reads for ``CORRAL_DIR``). The caller checked that it fits.
    """
    start, end = _arg_area()
    data = argv0.encode() + b"\0"
    ctypes.memmove(start, data + b"\0" * (end - start - len(data)), end - start)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, f"corral-{name}"[:15].encode(), 0, 0, 0)


def _arg_area() -> tuple[int, int]:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    # man 5 proc: arg_start and arg_end are fields 48 and 49 (fields[0] is field 3, state)
    return int(fields[45]), int(fields[46])


def title_room() -> int:
    start, end = _arg_area()
    return end - start - 1


def _become(request: dict[str, Any], keep: list[socket.socket]) -> NoReturn:
    """In the grandchild: drop what belongs to the fork server, set up the service's
    process as a standalone start would have it, and run its ``main()``."""
    code = 0
    try:
        for s in keep:
            s.close()
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # nothing else is the service's
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        from shared.config import get_config

        get_config.cache_clear()  # read from this environment, never the fork server's
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        _set_title(request["argv0"], request["name"])
        sys.argv = [request["argv0"]]
        gc.enable()
        importlib.import_module(PROGRAMS[request["name"]]).main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)  # never back into the fork server's loop


# ---------------------------------------------------------------------------- the server

def _check(request: Any) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise Refused("the request is not a JSON object")
    name = request.get("name")
    if name not in PROGRAMS:
        raise Refused(f"unknown program {name!r}: one of {', '.join(PROGRAMS)}")
    env, cwd, log, argv0 = (request.get(k) for k in ("env", "cwd", "log", "argv0"))
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str)
                                          for k, v in env.items())):
        raise Refused("env must map names to strings")
    for key, value in (("cwd", cwd), ("log", log), ("argv0", argv0)):
        if not isinstance(value, str) or not value.startswith("/"):
            raise Refused(f"{key} must be an absolute path")
    if not os.path.isdir(cwd):
        raise Refused(f"cwd {cwd} is not a directory")
    if len(argv0.encode()) > title_room():
        raise Refused(f"argv0 {argv0} does not fit in the fork server's argument area")
    if threads() != 1:
        raise Refused("the fork server has started a thread: forking it is not safe")
    stale = changed()
    if stale:
        raise Refused(f"{stale} changed since the fork server started: restart it ('make "
                      "down' then 'make up') to fork the new code")
    return request


def _spawn(request: dict[str, Any], keep: list[socket.socket]) -> int:
    """Fork twice; the grandchild becomes the service, its PID is returned."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _become(request, keep)
            os.write(w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    os.waitpid(middle, 0)
    if not data:
        raise Refused("the service's process could not be forked")
    return int(data)


def _answer(conn: socket.socket, listener: socket.socket) -> None:
    data = b""
    conn.settimeout(5)
    while not data.endswith(b"\n") and len(data) < REQUEST_LIMIT:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    try:
        request = _check(json.loads(data))
        reply: dict[str, Any] = {"pid": _spawn(request, [conn, listener])}
    except (Refused, ValueError, OSError) as e:
        reply = {"error": str(e)}
    conn.sendall(json.dumps(reply).encode() + b"\n")


def serve(sock_path: Path) -> None:
    """Preload, then start services on request until SIGTERM."""
    # What the caller left open (a shell's descriptors) is not ours to hand to services.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    preload()
    sock_path.parent.mkdir(parents=True, exist_ok=True)
    # Bound and listening under a temporary name, then renamed: a caller that sees the
    # socket can connect (deploy/up.sh waits for the file).
    tmp = sock_path.with_name(f".{sock_path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        listener.bind(str(tmp))
    finally:
        os.umask(old)
    listener.listen(16)
    os.rename(tmp, sock_path)
    inode = sock_path.stat().st_ino

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"fork server ready on {sock_path} (pid {os.getpid()})", flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            with conn:
                try:
                    _answer(conn, listener)
                except OSError as e:  # the caller went away: its problem, not ours
                    print(f"fork server: {e}", file=sys.stderr, flush=True)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if sock_path.stat().st_ino == inode:  # not a newer fork server's
                sock_path.unlink()


# ---------------------------------------------------------------------------- the client

def spawn(sock_path: Path, name: str, log: Path, argv0: str,
          env: dict[str, str] | None = None, cwd: str | None = None,
          timeout: float = 10) -> int:
    """Ask the fork server at ``sock_path`` to start service ``name``; its PID.

    Raises OSError when no fork server answers there and :class:`Refused` when it will
    not: either way the caller starts the program itself.
    """
    request = {"name": name, "env": dict(os.environ if env is None else env),
               "cwd": cwd or os.getcwd(), "log": str(log), "argv0": argv0}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data or b"{}")
    if "pid" not in reply:
        raise Refused(reply.get("error") or "the fork server closed the connection")
    return int(reply["pid"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.forkserver",
                                 description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sv = sub.add_parser("serve", help="preload the shared imports and wait for requests")
    sv.add_argument("--socket", type=Path, required=True)
    sp = sub.add_parser("spawn", help="start a service through a running fork server; "
                        "prints its PID (exit 1: not started, start it standalone)")
    sp.add_argument("--socket", type=Path, required=True)
    sp.add_argument("name", choices=sorted(PROGRAMS))
    sp.add_argument("--log", type=Path, required=True)
    sp.add_argument("--argv0", required=True)
    args = ap.parse_args(argv)
    if args.command == "serve":
        serve(args.socket)
        return 0
    try:
        print(spawn(args.socket, args.name, args.log.resolve(), args.argv0))
    except (OSError, Refused, ValueError) as e:
        print(f"fork server: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
