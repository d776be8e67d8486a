"""libvirt's domain events, kept per domain: the run state and the agent port's state.

Why: each libvirt call is a round trip to libvirtd (2-4 ms on a busy host) and every
``lxc exec`` of a VM asked twice (the run state for the status check, the live XML for
the agent channel). Both change only through events libvirt already sends, so a watch
on one shared connection keeps them, and a read is a dict lookup.

Why QEMU's ``VSERPORT_CHANGE`` and not libvirt's AGENT_LIFECYCLE: libvirt sends
AGENT_LIFECYCLE only for the channel named ``org.qemu.guest_agent.0`` (the one it
connects to itself); ours is ``org.corral.agent``. QEMU reports every virtio-serial
port's open/close as the monitor event VSERPORT_CHANGE, which libvirt forwards to
``virConnectDomainQemuMonitorEventRegister`` listeners (no taint, read only). Our
domains have exactly one virtio-serial port, the agent's channel.

Accuracy: a value is only cached after it was read from libvirt with no event for that
domain in between (a generation per domain), every event drops or replaces it, and the
driver drops it itself around each of its own state changes (its next read must not
wait for the event). Until the watch is registered, or once the connection closed,
nothing is cached and callers ask libvirt as before.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import libvirt
import libvirt_qemu

_loop_lock = threading.Lock()
_loop_started = False


def start_event_loop() -> None:
    """libvirt's default event loop in a daemon thread, once per process.

    Must run before the connection is opened: libvirt binds a connection's event
    delivery (and keepalive) to the loop registered when it opened."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="corral-libvirt-events", daemon=True).start()
        _loop_started = True


class DomainWatch:
    """Cached run state and agent port state of the domains of one connection."""

    def __init__(self, conn: libvirt.virConnect,
                 on_port_closed: Callable[[str], None] | None = None) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._gen: dict[str, int] = {}
        self._state: dict[str, int] = {}
        self._port: dict[str, bool] = {}
        self._on_port_closed = on_port_closed
        self.alive = False
        self._ids: list[int] = []
        self._qemu_id: int | None = None
        try:
            self._ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None))
            self._qemu_id = libvirt_qemu.qemuMonitorEventRegister(
                conn, None, "VSERPORT_CHANGE", self._vserport, None, 0)
            conn.registerCloseCallback(self._closed, None)
        except libvirt.libvirtError:
            return  # no events (e.g. a driver without them): callers ask libvirt
        self.alive = True

    # ---- events (libvirt's event thread) ----------------------------------------------

    def _bump(self, name: str) -> None:
        self._gen[name] = self._gen.get(name, 0) + 1

    def _lifecycle(self, _conn: Any, dom: libvirt.virDomain, _event: int, _detail: int,
                   _opaque: Any) -> None:
        """Any lifecycle event: the state is re-read on next use; a domain that stopped
        or started again has its port closed until QEMU says otherwise."""
        name = dom.name()
        with self._lock:
            self._bump(name)
            self._state.pop(name, None)
            if _event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STARTED,
                          libvirt.VIR_DOMAIN_EVENT_CRASHED):
                self._port[name] = False
            else:
                self._port.pop(name, None)
        if _event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_CRASHED):
            self._closed_port(name)

    def _vserport(self, _conn: Any, dom: libvirt.virDomain, _event: str, _sec: int,
                  _usec: int, details: Any, _opaque: Any) -> None:
        try:
            info = json.loads(details) if isinstance(details, str) else dict(details or {})
            opened = bool(info["open"])
        except (ValueError, TypeError, KeyError):
            opened = None
        name = dom.name()
        with self._lock:
            self._bump(name)
            if opened is None:
                self._port.pop(name, None)
            else:
                self._port[name] = opened
        if not opened:
            self._closed_port(name)

    def _closed_port(self, name: str) -> None:
        """The agent went away: a cached connection to it must not be reused (the next
        agent instance would wait for a new session's hello, and the exec for 30 s)."""
        if self._on_port_closed is not None:
            try:
                self._on_port_closed(name)
            except Exception:  # noqa: BLE001 - never let a callback kill the event thread
                pass

    def _closed(self, _conn: Any, _reason: int, _opaque: Any) -> None:
        with self._lock:
            self.alive = False
            self._state.clear()
            self._port.clear()

    # ---- reads and seeds (any thread) -------------------------------------------------

    def generation(self, name: str) -> int:
        with self._lock:
            return self._gen.get(name, 0)

    def state(self, name: str) -> int | None:
        """libvirt's ``VIR_DOMAIN_*`` run state, if known without asking."""
        with self._lock:
            return self._state.get(name) if self.alive else None

    def port_open(self, name: str) -> bool | None:
        """Whether the guest has the agent port open, if known without asking."""
        with self._lock:
            return self._port.get(name) if self.alive else None

    def seed(self, name: str, gen: int, state: int | None = None,
             port: bool | None = None) -> None:
        """Keep what was read from libvirt, unless an event came since ``gen``."""
        with self._lock:
            if not self.alive or self._gen.get(name, 0) != gen:
                return
            if state is not None:
                self._state[name] = state
            if port is not None:
                self._port[name] = port

    def forget(self, name: str) -> None:
        """Drop what is known of ``name`` (the driver changes its state itself)."""
        with self._lock:
            self._bump(name)
            self._state.pop(name, None)
            self._port.pop(name, None)

    def close(self) -> None:
        with self._lock:
            self.alive = False
        for cb in self._ids:
            try:
                self.conn.domainEventDeregisterAny(cb)
            except libvirt.libvirtError:
                pass
        if self._qemu_id is not None:
            try:
                libvirt_qemu.qemuMonitorEventDeregister(self.conn, self._qemu_id)
            except libvirt.libvirtError:
                pass
