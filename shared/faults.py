"""Fault points for crash tests: ``CORRAL_FAULT=<point>[,<point>...]`` kills the process.

Why: the fault tests (``tests/test_faults.py``) must kill a service at an exact step of a
create or a delete (after the volume, before the LXC config, ...), which sleeps and timed
signals cannot hit reliably. A service started with ``CORRAL_FAULT=create:after_volume``
sends itself SIGKILL when it reaches that point: no cleanup, no reply, as a crash. Unset
(always, outside tests), :func:`point` is one dictionary lookup and does nothing.

Points: ``create:after_reserve``, ``create:after_volume``, ``create:after_driver``
(instance service, in ``create.build``), ``delete:after_driver``, ``delete:after_volume``
(instance service, in ``update.delete``), ``storage:after_record``,
``storage:after_volume`` (storage service, in ``volumes.from_image``),
``network:nic_config`` (network service, as it is asked for a NIC's configuration),
``hotplug:after_attach`` (instance service, in ``disks.hotplug``, after a disk is mounted
into a running instance and before the change is recorded), ``snapshot:after_record``,
``snapshot:after_volume``, ``snapshot:delete_marked``, ``snapshot:rename_after_volume``
(instance service, in ``snapshot_ops``), ``restore:before_volume``,
``restore:after_volume`` (instance service, in ``restore.run``), ``move:after_volume``,
``move:after_purge``, ``move:before_record``, ``move:after_records`` (instance service,
in ``move``: ``lxc move --storage``).

Cluster and migration points: ``cluster_move:transfer_started``, ``after_transfer``,
``after_delete``, ``before_rename`` (gateway, a move between members),
``vm_live_move:before_send``, ``after_send`` (gateway, a VM's live move),
``migration:source_after_snapshot``, ``source_after_volume``, ``sink_after_snapshot``,
``sink_after_volume`` (migration service), ``pool:member_made:<node>`` and
``network:member_made:<node>`` (the named member's storage or network service, after it
made its part of a cluster-wide create). Others (backups, copies, imports, pulls, hooks)
are where they are called: ``grep -rn "faults.point" services shared`` lists them all.
"""

from __future__ import annotations

import os
import signal

ENV = "CORRAL_FAULT"


def armed(name: str) -> bool:
    return name in (os.environ.get(ENV) or "").split(",")


def point(name: str) -> None:
    """Die here, now, with SIGKILL, if ``CORRAL_FAULT`` names this point."""
    if ENV in os.environ and armed(name):
        os.kill(os.getpid(), signal.SIGKILL)
