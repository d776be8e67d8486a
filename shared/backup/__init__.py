"""LXD's instance and volume backup format (``lxc export`` / ``lxc import``), shared by the
instance service (index.yaml, tarball writing), the storage service (unpacking volumes,
btrfs send/receive) and the gateway.

Layout of a backup tarball, as LXD 5.0 writes it::

    backup/index.yaml                     name, backend, pool, snapshots, optimized,
                                          optimized_header, type, config (the instance,
                                          its snapshots, pool, profiles, volume)
    backup/optimized_header.yaml          optimized btrfs only: the subvolumes
    backup/snapshots/<s>/...              a snapshot's volume tree, oldest first
    backup/container/...                  the volume: backup.yaml, metadata.yaml,
                                          rootfs/, templates/ (a VM: backup/virtual-machine/)
    backup/snapshots/<s>.bin, backup/container.bin   optimized: btrfs send streams

Ownership inside the tarball is the container's own (root is 0), as LXD unshifts it.
"""
